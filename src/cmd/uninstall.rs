//! `porin uninstall`: removes everything Porin put in the kernel, with or
//! without a running daemon (see `datapath::persist::uninstall`).

use std::process::ExitCode;

use super::{EXIT_CONFIG, EXIT_RUNTIME};
use crate::{cli::UninstallArgs, datapath::persist};

pub fn uninstall(args: &UninstallArgs) -> ExitCode {
    let dir = match &args.bpffs {
        Some(d) => d.clone(),
        None => match super::config_or_defaults(args.config.as_deref()) {
            Ok(cfg) => cfg.bpffs,
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    match persist::uninstall(&dir) {
        Ok(done) if done.is_empty() => {
            println!(
                "{}: nothing of Porin's found; nothing removed",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(done) => {
            for line in &done {
                println!("{line}");
            }
            println!(
                "{}: Porin removed from the kernel; traffic is no longer filtered",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("porin uninstall: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
