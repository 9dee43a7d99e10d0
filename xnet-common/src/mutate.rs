//! Deterministic mutation of seed inputs (frames, config texts), for the fixed-seed fuzz slices
//! that run with `cargo test` (this crate's and the agent's unit tests) and for the differential
//! run of the programs against the host decisions (`tests/tests/differential.rs`). Coverage-guided
//! fuzzing with libFuzzer lives in `fuzz/` (`cargo xtask fuzz`); this is its cheap, reproducible
//! slice: no nightly, no extra dependency, the same cases on every run.
//!
//! Only with the `mutate` feature (or in this crate's tests): the programs never see it.

use alloc::vec::Vec;

/// xorshift64*: small, fast, and the same sequence everywhere for a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero; mix the seed so that nearby seeds diverge at once.
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u32) -> bool {
        (self.next_u64() % 100) < percent as u64
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// One of `items`, which must not be empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What a mutation may use besides random bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hints<'a> {
    /// Byte strings worth writing (addresses, ports, keywords, ...).
    pub dictionary: &'a [&'a [u8]],
    /// Offsets worth writing at (the start of header fields): half of the dictionary and length
    /// edits land on one of these, the other half anywhere.
    pub fields: &'a [usize],
    /// The longest input a mutation may produce.
    pub max_len: usize,
}

/// 16-bit values that length fields and their checks stumble on.
const INTERESTING_U16: [u16; 12] = [0, 1, 7, 8, 14, 20, 28, 0x7f, 0x80, 0xff, 0x7fff, 0xffff];

/// Applies one to four random mutations to `data`: bit flips, byte writes, truncations,
/// insertions, deletions, duplicated chunks, dictionary words, and edits of 16-bit length fields
/// (to interesting values, or to the input's own length give or take one).
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, hints: &Hints<'_>) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, data, hints);
    }
    data.truncate(hints.max_len);
}

fn offset(rng: &mut Rng, data: &[u8], hints: &Hints<'_>) -> usize {
    if !hints.fields.is_empty() && rng.chance(50) {
        *rng.pick(hints.fields)
    } else {
        rng.below(data.len() + 1)
    }
}

fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, hints: &Hints<'_>) {
    match rng.below(9) {
        0 if !data.is_empty() => {
            let at = rng.below(data.len());
            data[at] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let at = rng.below(data.len());
            data[at] = rng.byte();
        }
        2 => {
            // Truncation, mostly near the end (where the interesting cuts of a frame are).
            let keep = if rng.chance(50) {
                data.len().saturating_sub(rng.below(40))
            } else {
                rng.below(data.len() + 1)
            };
            data.truncate(keep);
        }
        3 => {
            let at = rng.below(data.len() + 1);
            let n = 1 + rng.below(8);
            for _ in 0..n {
                data.insert(at, rng.byte());
            }
        }
        4 if !data.is_empty() => {
            let at = rng.below(data.len());
            let n = (1 + rng.below(8)).min(data.len() - at);
            data.drain(at..at + n);
        }
        5 if !data.is_empty() => {
            // A chunk copied elsewhere (duplicated lines, repeated headers).
            let from = rng.below(data.len());
            let n = (1 + rng.below(16)).min(data.len() - from);
            let chunk: Vec<u8> = data[from..from + n].to_vec();
            let at = rng.below(data.len() + 1);
            if rng.chance(50) {
                data.splice(at..at, chunk);
            } else {
                write_at(data, at, &chunk);
            }
        }
        6 | 7 if !hints.dictionary.is_empty() => {
            let word = *rng.pick(hints.dictionary);
            let at = offset(rng, data, hints);
            if rng.chance(70) {
                write_at(data, at, word);
            } else {
                let at = at.min(data.len());
                data.splice(at..at, word.iter().copied());
            }
        }
        _ => {
            // A 16-bit field (big-endian, as on the wire) set to a length-ish value.
            let at = offset(rng, data, hints);
            let len = data.len() as u16;
            let value = match rng.below(4) {
                0 => len.wrapping_sub(14),
                1 => len.wrapping_sub(34).wrapping_add(rng.below(3) as u16).wrapping_sub(1),
                _ => *rng.pick(&INTERESTING_U16),
            };
            write_at(data, at, &value.to_be_bytes());
        }
    }
}

/// Overwrites `data` from `at` with `bytes`, within its current length.
fn write_at(data: &mut [u8], at: usize, bytes: &[u8]) {
    let end = (at + bytes.len()).min(data.len());
    if at < end {
        data[at..end].copy_from_slice(&bytes[..end - at]);
    }
}

/// Recomputes the checksum of the IPv4 header at `at` (20 bytes, options ignored) when the frame
/// holds it: mutated frames with a right checksum get past the outer header check, to the rules
/// behind it.
pub fn fix_ipv4_checksum(frame: &mut [u8], at: usize) {
    let Some(h) = frame.get_mut(at..at + 20) else {
        return;
    };
    h[10] = 0;
    h[11] = 0;
    let mut words = [0u16; 10];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u16::from_be_bytes([h[2 * i], h[2 * i + 1]]);
    }
    h[10..12].copy_from_slice(&crate::csum::checksum(words));
}

/// A libFuzzer dictionary of `words` (one quoted word a line, bytes outside printable ASCII as
/// `\xNN`).
pub fn libfuzzer_dictionary(words: &[&[u8]]) -> alloc::string::String {
    use alloc::string::String;
    use core::fmt::Write as _;
    let mut out = String::new();
    for w in words {
        out.push('"');
        for &b in *w {
            if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                out.push(b as char);
            } else {
                // Writing into a String cannot fail.
                let _ = write!(out, "\\x{b:02x}");
            }
        }
        out.push_str("\"\n");
    }
    out
}

/// Checks that the fuzz workspace at `fuzz` holds exactly the seed files `files` (path under
/// `fuzz`, bytes) in the seed directories `dirs`; with `XNET_WRITE_FUZZ_SEEDS=1` set, writes them
/// there instead. `package`: the crate whose test makes them, named in the failure message.
pub fn check_fuzz_seeds(
    fuzz: &std::path::Path,
    dirs: &[&str],
    files: &[(alloc::string::String, Vec<u8>)],
    package: &str,
) {
    let write = std::env::var_os("XNET_WRITE_FUZZ_SEEDS").is_some_and(|v| v == "1");
    for dir in dirs {
        if write {
            let _ = std::fs::remove_dir_all(fuzz.join(dir));
            std::fs::create_dir_all(fuzz.join(dir)).unwrap();
        }
        let on_disk = std::fs::read_dir(fuzz.join(dir)).unwrap().count();
        let wanted = files.iter().filter(|(p, _)| p.starts_with(dir)).count();
        assert!(write || on_disk == wanted, "fuzz/{dir} holds {on_disk} files, the seeds make {wanted}");
    }
    for (path, bytes) in files {
        if write {
            std::fs::write(fuzz.join(path), bytes).unwrap();
        } else {
            let committed = std::fs::read(fuzz.join(path)).unwrap_or_default();
            assert!(
                committed == *bytes,
                "fuzz/{path} is not what the seeds make: run XNET_WRITE_FUZZ_SEEDS=1 cargo test -p {package} --lib fuzz_seeds"
            );
        }
    }
}

/// Seed frames and field hints for mutated-frame runs, in the addressing of the datapath tests
/// (tests/tests/datapath_programs.rs): this host 198.18.0.1 with 10.244.1.0/24 of 10.244.0.0/16,
/// the peers 198.18.0.2 to .5 each owning 10.244.<n>.0/24 (sent to with vxlan, udp, gre and
/// direct there), VNI 0x123456, ports 8472 and 8285.
pub mod frames {
    use alloc::vec;
    use alloc::vec::Vec;

    pub const LOCAL_IP: [u8; 4] = [198, 18, 0, 1];
    pub const VNI: u32 = 0x12_34_56;
    pub const VXLAN_PORT: u16 = 8472;
    pub const UDP_PORT: u16 = 8285;
    /// The key of the keyed GRE seeds (a datapath keyed with another drops them as such).
    pub const GRE_KEY: u32 = 0xdead_beef;
    /// The peers 198.18.0.<n>, each owning 10.244.<n>.0/24.
    pub const PEERS: [u8; 4] = [2, 3, 4, 5];
    /// A container MAC on this host (02:42:0a:f4:01:03), as an egress seed's destination.
    pub const CONTAINER: [u8; 6] = [2, 0x42, 10, 244, 1, 3];
    /// The container bridge's MAC, the destination of container traffic leaving the host.
    pub const BRIDGE: [u8; 6] = [2, 0x42, 10, 244, 1, 1];

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let len = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0x10, (len >> 8) as u8, len as u8, 0x1c, 0x46, 0x40, 0, 64, proto, 0, 0];
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        super::fix_ipv4_checksum(&mut h, 0);
        h.extend_from_slice(payload);
        h
    }

    fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0xc7, 0x38];
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    /// An ICMP echo from `src` to `dst`.
    fn ping(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        icmp.extend(0..24u8);
        ipv4(1, src, dst, &icmp)
    }

    /// Valid tunnel frames of every kind from peer 198.18.0.<n> (a container of its subnet to local
    /// container 10.244.1.5), and a few that are not tunnel traffic (to this host, ARP, and
    /// untunnelled to a local container).
    pub fn ingress_seeds() -> Vec<Vec<u8>> {
        let mut seeds = Vec::new();
        for n in PEERS {
            let peer = [198, 18, 0, n];
            let inner = ping([10, 244, n, 7], [10, 244, 1, 5]);
            let mut vxlan = vec![0x08, 0, 0, 0];
            vxlan.extend_from_slice(&(VNI << 8).to_be_bytes());
            vxlan.extend(eth([2, 0, 0xc6, 0x12, 0, 1], 0x0800, &inner));
            let outer = |proto, l4: &[u8]| eth([2, 0, 0, 0, 0, 1], 0x0800, &ipv4(proto, peer, LOCAL_IP, l4));
            seeds.push(outer(17, &udp(VXLAN_PORT, &vxlan)));
            seeds.push(outer(17, &udp(UDP_PORT, &inner)));
            let mut gre = vec![0, 0, 0x08, 0];
            gre.extend_from_slice(&inner);
            seeds.push(outer(47, &gre));
            let mut keyed = vec![0x20, 0, 0x08, 0];
            keyed.extend_from_slice(&GRE_KEY.to_be_bytes());
            keyed.extend_from_slice(&inner);
            seeds.push(outer(47, &keyed));
        }
        seeds.push(eth([2, 0, 0, 0, 0, 1], 0x0800, &ping([198, 18, 0, 2], LOCAL_IP)));
        // Untunnelled to a local container: from the direct peer's container, from a tunnel peer's
        // container, from a stranger.
        for src in [[10, 244, 5, 7], [10, 244, 2, 7], [198, 18, 0, 9]] {
            seeds.push(eth([2, 0, 0, 0, 0, 1], 0x0800, &ping(src, [10, 244, 1, 5])));
        }
        seeds.push(eth([0xff; 6], 0x0806, &[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 198, 18, 0, 2]));
        seeds
    }

    /// Container frames to every remote subnet, to this host's, from a foreign source, to a local
    /// container's MAC, and ARP.
    pub fn egress_seeds() -> Vec<Vec<u8>> {
        let mut seeds: Vec<Vec<u8>> =
            (1..=6).map(|n| eth(BRIDGE, 0x0800, &ping([10, 244, 1, 2], [10, 244, n, 7]))).collect();
        seeds.push(eth(BRIDGE, 0x0800, &ping([10, 244, 9, 2], [10, 244, 2, 7])));
        seeds.push(eth(CONTAINER, 0x0800, &ping([10, 244, 1, 2], [10, 244, 2, 7])));
        seeds.push(eth([0xff; 6], 0x0806, &[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 10, 244, 1, 2]));
        // TTL 1 towards the udp backend's subnet (flannel's framing decrements it: dropped).
        let mut dying = ping([10, 244, 1, 2], [10, 244, 3, 7]);
        dying[8] = 1;
        super::fix_ipv4_checksum(&mut dying, 0);
        seeds.push(eth(BRIDGE, 0x0800, &dying));
        // IP lengths around the 1500-byte underlay MTU less the VXLAN overhead (1450).
        for ip_len in [1450, 1470] {
            let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
            icmp.resize(ip_len - 20, 0x5a);
            seeds.push(eth(BRIDGE, 0x0800, &ipv4(1, [10, 244, 1, 2], [10, 244, 2, 7], &icmp)));
        }
        seeds
    }

    /// Words worth writing into frames: the addresses, ports and protocol numbers the rules compare.
    pub const FRAME_DICTIONARY: &[&[u8]] = &[
        &[198, 18, 0, 1],
        &[198, 18, 0, 2],
        &[198, 18, 0, 3],
        &[198, 18, 0, 5],
        &[198, 18, 0, 9],
        &[10, 244, 1, 5],
        &[10, 244, 2, 7],
        &[10, 244, 3, 7],
        &[10, 244, 9, 7],
        &[0x21, 0x18],
        &[0x20, 0x5d],
        &[0x12, 0xb5],
        &[0x08, 0x00],
        &[0x86, 0xdd],
        &[0x08, 0x06],
        &[0x45],
        &[0x46],
        &[0x65],
        &[17],
        &[47],
        &[6],
        &[0x20, 0x00],
        &[0x80, 0x00],
        &[0x10, 0x00],
        &[0x00, 0x01],
        &[0x12, 0x34, 0x56, 0x00],
        &[0xde, 0xad, 0xbe, 0xef],
        &[0x3f, 0xff],
        &[0x20, 0x00],
        &[0x00, 0x01],
    ];

    /// Offsets of the fields the rules read, in the seed frames: EtherType, outer IPv4 (version,
    /// fragment field, protocol, checksum, addresses), UDP ports and GRE flags, protocol and key, the
    /// VXLAN header, the inner Ethernet type and the inner IPv4 header of each tunnel.
    pub const FRAME_FIELDS: &[usize] =
        &[0, 12, 14, 15, 20, 22, 23, 24, 26, 30, 34, 36, 38, 42, 46, 54, 58, 62, 64, 66, 70, 76, 80];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_fixed_by_the_seed() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut data = std::vec![0u8; 64];
            let hints = Hints { dictionary: &[b"ab"], fields: &[3], max_len: 100 };
            for _ in 0..100 {
                mutate(&mut rng, &mut data, &hints);
            }
            data
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn a_fixed_checksum_is_valid() {
        let mut h =
            std::vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0xde, 0xad, 198, 18, 0, 2, 198, 18, 0, 1];
        fix_ipv4_checksum(&mut h, 0);
        let words: [u32; 5] =
            core::array::from_fn(|i| u32::from_le_bytes(h[4 * i..4 * i + 4].try_into().unwrap()));
        assert!(crate::csum::ipv4_header_words_valid(words));
    }
}
