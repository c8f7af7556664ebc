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

/// Show the compiled policy the daemon enforces, per endpoint.
#[derive(FromArgs, Debug, Clone)]
#[argh(subcommand, name = "policy")]
pub struct PolicyArgs {
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
