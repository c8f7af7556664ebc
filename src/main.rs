//! The `porin` binary: parses the command line and dispatches.

use std::{path::Path, process::ExitCode};

use log::{error, info, warn};
use porin::{
    cli::{Cli, Command},
    config,
    kernel::KernelFeatures,
    logging, selftest,
    signals::{Signal, SignalSet},
    VERSION,
};

/// Exit status for an invalid configuration.
const EXIT_CONFIG: u8 = 1;
/// Exit status for a failure to start or run.
const EXIT_RUNTIME: u8 = 2;

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    match cli.command {
        Command::Version(_) => {
            println!("porin {VERSION}");
            println!("{}", KernelFeatures::probe());
            ExitCode::SUCCESS
        }
        Command::CheckConfig(args) => check_config(&args.file),
        Command::Run(args) => run(&args.config),
    }
}

fn check_config(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            println!("{}: OK ({})", path.display(), cfg.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(path: &Path) -> ExitCode {
    // Block the stop/reload signals before any thread exists.
    let signals = match SignalSet::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("porin: cannot block signals: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(cfg.log_level());
    info!(
        "porin {VERSION} starting with {} ({})",
        path.display(),
        cfg.summary()
    );
    let features = KernelFeatures::probe();
    for line in features.to_string().lines() {
        info!("{line}");
    }
    if let Err(e) = selftest::run() {
        error!("datapath self-test failed, not starting: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    info!("datapath self-test passed: the kernel accepted and ran porin's programs");
    warn!("policy enforcement is not implemented yet in this build: no traffic is filtered");
    info!(
        "ready; SIGHUP re-validates {}, SIGTERM or SIGINT stops",
        path.display()
    );
    loop {
        match signals.wait() {
            Ok(Signal::Stop(sig)) => {
                info!("signal {sig}: stopping");
                return ExitCode::SUCCESS;
            }
            Ok(Signal::Reload) => match config::load(path) {
                Ok(new) => info!("reload: {} is valid ({})", path.display(), new.summary()),
                Err(errors) => error!(
                    "reload: {} is invalid, keeping the running config:\n{errors}",
                    path.display()
                ),
            },
            Err(e) => {
                error!("waiting for signals failed: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        }
    }
}
