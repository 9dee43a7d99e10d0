//! The Internet checksum (RFC 1071) as arithmetic on 16-bit words: sums, folding, incremental
//! updates (RFC 1624). It knows no header layout: the headers of `wire` compute, check and update
//! their checksums with it, and the programs use its word forms on what they load.

/// Folds a 32-bit one's-complement sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum of 16-bit words (each the value of two bytes in network order), as the checksum
/// field's bytes: the one's complement of their one's-complement sum. Over the words of a header
/// without its checksum field, that is the field's value.
#[inline(always)]
pub fn checksum<const N: usize>(words: [u16; N]) -> [u8; 2] {
    let mut sum = 0u32;
    for w in words {
        sum += u32::from(w);
    }
    (!fold(sum)).to_be_bytes()
}

/// A checksum field updated for one 16-bit word of what it covers changing from `old` to `new`,
/// incrementally (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
pub fn update(checksum: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    let sum = u32::from(!u16::from_be_bytes(checksum)) + u32::from(!old) + u32::from(new);
    (!fold(sum)).to_be_bytes()
}

/// An IPv4 header's TTL decrement with its checksum update ([`update`]), on the header's bytes 8
/// to 11 (TTL, protocol, checksum) read as one little-endian word, as the programs load them;
/// returns the word to store back. The TTL must be above zero. Sums over little-endian words give
/// the same checksum bytes (RFC 1071, byte order independence), so nothing is swapped. (The tests
/// of `wire::Ipv4Hdr::decrement_ttl` check that both agree.)
#[inline(always)]
pub fn decrement_ttl_word(w: u32) -> u32 {
    let old = w & 0xffff;
    let new = old - 1;
    let sum = (!(w >> 16) & 0xffff) + (!old & 0xffff) + new;
    ((!fold(sum) as u32) << 16) | new
}

/// Whether an IPv4 header without options, as five little-endian words as the programs load it,
/// has a right checksum: its 16-bit words, checksum included, sum to all ones (summed
/// little-endian, the same answer).
#[inline(always)]
pub fn ipv4_header_words_valid(words: [u32; 5]) -> bool {
    // Summed as 32-bit words into 64 bits, then folded: the same one's-complement sum as over the
    // 16-bit halves (2^16 is 1 modulo 0xffff), in a third of the instructions.
    let sum: u64 = words.iter().map(|&w| w as u64).sum();
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold((sum as u32).wrapping_add((sum >> 32) as u32)) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example header of RFC 1071's companion literature (Wikipedia "IPv4 header checksum"):
    // 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7 has checksum b861.
    const HEADER: [u16; 10] =
        [0x4500, 0x0073, 0x0000, 0x4000, 0x4011, 0xb861, 0xc0a8, 0x0001, 0xc0a8, 0x00c7];

    #[test]
    fn known_checksum() {
        let mut without = [0u16; 9];
        without[..5].copy_from_slice(&HEADER[..5]);
        without[5..].copy_from_slice(&HEADER[6..]);
        assert_eq!(checksum(without), [0xb8, 0x61]);
        // With the checksum field in, the sum is all ones: the checksum over it all is zero.
        assert_eq!(checksum(HEADER), [0, 0]);
    }

    #[test]
    fn words_check_of_the_known_header() {
        let b = HEADER.map(u16::to_be_bytes);
        let word = |i: usize| u32::from_le_bytes([b[i][0], b[i][1], b[i + 1][0], b[i + 1][1]]);
        let words = [word(0), word(2), word(4), word(6), word(8)];
        assert!(ipv4_header_words_valid(words));
        let mut bad = words;
        bad[2] ^= 1; // the TTL changed, the checksum not
        assert!(!ipv4_header_words_valid(bad));
    }

    #[test]
    fn words_check_agrees_with_summing_the_16_bit_halves() {
        let by_halves = |words: [u32; 5]| {
            let sum: u32 = words.iter().map(|w| (w & 0xffff) + (w >> 16)).sum();
            fold(sum) == 0xffff
        };
        // Pseudo-random headers, and each one with its checksum word set to make it valid, plus
        // the carry-heavy edge: all ones.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32
        };
        for _ in 0..20_000 {
            let mut words = [next(), next(), next(), next(), next()];
            assert_eq!(ipv4_header_words_valid(words), by_halves(words), "{words:x?}");
            // Make it right: the checksum is the high half of word 2 (bytes 10 and 11).
            words[2] &= 0xffff;
            let sum: u32 = words.iter().map(|w| (w & 0xffff) + (w >> 16)).sum();
            words[2] |= u32::from(!fold(sum)) << 16;
            assert!(by_halves(words) && ipv4_header_words_valid(words), "{words:x?}");
        }
        assert_eq!(ipv4_header_words_valid([u32::MAX; 5]), by_halves([u32::MAX; 5]));
    }

    #[test]
    fn update_matches_a_full_recompute() {
        let mut words = [0x4500u16, 0x0073, 0x0000, 0x4000, 0x4011, 0xc0a8, 0x0001, 0xc0a8, 0x00c7];
        for (i, new) in [(4usize, 0x3f11u16), (1, 0xffff), (8, 0x0000), (0, 0x45b8)] {
            let before = checksum(words);
            let old = words[i];
            words[i] = new;
            assert_eq!(update(before, old, new), checksum(words), "word {i} to {new:#x}");
        }
    }

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0x0001_ffff), 0x0001);
        assert_eq!(fold(0xffff_ffff), 0xffff);
    }
}
