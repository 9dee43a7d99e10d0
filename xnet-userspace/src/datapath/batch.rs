//! Many map entries in one bpf(2) call: BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH and
//! BPF_MAP_LOOKUP_BATCH (Linux 5.6 for hash and array maps, later for the LPM trie), which aya
//! does not offer. Writing 100,000 peers one entry a call costs 365,000 syscalls; in batches, a
//! few hundred.
//!
//! The calls take aya's typed maps ([`Batched`]), whose key and value types aya checked against
//! the map's key and value sizes when it opened the map: that check is what makes the buffers
//! handed to the kernel the right size.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{Array, HashMap, IterableMap, LpmTrie, MapData, lpm_trie::Key},
};

/// A typed map whose key and value types have the sizes of the kernel map's keys and values.
pub trait Batched {
    type Key: Pod;
    type Value: Pod;
    fn data(&self) -> &MapData;
}

impl<K: Pod, V: Pod> Batched for HashMap<MapData, K, V> {
    type Key = K;
    type Value = V;
    fn data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

impl<V: Pod> Batched for Array<MapData, V> {
    type Key = u32;
    type Value = V;
    fn data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

impl<K: Pod, V: Pod> Batched for LpmTrie<MapData, K, V> {
    type Key = Key<K>;
    type Value = V;
    fn data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

/// A batch that stopped part-way: the first `done` entries were written (or deleted), in order.
#[derive(Debug)]
pub struct Partial {
    pub done: usize,
    pub error: io::Error,
}

/// `union bpf_attr` as the batch commands read it (`struct { ... } batch` in linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Runs batch command `cmd`; returns the count the kernel wrote back and the error, if any.
///
/// # Safety
/// The pointers in `attr` must be valid for what `cmd` reads and writes: `count` keys of the
/// map's key size at `keys`, `count` values of its value size at `values`, a key's worth at
/// `in_batch` and `out_batch` when set.
unsafe fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> (usize, Option<io::Error>) {
    // SAFETY: `attr` is a live, fully initialised struct of the size passed; what its pointers
    // point at is the caller's promise.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<BatchAttr>() as libc::c_uint)
    };
    let err = (rc < 0).then(io::Error::last_os_error);
    (attr.count as usize, err)
}

fn fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

/// Writes `values[i]` under `keys[i]` (any flag: insert or replace), in order.
pub fn update<M: Batched>(map: &mut M, keys: &[M::Key], values: &[M::Value]) -> Result<(), Partial> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd(map.data()),
        ..Default::default()
    };
    // SAFETY: `keys` and `values` hold `count` elements each, of the map's key and value sizes
    // (aya checked the types' sizes against the map when it opened it); the kernel only reads them.
    match unsafe { bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr) } {
        (_, None) => Ok(()),
        (done, Some(error)) => Err(Partial { done: done.min(keys.len()), error }),
    }
}

/// Deletes `keys`, in order; a key that is not there stops the batch (ENOENT).
pub fn delete<M: Batched>(map: &mut M, keys: &[M::Key]) -> Result<(), Partial> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd(map.data()),
        ..Default::default()
    };
    // SAFETY: `keys` holds `count` keys of the map's key size; the kernel only reads them.
    match unsafe { bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr) } {
        (_, None) => Ok(()),
        (done, Some(error)) => Err(Partial { done: done.min(keys.len()), error }),
    }
}

/// Entries read per call by [`for_each`].
const LOOKUP_CHUNK: usize = 4096;

/// Calls `f` with every entry of the map, read [`LOOKUP_CHUNK`] entries a call.
pub fn for_each<M: Batched>(map: &M, mut f: impl FnMut(M::Key, M::Value)) -> io::Result<()> {
    let mut keys: Vec<M::Key> = Vec::with_capacity(LOOKUP_CHUNK);
    let mut values: Vec<M::Value> = Vec::with_capacity(LOOKUP_CHUNK);
    // The position between calls: a key for most maps, a bucket number (u32) for hash maps.
    let token_size = size_of::<M::Key>().max(size_of::<u64>());
    let (mut token_in, mut token_out) = (vec![0u8; token_size], vec![0u8; token_size]);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_mut_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: LOOKUP_CHUNK as u32,
            map_fd: fd(map.data()),
            ..Default::default()
        };
        // SAFETY: `keys` and `values` have room for `count` keys and values of the map's sizes
        // (aya checked the types), the tokens for a key or a bucket number; the kernel writes
        // at most that.
        let (got, err) = unsafe { bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let got = got.min(LOOKUP_CHUNK);
        let end = match &err {
            None => got == 0,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(_) => false,
        };
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Some(e) => return Err(e),
        }
        // SAFETY: the kernel wrote `got` keys and values (plain data: any bytes are valid).
        unsafe {
            keys.set_len(got);
            values.set_len(got);
        }
        for (k, v) in keys.drain(..).zip(values.drain(..)) {
            f(k, v);
        }
        if end {
            return Ok(());
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}
