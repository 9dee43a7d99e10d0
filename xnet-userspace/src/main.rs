//! The `xnet` binary: parse the command line, set up logging, run the command. Errors from every
//! command end up here, printed as one message with their causes, exit status 1.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use xnet::{
    cli::{Cli, Command, StatsArgs},
    inspect,
};

fn main() -> ExitCode {
    // Like other command-line tools: `xnet stats | head` ends quietly instead of panicking.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let filter = match (&cli.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => EnvFilter::new(level),
        (None, Ok(env)) => EnvFilter::new(env),
        (None, Err(_)) => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(xnet::agent::run(&args.config, args.keep_datapath))),
        Command::Stats(args) => stats(&args),
        Command::Cleanup(args) => {
            xnet::datapath::remove_all(&args.pin_dir).map_err(anyhow::Error::from).map(|()| {
                println!("removed xnet datapath under {}", args.pin_dir.display());
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xnet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let rows = inspect::read_counters(&args.pin.pin_dir)?;
    let rows: Vec<_> = rows.into_iter().filter(|r| args.all || r.packets > 0).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<8} {:<20} {:>5} {:>14} {:>16}", "DIR", "OUTCOME", "CODE", "PACKETS", "BYTES");
    for r in rows {
        let outcome = if r.drop { format!("drop:{}", r.outcome) } else { r.outcome.to_string() };
        println!("{:<8} {:<20} {:>5} {:>14} {:>16}", r.direction, outcome, r.code, r.packets, r.bytes);
    }
    Ok(())
}
