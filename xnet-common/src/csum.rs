//! Internet checksum (RFC 1071) over the headers xnet writes.

use crate::wire::Ipv4Hdr;

/// Folds a 32-bit one's-complement sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
fn word(b: [u8; 2]) -> u32 {
    u16::from_be_bytes(b) as u32
}

/// The checksum field value for an IPv4 header without options (its own checksum field ignored).
#[inline(always)]
pub fn ipv4_header(h: &Ipv4Hdr) -> [u8; 2] {
    let sum = word([h.version_ihl, h.tos])
        + word(h.total_len)
        + word(h.id)
        + word(h.flags_frag)
        + word([h.ttl, h.protocol])
        + word([h.src[0], h.src[1]])
        + word([h.src[2], h.src[3]])
        + word([h.dst[0], h.dst[1]])
        + word([h.dst[2], h.dst[3]]);
    (!fold(sum)).to_be_bytes()
}

/// Whether an IPv4 header's checksum is right (the sum over the header, checksum included, is
/// all ones).
pub fn ipv4_header_valid(h: &Ipv4Hdr) -> bool {
    ipv4_header(h) == h.checksum
}

/// Decrements an IPv4 header's TTL (which must be above zero) and updates its checksum for the
/// changed word, incrementally (RFC 1624, eqn. 3).
#[inline(always)]
pub fn decrement_ttl(h: &mut Ipv4Hdr) {
    let old = word([h.ttl, h.protocol]);
    h.ttl -= 1;
    let new = word([h.ttl, h.protocol]);
    let sum = (!word(h.checksum) & 0xffff) + (!old & 0xffff) + new;
    h.checksum = (!fold(sum)).to_be_bytes();
}

/// [`decrement_ttl`] on the IPv4 header's bytes 8 to 11 (TTL, protocol, checksum) read as one
/// little-endian word, as the programs load them; returns the word to store back. The TTL must be
/// above zero. Sums over little-endian words give the same checksum bytes (RFC 1071, byte order
/// independence), so nothing is swapped.
#[inline(always)]
pub fn decrement_ttl_word(w: u32) -> u32 {
    let old = w & 0xffff;
    let new = old - 1;
    let sum = (!(w >> 16) & 0xffff) + (!old & 0xffff) + new;
    ((!fold(sum) as u32) << 16) | new
}

/// [`ipv4_header_valid`] on an IPv4 header without options as five little-endian words, as the
/// programs load it: its 16-bit words sum to all ones (summed little-endian, the same answer).
#[inline(always)]
pub fn ipv4_header_words_valid(words: [u32; 5]) -> bool {
    let sum: u32 = words.iter().map(|w| (w & 0xffff) + (w >> 16)).sum();
    fold(sum) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_words_check_agrees_with_the_header_check() {
        let words = |h: &Ipv4Hdr| {
            let b = [
                [h.version_ihl, h.tos, h.total_len[0], h.total_len[1]],
                [h.id[0], h.id[1], h.flags_frag[0], h.flags_frag[1]],
                [h.ttl, h.protocol, h.checksum[0], h.checksum[1]],
                h.src,
                h.dst,
            ];
            b.map(u32::from_le_bytes)
        };
        for (protocol, len, tos) in [(17u8, 100usize, 0u8), (47, 1500, 0xb8), (6, 65_535, 0xff)] {
            let good = crate::wire::outer_ipv4([198, 18, 0, 1], [10, 255, 0, 2], protocol, len, tos);
            assert!(ipv4_header_words_valid(words(&good)));
            let corruptions: [fn(&mut Ipv4Hdr); 4] = [
                |h| h.version_ihl ^= 0x01,
                |h| h.flags_frag[1] ^= 0x80,
                |h| h.checksum[0] ^= 0xff,
                |h| h.dst[3] ^= 0x10,
            ];
            for (i, corrupt) in corruptions.into_iter().enumerate() {
                let mut bad = good;
                corrupt(&mut bad);
                assert!(!ipv4_header_valid(&bad), "corruption {i}");
                assert!(!ipv4_header_words_valid(words(&bad)), "corruption {i}");
            }
        }
    }

    #[test]
    fn ttl_word_decrement_matches_the_header_one() {
        for ttl in [1u8, 2, 64, 0x80, 255] {
            for protocol in [0u8, 6, 17, 47, 255] {
                for checksum in [[0u8, 0], [0xff, 0xff], [0x12, 0x34], [0xff, 0x00], [0x00, 0xfe]] {
                    let mut h = crate::wire::outer_ipv4([1, 2, 3, 4], [5, 6, 7, 8], protocol, 100, 0);
                    h.ttl = ttl;
                    h.checksum = checksum;
                    let w = u32::from_le_bytes([h.ttl, h.protocol, h.checksum[0], h.checksum[1]]);
                    decrement_ttl(&mut h);
                    let want = u32::from_le_bytes([h.ttl, h.protocol, h.checksum[0], h.checksum[1]]);
                    assert_eq!(decrement_ttl_word(w), want, "ttl {ttl} protocol {protocol} {checksum:?}");
                }
            }
        }
    }

    #[test]
    fn ttl_decrement_matches_a_full_recompute() {
        for (ttl, protocol, tos) in [(64u8, 17u8, 0u8), (1, 6, 0xb8), (255, 47, 3), (0x80, 0, 0xff)] {
            let mut h = crate::wire::outer_ipv4([10, 244, 1, 2], [10, 244, 2, 9], protocol, 1000, tos);
            h.ttl = ttl;
            h.checksum = ipv4_header(&h);
            decrement_ttl(&mut h);
            assert_eq!(h.ttl, ttl - 1);
            assert_eq!(h.checksum, ipv4_header(&h), "ttl {ttl} protocol {protocol}");
            assert!(ipv4_header_valid(&h));
        }
    }

    // The example header of RFC 1071's companion literature (Wikipedia "IPv4 header checksum"):
    // 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7 has checksum b861.
    #[test]
    fn known_header_checksum() {
        let h = Ipv4Hdr {
            version_ihl: 0x45,
            tos: 0,
            total_len: [0x00, 0x73],
            id: [0, 0],
            flags_frag: [0x40, 0x00],
            ttl: 0x40,
            protocol: 0x11,
            checksum: [0xb8, 0x61],
            src: [192, 168, 0, 1],
            dst: [192, 168, 0, 199],
        };
        assert_eq!(ipv4_header(&h), [0xb8, 0x61]);
        assert!(ipv4_header_valid(&h));
        let mut bad = h;
        bad.ttl = 0x3f;
        assert!(!ipv4_header_valid(&bad), "a changed TTL must invalidate the checksum");
    }

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0x0001_ffff), 0x0001);
        assert_eq!(fold(0xffff_ffff), 0xffff);
    }
}
