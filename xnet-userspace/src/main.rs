//! The `xnet` binary: parse the command line, set up logging, run the command. Errors from every
//! command end up here, printed as one message with their causes, exit status 1.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use xnet::{
    cli::{CleanupArgs, Cli, Command, ShowArgs, StatsArgs},
    inspect, report,
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
            .and_then(|rt| {
                // The eBPF loader reads the kernel's BTF while the config is read.
                let loader = xnet::datapath::Loader::start();
                let config = xnet::config::Config::load(&args.config, &args.overrides())?;
                rt.block_on(xnet::agent::run(config, loader))
            }),
        Command::Stats(args) => stats(&args),
        Command::Routes(args) => routes(&args),
        Command::Status(args) => status(&args),
        Command::Cleanup(args) => cleanup(&args),
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
    let pin_dir = &args.show.pin.pin_dir;
    let visible = |rows: Vec<inspect::CounterRow>| -> Vec<inspect::CounterRow> {
        rows.into_iter().filter(|r| args.all || r.packets > 0).collect()
    };
    let Some(interval) = args.watch else {
        let rows = visible(inspect::read_counters(pin_dir)?);
        if args.show.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", report::counters(&rows, None));
        }
        return Ok(());
    };
    anyhow::ensure!(interval >= 0.1, "--watch needs at least 0.1 seconds between samples");
    let mut before = inspect::read_counters(pin_dir)?;
    let mut then = std::time::Instant::now();
    loop {
        std::thread::sleep(std::time::Duration::from_secs_f64(interval));
        let now_rows = inspect::read_counters(pin_dir)?;
        let dt = then.elapsed().as_secs_f64();
        then = std::time::Instant::now();
        // Show a row if it is non-zero now (or --all); rates against the previous sample.
        let rows: Vec<(inspect::CounterRow, (f64, f64))> = now_rows
            .iter()
            .zip(&before)
            .filter(|(r, _)| args.all || r.packets > 0)
            .map(|(r, b)| {
                let pps = r.packets.saturating_sub(b.packets) as f64 / dt;
                let bps = r.bytes.saturating_sub(b.bytes) as f64 * 8.0 / dt;
                (r.clone(), (pps, bps))
            })
            .collect();
        let (rows, rates): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
        println!("{}", inspect::utc(xnet::clock::unix_now()));
        println!("{}", report::counters(&rows, Some(&rates)));
        before = now_rows;
    }
}

fn cleanup(args: &CleanupArgs) -> anyhow::Result<()> {
    let pin_dir = &args.pin.pin_dir;
    xnet::datapath::remove_all(pin_dir)?;
    println!("removed xnet datapath under {}", pin_dir.display());
    if xnet::host::remove_host_device() {
        println!("removed the host device {} and its routes", xnet::host::HOST_DEVICE);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let changes = rt
        .block_on(xnet::big_tcp::put_back_recorded(&args.subnet_file))
        .map_err(|e| anyhow::anyhow!("putting back the sizes BIG TCP raised: {e}"))?;
    if !changes.changed.is_empty() {
        println!("put back the GSO and GRO sizes of {}", changes.changed.join(", "));
    }
    if let Some(e) = changes.error {
        anyhow::bail!(
            "could not put back every GSO and GRO size BIG TCP raised ({e}); the record {} stays for another try",
            xnet::big_tcp::record_path(&args.subnet_file).display()
        );
    }
    Ok(())
}

fn routes(args: &ShowArgs) -> anyhow::Result<()> {
    let rows = inspect::read_routes(&args.pin.pin_dir, xnet::clock::unix_now())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", report::routes(&rows));
    }
    Ok(())
}

fn status(args: &ShowArgs) -> anyhow::Result<()> {
    let status = inspect::read_status(&args.pin.pin_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", report::status(&status, xnet::clock::unix_now()));
    }
    Ok(())
}
