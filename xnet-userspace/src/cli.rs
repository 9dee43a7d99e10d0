//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{DEFAULT_PIN_DIR, DEFAULT_SUBNET_FILE, Overrides};

/// xnet: an eBPF overlay network for containers (flannel's model, an in-kernel datapath).
#[derive(Debug, Parser)]
#[command(name = "xnet", version)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG also works.
    #[arg(long, global = true, env = "XNET_LOG_LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: set up the datapath (peers from the config file, from etcd or from a routing
    /// daemon's routes) and keep it until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Show the datapath's packet and byte counters (works while the agent is stopped).
    Stats(StatsArgs),
    /// List the remote subnets and how each is reached (works while the agent is stopped).
    Routes(ShowArgs),
    /// Show the attachments, the agent, the store, the lease, the MTU and the maps' capacity and
    /// memory (works while the agent is stopped).
    Status(ShowArgs),
    /// Detach every xnet program and remove every pin under the pin directory, the host's devices
    /// (xnet0 with its routes, xnet0-gro), and put back the GSO and GRO sizes BIG TCP raised.
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file (TOML; see README): this host's settings, and its peers, where etcd is, or
    /// which routes of a routing daemon to learn (`[routes]`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// On exit, leave the datapath attached and its pins in place: traffic keeps flowing and the
    /// next agent takes it over without a gap.
    #[arg(long)]
    pub keep_datapath: bool,
    /// Take network, subnet, backend and peers from etcd (flannel's schema) at these endpoints
    /// (comma-separated http:// URLs); overrides `[etcd] endpoints` in the config.
    #[arg(long, value_name = "URL[,URL]", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// The etcd key prefix (default /coreos.com/network, flannel's).
    #[arg(long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Learn the peers from the routes a routing daemon (FRR, BIRD) installs in the kernel, with
    /// the `[routes]` defaults when the config has no `[routes]` section.
    #[arg(long, conflicts_with_all = ["etcd_endpoints", "etcd_prefix"])]
    pub routes: bool,
    /// Where to write subnet.env (XNET_*/FLANNEL_* NETWORK, SUBNET, MTU, IPMASQ); overrides
    /// `subnet_file` in the config (default /run/xnet/subnet.env).
    #[arg(long, value_name = "FILE")]
    pub subnet_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PinDirArg {
    /// The pin directory of the datapath to act on.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// The agent's subnet.env (`subnet_file` in its config): the record of the links BIG TCP
    /// raised sits beside it, as FILE.big_tcp.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub pin: PinDirArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub show: ShowArgs,
    /// Also list counters that are zero.
    #[arg(long)]
    pub all: bool,
    /// Refresh every SECONDS and show rates (packets/s, bits/s) until interrupted.
    #[arg(long, value_name = "SECONDS", conflicts_with = "json")]
    pub watch: Option<f64>,
}

impl RunArgs {
    /// What these flags override in the config file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            etcd_endpoints: self.etcd_endpoints.clone(),
            etcd_prefix: self.etcd_prefix.clone(),
            routes: self.routes,
            subnet_file: self.subnet_file.clone(),
            keep_datapath: self.keep_datapath,
        }
    }
}
