//! Bounds-checked access to packet headers, the one abstraction the packet logic needs.

/// A header type that may be read straight out of packet memory.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have an alignment of 1 (only `u8` and byte arrays inside)
/// and accept every bit pattern, so that a reference to one may point anywhere into a packet.
pub unsafe trait Header: Sized {}

/// Read access to a packet's bytes, starting at its Ethernet header.
pub trait Packet {
    /// The packet's length in bytes, as the kernel counts it (for GSO packets, the whole
    /// super-packet).
    fn len(&self) -> usize;

    /// Whether the packet is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The header of type `T` at byte `offset`, or `None` when the packet ends before it does.
    fn header<T: Header>(&self, offset: usize) -> Option<&T>;

    /// The `N` 4-byte words from byte `offset` as little-endian integers (byte `offset` lowest),
    /// or `None` when the packet ends first. The programs load each word in one instruction.
    #[inline(always)]
    fn words<const N: usize>(&self, offset: usize) -> Option<[u32; N]> {
        Some(self.header::<[[u8; 4]; N]>(offset)?.map(u32::from_le_bytes))
    }
}

/// How many bytes to pull into the linear area of a packet of `len` bytes whose first `linear`
/// are there, so that its first `need` bytes (or all, if it is shorter) can be read directly;
/// `None` when they already can. NICs that split headers from payload leave less than the headers
/// linear; the tc programs pull them in (`bpf_skb_pull_data`), XDP cannot.
#[inline(always)]
pub fn headers_to_pull(len: usize, linear: usize, need: usize) -> Option<usize> {
    let want = if len < need { len } else { need };
    (linear < want).then_some(want)
}

/// Host-side packets (tests, the agent's own tooling) are byte slices.
impl Packet for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let bytes = self.get(offset..offset.checked_add(size_of::<T>())?)?;
        // SAFETY: `bytes` holds exactly size_of::<T>() initialised bytes; `T: Header` guarantees
        // alignment 1 and that any bit pattern is a valid `T`.
        Some(unsafe { &*bytes.as_ptr().cast::<T>() })
    }
}

// SAFETY: a byte has alignment 1 and accepts every bit pattern.
unsafe impl Header for u8 {}
// SAFETY: an array has its element's alignment (1, for a Header) and no padding between elements,
// and accepts every bit pattern when its element does.
unsafe impl<T: Header, const N: usize> Header for [T; N] {}

#[cfg(test)]
mod tests {
    use super::headers_to_pull;

    #[test]
    fn only_headers_outside_the_linear_area_are_pulled() {
        // A VXLAN frame of 1514 bytes whose NIC put 64 bytes in the linear area: pull 84.
        assert_eq!(headers_to_pull(1514, 64, 84), Some(84));
        // The headers are there already: nothing.
        assert_eq!(headers_to_pull(1514, 84, 84), None);
        assert_eq!(headers_to_pull(1514, 1514, 84), None);
        // A frame shorter than the headers: all of it, if not all linear.
        assert_eq!(headers_to_pull(60, 40, 84), Some(60));
        assert_eq!(headers_to_pull(60, 60, 84), None);
        assert_eq!(headers_to_pull(0, 0, 84), None);
    }
}
