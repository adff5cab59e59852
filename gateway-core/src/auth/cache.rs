//! The decision cache: verified credentials by a keyed 128-bit hash
//! of the credential, each with its own expiry, bounded. Sixteen shards behind
//! plain mutexes: a lookup holds one for a hash-map probe and an `Arc`
//! clone, shorter than any await. A full shard first drops what expired,
//! then an arbitrary entry (a decision forgotten is only a re-check).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Verified;

const SHARDS: usize = 16;

type Shard = HashMap<super::CacheKey, (Instant, Arc<Verified>)>;

/// See module docs.
pub(crate) struct DecisionCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    ttl: Duration,
}

impl DecisionCache {
    /// Holds at most about `max_entries`, each at most `ttl`.
    pub(crate) fn new(max_entries: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_entries.div_ceil(SHARDS).max(1),
            ttl,
        }
    }

    /// The configured time to live.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn shard(&self, key: &super::CacheKey) -> &Mutex<Shard> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// The decision for `key`, unless absent or expired.
    pub(crate) fn get(&self, key: &super::CacheKey) -> Option<Arc<Verified>> {
        let shard = self.shard(key).lock().ok()?;
        let (until, v) = shard.get(key)?;
        (Instant::now() < *until).then(|| v.clone())
    }

    /// Remembers a decision for `min(ttl, max)`.
    pub(crate) fn insert(&self, key: super::CacheKey, v: Arc<Verified>, max: Duration) {
        let ttl = self.ttl.min(max);
        if ttl.is_zero() {
            return;
        }
        let Ok(mut shard) = self.shard(&key).lock() else {
            return;
        };
        let now = Instant::now();
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, (until, _)| *until > now);
            if shard.len() >= self.per_shard
                && let Some(k) = shard.keys().next().copied()
            {
                shard.remove(&k);
            }
        }
        shard.insert(key, (now + ttl, v));
    }

    /// Entries held (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }
}
