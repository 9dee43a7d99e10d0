//! ICMP "fragmentation needed" (type 3, code 4; RFC 792, RFC 1191): the answer egress gives, as a
//! router would, to a container packet that does not fit the tunnel, does not allow fragmenting
//! (DF) and is not a GSO packet (those are cut to fit later). The sender learns the overlay MTU from
//! it instead of black-holing (path MTU discovery without TCP's MSS).
//!
//! The answer is built in the packet's own buffer: the frame is cut to [`FRAG_NEEDED_FRAME_LEN`]
//! bytes, its Ethernet addresses swapped, and [`frag_needed`]'s bytes written after the Ethernet
//! header; the program then sends it back out of the interface it came in on, towards the container.
//! [`TokenBucket`] limits how many are sent, like the kernel's own ICMP rate limit.

use crate::csum;
use crate::wire::{ETH_LEN, IPV4_LEN};

/// The bytes of the offending packet an answer quotes: its IPv4 header (without options) and the
/// first 8 bytes after it (RFC 792: enough for the sender to find the socket, ports or ICMP id).
pub const QUOTED_LEN: usize = IPV4_LEN + 8;
/// The answer's IPv4 packet: header, ICMP header, the quote.
pub const FRAG_NEEDED_IP_LEN: usize = IPV4_LEN + 8 + QUOTED_LEN;
/// The answer's whole frame.
pub const FRAG_NEEDED_FRAME_LEN: usize = ETH_LEN + FRAG_NEEDED_IP_LEN;
/// The answer's IPv4 packet as little-endian words, as the programs store them.
pub const FRAG_NEEDED_WORDS: usize = FRAG_NEEDED_IP_LEN / 4;

const IPPROTO_ICMP: u8 = 1;
/// ICMP types that are errors: no error is ever sent about one of these (RFC 1812, 4.3.2.7).
const ICMP_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];
/// The answer's TOS: internetwork control, as Linux sends its ICMP errors.
const ANSWER_TOS: u8 = 0xc0;
const ANSWER_TTL: u8 = 64;

/// Whether a packet that is too big may be answered with "fragmentation needed", from its first
/// [`QUOTED_LEN`] bytes (IPv4 header onwards): DF set, IPv4 without options (what is quoted is the
/// whole header), the first fragment or none, and not an ICMP error itself. Others are dropped
/// without an answer (a too-big packet without DF would need fragmenting, which xnet does not do).
pub fn answerable(quoted: &[u8; QUOTED_LEN]) -> bool {
    let df = quoted[6] & 0x40 != 0;
    let offset = u16::from_be_bytes([quoted[6], quoted[7]]) & 0x1fff;
    let icmp_error = quoted[9] == IPPROTO_ICMP && ICMP_ERRORS.contains(&quoted[IPV4_LEN]);
    quoted[0] == 0x45 && df && offset == 0 && !icmp_error
}

/// The answer's IPv4 packet (header, ICMP "fragmentation needed" with next-hop MTU `mtu`, the
/// quote), from `src` (the gateway address the container knows) back to the quoted packet's
/// source, both checksums computed.
pub fn frag_needed(quoted: &[u8; QUOTED_LEN], src: [u8; 4], mtu: u16) -> [u8; FRAG_NEEDED_IP_LEN] {
    let mut p = [0u8; FRAG_NEEDED_IP_LEN];
    let total = (FRAG_NEEDED_IP_LEN as u16).to_be_bytes();
    p[..12].copy_from_slice(&[
        0x45,
        ANSWER_TOS,
        total[0],
        total[1],
        0,
        0,
        0,
        0,
        ANSWER_TTL,
        IPPROTO_ICMP,
        0,
        0,
    ]);
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&quoted[12..16]);
    let ip_sum = csum::checksum(be_words::<{ IPV4_LEN / 2 }>(&p[..IPV4_LEN]));
    p[10..12].copy_from_slice(&ip_sum);
    let mtu = mtu.to_be_bytes();
    p[IPV4_LEN..IPV4_LEN + 8].copy_from_slice(&[3, 4, 0, 0, 0, 0, mtu[0], mtu[1]]);
    p[IPV4_LEN + 8..].copy_from_slice(quoted);
    let icmp_sum = csum::checksum(be_words::<{ (FRAG_NEEDED_IP_LEN - IPV4_LEN) / 2 }>(&p[IPV4_LEN..]));
    p[IPV4_LEN + 2..IPV4_LEN + 4].copy_from_slice(&icmp_sum);
    p
}

/// [`frag_needed`] as little-endian words: byte `i` is byte `i % 4` of word `i / 4`.
pub fn frag_needed_words(quoted: &[u8; QUOTED_LEN], src: [u8; 4], mtu: u16) -> [u32; FRAG_NEEDED_WORDS] {
    let p = frag_needed(quoted, src, mtu);
    let mut w = [0u32; FRAG_NEEDED_WORDS];
    let mut i = 0;
    while i < FRAG_NEEDED_WORDS {
        w[i] = u32::from_le_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]]);
        i += 1;
    }
    w
}

/// `bytes` as 16-bit words in network order (`bytes` holds exactly `2 * N`).
fn be_words<const N: usize>(bytes: &[u8]) -> [u16; N] {
    let mut w = [0u16; N];
    let mut i = 0;
    while i < N {
        w[i] = u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        i += 1;
    }
    w
}

/// Answers one CPU may send per second, and how many at once after a quiet spell: the kernel's own
/// defaults for ICMP (`net.ipv4.icmp_msgs_per_sec` 1000, `icmp_msgs_burst` 50), per CPU.
pub const ICMP_PER_SEC: u64 = 1000;
pub const ICMP_BURST: u64 = 50;
/// What one answer costs, in nanoseconds of credit.
const COST_NS: u64 = 1_000_000_000 / ICMP_PER_SEC;

/// A token bucket kept as time: `credit_ns` grows with the clock up to [`ICMP_BURST`] answers'
/// worth and each answer spends [`COST_NS`]. Value of the per-CPU ICMP_LIMIT map; all zero (the
/// map's initial value) is a full bucket's worth once the clock has run a burst's time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    credit_ns: u64,
    last_ns: u64,
}

impl TokenBucket {
    /// A bucket holding `credit_ns` of credit as of `last_ns`.
    pub const fn new(credit_ns: u64, last_ns: u64) -> Self {
        Self { credit_ns, last_ns }
    }

    /// Takes one answer's credit at `now` (a monotonic clock, ns); false when there is none left.
    #[inline(always)]
    pub fn take(&mut self, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.last_ns);
        self.last_ns = now;
        let credit = self.credit_ns.saturating_add(elapsed).min(ICMP_BURST * COST_NS);
        if credit < COST_NS {
            self.credit_ns = credit;
            return false;
        }
        self.credit_ns = credit - COST_NS;
        true
    }
}

const _: () = assert!(size_of::<TokenBucket>() == 16 && FRAG_NEEDED_IP_LEN.is_multiple_of(4));

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] two u64, no padding (asserted above).
unsafe impl aya::Pod for TokenBucket {}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10.244.1.2 -> 10.244.2.7, 1500 bytes, DF, an ICMP echo request (id 0x1234, seq 1).
    fn quoted() -> [u8; QUOTED_LEN] {
        let mut q = [0u8; QUOTED_LEN];
        q[..20].copy_from_slice(&[
            0x45, 0, 0x05, 0xdc, 0x1c, 0x46, 0x40, 0, 64, 1, 0, 0, 10, 244, 1, 2, 10, 244, 2, 7,
        ]);
        q[20..].copy_from_slice(&[8, 0, 0xab, 0xcd, 0x12, 0x34, 0, 1]);
        q
    }

    /// The RFC 1071 sum over `bytes`, folded: 0xffff when a checksum inside is right.
    fn sum(bytes: &[u8]) -> u16 {
        let s: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        let s = (s & 0xffff) + (s >> 16);
        ((s & 0xffff) + (s >> 16)) as u16
    }

    #[test]
    fn the_answer_names_the_mtu_and_quotes_the_packet() {
        let p = frag_needed(&quoted(), [10, 244, 1, 1], 1450);
        assert_eq!(&p[..4], &[0x45, 0xc0, 0, 56], "version, TOS, total length");
        assert_eq!((p[8], p[9]), (64, 1), "TTL, protocol ICMP");
        assert_eq!(&p[12..20], &[10, 244, 1, 1, 10, 244, 1, 2], "from the gateway to the sender");
        assert_eq!(sum(&p[..20]), 0xffff, "IP header checksum");
        assert_eq!(&p[20..22], &[3, 4], "destination unreachable, fragmentation needed");
        assert_eq!(&p[24..28], &[0, 0, 0x05, 0xaa], "next-hop MTU 1450");
        assert_eq!(&p[28..], &quoted(), "the offending header and 8 bytes");
        assert_eq!(sum(&p[20..]), 0xffff, "ICMP checksum");
        let w = frag_needed_words(&quoted(), [10, 244, 1, 1], 1450);
        assert_eq!(w[0].to_le_bytes(), [0x45, 0xc0, 0, 56]);
        assert_eq!(w[13].to_le_bytes(), [0x12, 0x34, 0, 1]);
    }

    #[test]
    fn only_df_first_fragments_without_options_that_are_not_icmp_errors_are_answered() {
        assert!(answerable(&quoted()));
        let mut no_df = quoted();
        no_df[6] = 0;
        assert!(!answerable(&no_df));
        let mut later = quoted();
        later[7] = 1;
        assert!(!answerable(&later));
        let mut options = quoted();
        options[0] = 0x46;
        assert!(!answerable(&options));
        for t in [3, 4, 5, 11, 12] {
            let mut error = quoted();
            error[20] = t;
            assert!(!answerable(&error), "ICMP type {t}");
        }
        let mut udp = quoted();
        (udp[9], udp[20]) = (17, 3);
        assert!(answerable(&udp), "a UDP packet whose source port's high byte is 3");
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::default();
        let start = 10_000_000_000;
        let sent = (0..100).filter(|_| b.take(start)).count();
        assert_eq!(sent as u64, ICMP_BURST, "a full bucket, then nothing at the same instant");
        // One second later: one second's worth, capped at the burst.
        let sent = (0..2000).filter(|i| b.take(start + 1_000_000_000 + i)).count();
        assert_eq!(sent as u64, ICMP_BURST);
        // Spread over a second at the rate: every one goes.
        let t = start + 10_000_000_000;
        assert!(b.take(t));
        let sent = (1..=ICMP_PER_SEC).filter(|i| b.take(t + i * COST_NS)).count();
        assert_eq!(sent as u64, ICMP_PER_SEC);
    }
}
