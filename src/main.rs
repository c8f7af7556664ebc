//! The `porin` binary: parses the command line and dispatches.

use std::{path::Path, process::ExitCode};

use porin::{
    cli::{Cli, Command, EndpointsArgs, OutputFormat, PolicyAction},
    cmd::{self, endpoints, EXIT_CONFIG, EXIT_RUNTIME},
    discovery::scanner::Scanner,
    kernel::KernelFeatures,
    VERSION,
};

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    match cli.command {
        Command::Version(_) => {
            println!("porin {VERSION}");
            println!("{}", KernelFeatures::probe());
            ExitCode::SUCCESS
        }
        Command::CheckConfig(args) => check_config(&args.file),
        Command::Endpoints(args) => list_endpoints(&args),
        Command::Run(args) => cmd::run::run(&args.config),
        Command::Status(args) => cmd::status::status(&args),
        Command::Policy(args) => match &args.action {
            Some(PolicyAction::Suggest(a)) => cmd::suggest::suggest(a),
            Some(PolicyAction::Whatif(a)) => cmd::suggest::whatif(a),
            None => cmd::status::policy(&args),
        },
        Command::Flows(args) => cmd::flows::flows(&args),
        Command::Reload(args) => cmd::reload::reload(&args),
        Command::Uninstall(args) => cmd::uninstall::uninstall(&args),
    }
}

fn check_config(path: &Path) -> ExitCode {
    match cmd::load_checked(path) {
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

fn list_endpoints(args: &EndpointsArgs) -> ExitCode {
    let cfg = match cmd::config_or_defaults(args.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let outcome = Scanner::new(&cfg.discovery).and_then(|mut s| endpoints::scan_settled(&mut s));
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("porin: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let views = endpoints::views(&outcome);
    match args.output {
        OutputFormat::Table => print!("{}", endpoints::table(&views)),
        OutputFormat::Json => match serde_json::to_string_pretty(&views) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("porin: cannot encode JSON: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        },
    }
    ExitCode::SUCCESS
}
