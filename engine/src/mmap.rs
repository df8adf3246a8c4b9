//! Read-only memory maps of segment files, so that reads are served from
//! the page cache without a system call and values are returned as slices
//! of the mapping.
//!
//! Invariants:
//! * Only segment files are mapped, and only at their full, fixed length:
//!   lockstep never shrinks or truncates a segment file while the store is
//!   open (the directory lock keeps other lockstep processes out).
//! * lockstep writes segments with `pwrite`; Linux keeps shared mappings
//!   coherent with those writes through the page cache.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use bytes::Bytes;

/// Maps all of `file` read-only, as `Bytes` that keep the mapping alive.
pub(crate) fn map(file: &File) -> io::Result<Bytes> {
    // SAFETY: a mapping is undefined behaviour only if the mapped file is
    // truncated or modified in ways that tear reads. Segment files keep their
    // length for the store's lifetime (see the module invariants); bytes
    // written into them while mapped are written once, into zeros, and every
    // record read through the map is checksum-verified before it is returned.
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Bytes::from_owner(map))
}
