//! The in-memory index: key → where its latest record lives.
//!
//! Sharded by a hash of the key so that concurrent readers rarely touch the
//! same lock. Each shard is a hash map (a point lookup costs one or two cache
//! misses) plus an ordered set of its keys for scans. Short keys are stored
//! inline, so comparing them chases no pointer.
//!
//! Invariants:
//! * A batch of updates becomes visible all at once: the writer holds the
//!   write locks of every shard it touches, taken in shard order, while it
//!   applies them. Readers take one shard's read lock (point reads) or all of
//!   them in shard order (scans), so they never see half a batch.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use crate::store::Loc;

/// Number of shards (a power of two).
const SHARDS: usize = 16;
/// Keys up to this long are stored inline.
const INLINE_KEY_LEN_MAX: usize = 22;

const _: () = assert!(SHARDS.is_power_of_two());

/// A key as the index stores it.
#[derive(Clone)]
enum IndexKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY_LEN_MAX] },
    Heap(Box<[u8]>),
}

impl IndexKey {
    fn new(key: &[u8]) -> IndexKey {
        if key.len() <= INLINE_KEY_LEN_MAX {
            let mut bytes = [0u8; INLINE_KEY_LEN_MAX];
            bytes[..key.len()].copy_from_slice(key);
            IndexKey::Inline { len: key.len() as u8, bytes }
        } else {
            IndexKey::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => &bytes[..*len as usize],
            IndexKey::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl Hash for IndexKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, so that lookups by `&[u8]` find the key.
        self.as_slice().hash(state);
    }
}

/// A hasher for keys: XXH3 of the bytes, mixed with the length prefix that
/// `[u8]`'s `Hash` writes.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 ^= xxh3_64(bytes);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 ^= (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Default)]
struct Shard {
    locs: HashMap<IndexKey, Loc, BuildHasherDefault<KeyHasher>>,
    order: BTreeSet<IndexKey>,
}

impl Shard {
    fn set(&mut self, key: &[u8], loc: Option<Loc>) {
        match loc {
            Some(loc) => {
                if let Some(slot) = self.locs.get_mut(key) {
                    *slot = loc;
                } else {
                    let key = IndexKey::new(key);
                    self.order.insert(key.clone());
                    self.locs.insert(key, loc);
                }
            }
            None => {
                if self.locs.remove(key).is_some() {
                    self.order.remove(key);
                }
            }
        }
    }
}

/// The whole index.
pub(crate) struct Index {
    shards: Vec<RwLock<Shard>>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Index({} keys)", self.len())
    }
}

fn shard_of(key: &[u8]) -> usize {
    // Truncation intended: the low bits pick the shard.
    xxh3_64(key) as usize & (SHARDS - 1)
}

fn read(shard: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

impl Index {
    pub(crate) fn new() -> Index {
        Index { shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect() }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<Loc> {
        read(&self.shards[shard_of(key)]).locs.get(key).copied()
    }

    /// Points `key` at `loc`, or removes it (`None`).
    pub(crate) fn set(&self, key: &[u8], loc: Option<Loc>) {
        self.shards[shard_of(key)].write().unwrap_or_else(PoisonError::into_inner).set(key, loc);
    }

    /// Applies updates in order (`None` removes the key), all visible at once.
    pub(crate) fn apply(&self, updates: &[(Bytes, Option<Loc>)]) {
        if let [(key, loc)] = updates {
            return self.set(key, *loc);
        }
        let mut touched = [false; SHARDS];
        for (key, _) in updates {
            touched[shard_of(key)] = true;
        }
        let mut guards: Vec<Option<_>> = (0..SHARDS)
            .map(|i| touched[i].then(|| self.shards[i].write().unwrap_or_else(PoisonError::into_inner)))
            .collect();
        for (key, loc) in updates {
            if let Some(shard) = guards[shard_of(key)].as_mut() {
                shard.set(key, *loc);
            }
        }
    }

    /// Every key in `range` with its location, in key order, as of one moment.
    pub(crate) fn range(&self, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Vec<(Bytes, Loc)> {
        let guards: Vec<_> = self.shards.iter().map(read).collect();
        let mut out: Vec<(Bytes, Loc)> = guards
            .iter()
            .flat_map(|shard| {
                shard
                    .order
                    .range::<[u8], _>(range)
                    .filter_map(|k| Some((Bytes::copy_from_slice(k.as_slice()), *shard.locs.get(k)?)))
            })
            .collect();
        drop(guards);
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).locs.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(n: u64) -> Option<Loc> {
        Some(Loc { segment: 0, offset: n, len: 1 })
    }

    #[test]
    fn keys_inline_and_on_the_heap_order_as_bytes() {
        let long = vec![b'z'; 100];
        let index = Index::new();
        let updates: Vec<(Bytes, Option<Loc>)> = vec![
            (Bytes::from_static(b"b"), loc(1)),
            (Bytes::from(long.clone()), loc(2)),
            (Bytes::from_static(b"a"), loc(3)),
            (Bytes::from_static(b"ab"), loc(4)),
            (Bytes::from_static(b"b"), None),
            (Bytes::from_static(b"c"), loc(5)),
        ];
        index.apply(&updates);
        assert_eq!(index.get(b"b"), None);
        assert_eq!(index.get(&long), loc(2));
        assert_eq!(index.len(), 4);
        let all: Vec<Bytes> = index.range((Bound::Unbounded, Bound::Unbounded)).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            all,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"ab"), Bytes::from_static(b"c"), Bytes::from(long)]
        );
        let some: Vec<Bytes> =
            index.range((Bound::Excluded(&b"a"[..]), Bound::Included(&b"c"[..]))).into_iter().map(|(k, _)| k).collect();
        assert_eq!(some, vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]);
    }
}
