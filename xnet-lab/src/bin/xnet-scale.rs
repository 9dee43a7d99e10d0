//! The benchmark's scale step on its own (`xnet-bench` runs it too). By default its etcd half: a
//! lab of three hosts, thousands of leases in etcd, the agents' peak memory, and how soon one new
//! lease is in every host's maps. With `--static-peers N`, its other half: the agent started with
//! N peers in its config file, how soon it is ready and its peak memory, start after start. Needs
//! root (network namespaces, eBPF), and etcd for the etcd half.

use clap::Parser;
use xnet_lab::scale;

#[derive(Parser)]
#[command(
    about = "Measures the agent at scale on the lab: the etcd store, or (--static-peers) starts with many peers"
)]
struct Args {
    /// Leases in etcd before the new ones.
    #[arg(long, default_value_t = 10_000)]
    leases: u32,
    /// New leases written one at a time, each timed until every host's maps hold it.
    #[arg(long, default_value_t = 5)]
    new: u32,
    /// Instead of etcd: start the agent with this many peers in its config file.
    #[arg(long)]
    static_peers: Option<u32>,
    /// With --static-peers: how many starts, each in a lab of its own.
    #[arg(long, default_value_t = 5)]
    starts: u32,
}

fn main() {
    let args = Args::parse();
    if let Some(peers) = args.static_peers {
        for start in 1..=args.starts {
            let (ready, peak_mib) = scale::static_peers(peers);
            println!(
                "start {start}: {peers} static peers, ready after {ready:.3} s, peak RSS {peak_mib:.1} MiB"
            );
        }
        return;
    }
    let s = scale::etcd_leases(args.leases, args.new);
    let ms: Vec<String> = s.new_lease_seconds.iter().map(|t| format!("{:.1}", t * 1e3)).collect();
    println!(
        "{} leases: in every host's maps {:.2} s after the first write; an agent started with them \
         all ready {:.2} s after its start; agents' peak RSS {:.1} MiB; one new lease in every host's \
         maps after {} ms (median {:.1} ms)",
        s.leases,
        s.load_seconds,
        s.restart_seconds,
        s.peak_rss_mib,
        ms.join(", "),
        scale::median_ms(&s.new_lease_seconds)
    );
}
