//! Command-line interface (argh). Each subcommand is one struct; `main.rs`
//! dispatches on them.

use std::path::PathBuf;

use argh::FromArgs;

/// Default location of the configuration file on a device.
pub const DEFAULT_CONFIG: &str = "/etc/porin/porin.yaml";

/// Porin: container network-security gateway for edge devices.
#[derive(FromArgs, Debug)]
pub struct Cli {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Run(RunArgs),
    CheckConfig(CheckConfigArgs),
    Endpoints(EndpointsArgs),
    Version(VersionArgs),
    Status(StatusArgs),
    Policy(PolicyArgs),
    Flows(FlowsArgs),
    Reload(ReloadArgs),
    Uninstall(UninstallArgs),
}

/// Make the running daemon re-read its configuration file: an invalid file
/// changes nothing (its errors are printed); a valid one is enforced before
/// this returns.
#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "reload")]
pub struct ReloadArgs {
    /// configuration file naming the control socket (default:
    /// /etc/porin/porin.yaml if it exists, else /run/porin/porin.sock); the
    /// daemon re-reads the file it was started with
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// control socket (overrides the config's `control.socket`)
    #[argh(option)]
    pub socket: Option<PathBuf>,
}

#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "status")]
/// Show the running daemon's state: endpoints, identities, attached
/// programs, map fill, kernel features, policy generation, uptime.
pub struct StatusArgs {
    /// configuration file naming the control socket (default:
    /// /etc/porin/porin.yaml if it exists, else /run/porin/porin.sock)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// control socket (overrides the config's `control.socket`)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// output format: table (default) or json
    #[argh(option, short = 'o', default = "OutputFormat::Table")]
    pub output: OutputFormat,
}

/// Show the compiled policy the daemon enforces, per endpoint; or suggest
/// one from recorded flows (`policy suggest`), or check a candidate
/// against them (`policy whatif FILE`).
#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "policy")]
pub struct PolicyArgs {
    #[argh(subcommand)]
    pub action: Option<PolicyAction>,
    /// configuration file naming the control socket
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// control socket (overrides the config's `control.socket`)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// output format: table (default) or json
    #[argh(option, short = 'o', default = "OutputFormat::Table")]
    pub output: OutputFormat,
}

#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand)]
pub enum PolicyAction {
    Suggest(SuggestArgs),
    Whatif(WhatifArgs),
}

/// Print a configuration that allows exactly the flows recorded (the
/// daemon's history and flow log, or --log files): groups from labels,
/// policies per peer, protocol and port, HTTP rules from requests.
#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "suggest")]
pub struct SuggestArgs {
    /// the daemon's configuration: its control socket and flow log are
    /// read, and its sections other than enforcement, ground_rules,
    /// groups, networks and policies are copied into the suggestion
    /// (default: /etc/porin/porin.yaml if it exists)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// control socket (overrides the config's `control.socket`)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// read these flow log files (JSON lines, repeatable) instead of the
    /// daemon's history and its configured flow log
    #[argh(option)]
    pub log: Vec<PathBuf>,
    /// only records from the last DURATION (e.g. 30m, 24h); default: all
    #[argh(option)]
    pub since: Option<String>,
    /// fold the paths below one prefix into a prefix rule when they go on
    /// into at least N different segments (default 3; two identifiers,
    /// such as numbers, always fold)
    #[argh(option, default = "3")]
    pub fold: usize,
    /// output format: yaml (the only one)
    #[argh(option, short = 'o', default = "String::from(\"yaml\")")]
    pub output: String,
}

/// Replay the recorded flows against a candidate configuration with the
/// datapath's decision code; list those it would drop. Exit 0 when none,
/// 1 when some would be dropped or FILE is invalid, 2 when the flows
/// cannot be read.
#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "whatif")]
pub struct WhatifArgs {
    /// the candidate configuration
    #[argh(positional)]
    pub file: PathBuf,
    /// the daemon's configuration, for its control socket and flow log
    /// (default: /etc/porin/porin.yaml if it exists)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// control socket (overrides the config's `control.socket`)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// read these flow log files (JSON lines, repeatable) instead of the
    /// daemon's history and its configured flow log
    #[argh(option)]
    pub log: Vec<PathBuf>,
    /// only records from the last DURATION (e.g. 30m, 24h); default: all
    #[argh(option)]
    pub since: Option<String>,
}

/// Show recent flows (new connections, drops) from the daemon's history.
#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "flows")]
pub struct FlowsArgs {
    /// configuration file naming the control socket
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// control socket (overrides the config's `control.socket`)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// keep printing new flows as they come
    #[argh(switch, short = 'f')]
    pub follow: bool,
    /// how many of the latest flows to print (default 20)
    #[argh(option, short = 'n', default = "20")]
    pub last: u32,
    /// only flows with this verdict: FORWARDED, DROPPED or AUDIT (repeatable)
    #[argh(option)]
    pub verdict: Vec<String>,
    /// only flows with this identity on either side: a group or network
    /// name, world, host, or a number (repeatable)
    #[argh(option)]
    pub identity: Vec<String>,
    /// output format: table (default) or json (one JSON object per line)
    #[argh(option, short = 'o', default = "OutputFormat::Table")]
    pub output: OutputFormat,
}

/// Remove everything Porin put in the kernel (TC filters, XDP links, pinned
/// maps and links under bpffs), whether or not the daemon runs. Traffic is
/// not filtered afterwards.
#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "uninstall")]
pub struct UninstallArgs {
    /// configuration file naming the `bpffs` directory (default:
    /// /etc/porin/porin.yaml if it exists, else /sys/fs/bpf/porin)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// bpffs directory (overrides the config's `bpffs`)
    #[argh(option)]
    pub bpffs: Option<PathBuf>,
}

/// Run the gateway daemon.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {
    /// configuration file (default: /etc/porin/porin.yaml)
    #[argh(option, short = 'c', default = "PathBuf::from(DEFAULT_CONFIG)")]
    pub config: PathBuf,
}

/// Validate a configuration file and report every error in it.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check-config")]
pub struct CheckConfigArgs {
    /// the configuration file to check
    #[argh(positional)]
    pub file: PathBuf,
}

/// Print the version and what the running kernel supports.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version")]
pub struct VersionArgs {}

/// List the containers on this node (one-shot scan; no daemon needed).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "endpoints")]
pub struct EndpointsArgs {
    /// configuration file for the discovery settings (default: /etc/porin/porin.yaml
    /// if it exists, else the built-in defaults)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// output format: table (default) or json
    #[argh(option, short = 'o', default = "OutputFormat::Table")]
    pub output: OutputFormat,
}

/// How listings are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

impl argh::FromArgValue for OutputFormat {
    fn from_arg_value(value: &str) -> Result<Self, String> {
        match value {
            "table" => Ok(OutputFormat::Table),
            "json" => Ok(OutputFormat::Json),
            other => Err(format!(
                "unknown output format `{other}`; expected table or json"
            )),
        }
    }
}
