//! What the agent's parsers must do with any text, for the fuzzers (`fuzz/`, `cargo xtask fuzz`)
//! and the fixed-seed fuzz tests (below): return, never panic; and what they accept must hold
//! what their checks promise, what they refuse name where. Each `check_*` panics on a violation
//! and returns whether the text was accepted.
//!
//! Only with the `fuzzing` feature (or in this crate's tests).

use std::path::Path;

use xnet_common::maps::Backend;

use crate::cidr::{self, Ipv4Network};
use crate::config::{Config, ConfigError, MAX_VNI, Overrides, StoreConfig};
use crate::store::flannel::{Lease, NetworkConfig, lease_key, parse_lease_key};

/// The lease prefix the lease checks use (flannel's default).
pub const PREFIX: &str = "/coreos.com/network";
/// The key of the network config in the network-config check.
pub const NETWORK_CONFIG_KEY: &str = "/coreos.com/network/config";

fn overlaps(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// A config file: accepted, it has its subnet inside its network and no overlapping subnets;
/// refused (without flags, nothing to read), the message is about the text and names the file.
pub fn check_config(text: &str) -> bool {
    let path = Path::new("/etc/xnet/xnet.toml");
    match Config::parse(path, text, &Overrides::default()) {
        Ok(c) => {
            if let StoreConfig::File(o) = &c.store {
                assert!(
                    o.subnet.prefix() >= o.network.prefix() && o.network.contains(o.subnet.network()),
                    "subnet {} outside network {}:\n{text}",
                    o.subnet,
                    o.network
                );
                for (n, p) in o.peers.iter().enumerate() {
                    assert!(!overlaps(&p.subnet, &o.subnet), "peer {n} overlaps this host:\n{text}");
                    for q in &o.peers[n + 1..] {
                        assert!(!overlaps(&p.subnet, &q.subnet), "peers overlap:\n{text}");
                    }
                }
            }
            true
        }
        Err(ConfigError::Syntax { file, .. } | ConfigError::Invalid { file, .. }) => {
            assert_eq!(file, path);
            false
        }
        Err(e) => panic!("unexpected kind of error {e}:\n{text}"),
    }
}

/// `<prefix>/config`: accepted, its subnet length and range lie inside the network and its first
/// candidate subnets are ones it allows, its VNI is one of 24 bits; refused, the error names the
/// key.
pub fn check_network_config(text: &str) -> bool {
    match NetworkConfig::parse(NETWORK_CONFIG_KEY, text) {
        Ok(c) => {
            assert!(
                c.subnet_len >= c.network.prefix() && c.subnet_len <= 32,
                "subnet length {}:\n{text}",
                c.subnet_len
            );
            assert!(c.network.contains(c.subnet_min) && c.network.contains(c.subnet_max), "{text}");
            assert!(c.subnet_min <= c.subnet_max, "{text}");
            assert!((1..=MAX_VNI).contains(&c.vni), "VNI {}:\n{text}", c.vni);
            for subnet in c.candidates().take(3) {
                assert!(c.allows(&subnet), "candidate {subnet} not allowed:\n{text}");
            }
            true
        }
        Err(e) => {
            assert!(e.key.starts_with(NETWORK_CONFIG_KEY), "error names {}:\n{text}", e.key);
            false
        }
    }
}

/// A lease value for 10.244.5.0/24: accepted, its VNI (if any) is one of 24 bits, and what xnet
/// writes back for it parses to the same, in
/// the fields flannel's format has for the backend (the VTEP MAC and VNI of vxlan only, written
/// with VNI 1 if none was given; the other backends carry no data); refused, the error names the
/// key.
pub fn check_lease(text: &str) -> bool {
    let subnet = cidr::parse("10.244.5.0/24").unwrap();
    let key = lease_key(PREFIX, &subnet);
    match Lease::parse(&key, subnet, text) {
        Ok(l) => {
            assert!(l.vni.is_none_or(|v| (1..=MAX_VNI).contains(&v)), "VNI {:?}:\n{text}", l.vni);
            let again = Lease::parse(&key, subnet, &l.to_json()).unwrap_or_else(|e| panic!("{e}:\n{text}"));
            let (vtep_mac, vni) = match l.backend {
                Backend::Vxlan => (l.vtep_mac, Some(l.vni.unwrap_or(1))),
                _ => (None, None),
            };
            assert_eq!(again, Lease { vtep_mac, vni, ..l }, "{text}");
            true
        }
        Err(e) => {
            assert!(e.key.starts_with(&key), "error names {}:\n{text}", e.key);
            false
        }
    }
}

/// A lease key: accepted, the key xnet would write for its subnet names the same subnet; refused,
/// the error names the key.
pub fn check_lease_key(key: &str) -> bool {
    match parse_lease_key(PREFIX, key) {
        Ok(subnet) => {
            let again = lease_key(PREFIX, &subnet);
            assert_eq!(parse_lease_key(PREFIX, &again), Ok(subnet), "{key:?} -> {again:?}");
            true
        }
        Err(e) => {
            assert_eq!(e.key, key);
            false
        }
    }
}

/// Seeds and words for mutating each format (the fuzzers' dictionaries are written from these).
pub const CONFIG_SEEDS: &[&str] = &[
    r#"network = "10.244.0.0/16"
subnet = "10.244.1.0/24"
iface = "eth0"
public_ip = "198.18.0.1"
container_ifaces = ["docker0"]
vtep_mac = "02:00:c6:12:00:01"
pin_dir = "/sys/fs/bpf/xnet"
metrics_addr = "127.0.0.1:9436"
[backend]
type = "vxlan"
vni = 1
port = 8472
ingress = "auto"
[[peer]]
subnet = "10.244.2.0/24"
public_ip = "198.18.0.2"
vtep_mac = "02:00:c6:12:00:02"
[[peer]]
subnet = "10.244.3.0/24"
public_ip = "198.18.0.3"
backend = "gre"
"#,
    r#"network = "10.244.0.0/16"
subnet = "10.244.1.0/24"
iface = "eth0"
container_ifaces = ["docker0", "cni0"]
[backend]
type = "direct"
fallback = "gre"
key = 42
[[peer]]
subnet = "10.244.2.0/25"
public_ip = "198.18.0.2"
"#,
    r#"iface = "eth0"
container_ifaces = ["docker0"]
[etcd]
endpoints = ["http://198.18.0.254:2379", "https://e:2379"]
ca_file = "/ca.pem"
prefix = "/x/net"
lease_ttl = 60
"#,
];

pub const TOML_WORDS: &[&[u8]] = &[
    b"\n",
    b" = ",
    b"\"",
    b"'",
    b"\"\"\"",
    b"[",
    b"]",
    b"[[peer]]\n",
    b"[backend]\n",
    b"[etcd]\n",
    b"#",
    b"\\u0000",
    b"\"10.244.0.0/16\"",
    b"\"10.244.1.0/24\"",
    b"\"10.244.1.0/33\"",
    b"\"0.0.0.0/0\"",
    b"\"255.255.255.255/32\"",
    b"\"198.18.0.2\"",
    b"\"02:00:c6:12:00:02\"",
    b"\"ff:ff:ff:ff:ff:ff\"",
    b"\"gre\"",
    b"\"udp\"",
    b"\"vxlan\"",
    b"\"direct\"",
    b"\"xdp\"",
    b"\"tc\"",
    b"4294967295",
    b"4294967296",
    b"16777216",
    b"65536",
    b"-1",
    b"0",
    b"1e400",
    b"nan",
    b"0x10",
    b"true",
    b"key = 7\n",
    b"port = 0\n",
    b"vni = 16777215\n",
    b"subnet = \"10.244.1.0/24\"\n",
    b"network = \"10.244.0.0/16\"\n",
    b"endpoints = []\n",
    b"lease_ttl = 0\n",
];

pub const NETWORK_CONFIG_SEEDS: &[&str] = &[
    r#"{"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0", "Backend": {"Type": "udp", "Port": 7890}}"#,
    r#"{"network": "10.244.0.0/16"}"#,
    r#"{"Network": "10.244.0.0/26", "backend": {"type": "vxlan", "vni": 7, "DirectRouting": true}}"#,
    r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "gre", "Key": 42}}"#,
    r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#,
];

pub const LEASE_SEEDS: &[&str] = &[
    r#"{"PublicIP":"198.18.0.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3e:5b:26:8a:45:0b"},"BackendV6Data":null}"#,
    r#"{"PublicIP":"198.18.0.8","BackendType":"udp"}"#,
    r#"{"PublicIP":"198.18.0.9","BackendType":"gre","BackendData":null}"#,
    r#"{"PublicIP":"198.18.0.10","BackendType":"host-gw"}"#,
];

pub const JSON_WORDS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b"\\u0000",
    b"\"Network\"",
    b"\"SubnetLen\"",
    b"\"SubnetMin\"",
    b"\"SubnetMax\"",
    b"\"Backend\"",
    b"\"Type\"",
    b"\"VNI\"",
    b"\"Port\"",
    b"\"Key\"",
    b"\"DirectRouting\"",
    b"\"PublicIP\"",
    b"\"BackendType\"",
    b"\"BackendData\"",
    b"\"VtepMAC\"",
    b"\"10.244.0.0/16\"",
    b"\"0.0.0.0/0\"",
    b"\"10.0.0.0/31\"",
    b"\"255.255.255.255\"",
    b"\"0.0.0.0\"",
    b"\"3e:5b:26:8a:45:0b\"",
    b"\"vxlan\"",
    b"\"udp\"",
    b"\"gre\"",
    b"\"host-gw\"",
    b"null",
    b"true",
    b"0",
    b"1",
    b"-1",
    b"8",
    b"30",
    b"32",
    b"33",
    b"255",
    b"65536",
    b"16777216",
    b"4294967296",
    b"1e400",
    b"1.5",
];

pub const LEASE_KEY_SEEDS: &[&str] =
    &["/coreos.com/network/subnets/10.244.5.0-24", "/coreos.com/network/subnets/10.0.0.0-8"];

pub const LEASE_KEY_WORDS: &[&[u8]] =
    &[b"-", b"/", b".", b"0", b"24", b"32", b"33", b"256", b"010", b"+1", b"subnets", b"//", b" "];

/// The fixed-seed fuzz slice: mutated texts (xnet-common's `mutate`: bit flips, truncations,
/// insertions, duplicated chunks, words of each format) through each check.
/// `XNET_FUZZ_CASES` sets the number of mutated texts per parser (default 20,000).
#[cfg(test)]
mod tests {
    use xnet_common::mutate::{Hints, Rng, check_fuzz_seeds, libfuzzer_dictionary, mutate};

    use super::*;

    fn cases() -> usize {
        std::env::var("XNET_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
    }

    /// Runs `check` over `cases()` mutations of the seeds (as text, invalid UTF-8 replaced, as a
    /// `&str` API sees it); both outcomes must occur, or the run proves little.
    fn run(seed: u64, seeds: &[&str], dictionary: &[&[u8]], check: fn(&str) -> bool) {
        let mut rng = Rng::new(seed);
        let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
        let hints = Hints { dictionary, fields: &[], max_len: 4096 };
        let (mut ok, mut refused) = (0, 0);
        for case in 0..cases() {
            let mut t = rng.pick(&seeds).clone();
            mutate(&mut rng, &mut t, &hints);
            let text = String::from_utf8_lossy(&t);
            let accepted = std::panic::catch_unwind(|| check(&text))
                .unwrap_or_else(|_| panic!("case {case}: the check failed on {text:?}"));
            if accepted {
                ok += 1;
            } else {
                refused += 1;
            }
        }
        assert!(cases() < 1000 || (ok > 0 && refused > 0), "accepted {ok}, refused {refused}");
    }

    #[test]
    fn mutated_config_files() {
        run(0xc0f1, CONFIG_SEEDS, TOML_WORDS, check_config);
    }

    #[test]
    fn mutated_network_configs() {
        run(0xc0f2, NETWORK_CONFIG_SEEDS, JSON_WORDS, check_network_config);
    }

    #[test]
    fn mutated_leases() {
        run(0x1ea5e, LEASE_SEEDS, JSON_WORDS, check_lease);
    }

    #[test]
    fn mutated_lease_keys() {
        run(0x1ea5f, LEASE_KEY_SEEDS, LEASE_KEY_WORDS, check_lease_key);
    }

    /// The files fuzz/ is given for the parser fuzzers: the seed corpora and the dictionaries
    /// (committed).
    fn fuzz_files() -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        let mut seeds = |dir: &str, seeds: Vec<String>| {
            for (i, s) in seeds.into_iter().enumerate() {
                files.push((format!("seeds/{dir}/seed-{i:02}"), s.into_bytes()));
            }
        };
        let strings = |seeds: &[&str]| seeds.iter().map(|s| s.to_string()).collect();
        seeds("config_parse", strings(CONFIG_SEEDS));
        seeds("network_config_parse", strings(NETWORK_CONFIG_SEEDS));
        // lease_parse: a key on the first line, then the value.
        let leases = LEASE_KEY_SEEDS
            .iter()
            .flat_map(|k| LEASE_SEEDS.iter().map(move |v| format!("{k}\n{v}")))
            .collect();
        seeds("lease_parse", leases);
        let dict = |words: &[&[u8]]| libfuzzer_dictionary(words).into_bytes();
        files.push(("dicts/toml.dict".into(), dict(TOML_WORDS)));
        files.push(("dicts/json.dict".into(), dict(JSON_WORDS)));
        files.push(("dicts/lease.dict".into(), dict(&[JSON_WORDS, LEASE_KEY_WORDS].concat())));
        files
    }

    /// The committed seeds and dictionaries of the parser fuzzers are what [`fuzz_files`] makes of
    /// the current seeds. With `XNET_WRITE_FUZZ_SEEDS=1` it writes them instead (after changing
    /// the seeds): `XNET_WRITE_FUZZ_SEEDS=1 cargo test -p xnet-userspace --lib fuzz_seeds`.
    #[test]
    fn fuzz_seeds_are_current() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let files = fuzz_files();
        check_fuzz_seeds(
            &fuzz,
            &["seeds/config_parse", "seeds/network_config_parse", "seeds/lease_parse"],
            &files,
            "xnet-userspace",
        );
    }
}
