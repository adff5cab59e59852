//! Cluster-wide counts in Redis: a fixed window per key, shared by every
//! replica (one script call: `INCR`, `PEXPIRE` on the window's first hit,
//! `PTTL`). A fixed window may let up to twice `rate` through around a
//! window's edge; it is the price of one round trip and no clock sharing.
//!
//! Fail open: when Redis cannot be reached or answer within the timeout the
//! request is let through, every such request counted in
//! `gateway_rate_limit_store_errors_total`, one warning when the store goes
//! away and one line when it is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::aio::MultiplexedConnection;
use tracing::{info, warn};

use crate::config::{ConfigError, RateLimitStoreConfig};

const SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
";

/// The connection to the store and its health.
pub(crate) struct Cluster {
    client: redis::Client,
    /// Cloned per request (a multiplexed connection is a handle); dropped on
    /// an error so the next request dials again.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    script: redis::Script,
    timeout: Duration,
    down: AtomicBool,
    errors: Counter,
}

impl Cluster {
    /// Checks the URL; connects on first use (a store down at start-up
    /// does not stop the gateway: it fails open like any outage).
    pub(crate) fn new(store: &RateLimitStoreConfig, errors: Counter) -> Result<Self, ConfigError> {
        let client = redis::Client::open(store.redis.as_str()).map_err(|e| ConfigError {
            setting: "rate_limit_store.redis",
            reason: e.to_string(),
        })?;
        Ok(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            script: redis::Script::new(SCRIPT),
            timeout: store.timeout,
            down: AtomicBool::new(false),
            errors,
        })
    }

    /// Counts a hit on `key` in a window of `per`: the count so far and the
    /// time left in the window, or `None` when the store did not answer.
    pub(crate) async fn hit(&self, key: &[u8], per: Duration) -> Option<(u64, Duration)> {
        let window_ms = u64::try_from(per.as_millis()).unwrap_or(u64::MAX).max(1);
        let outcome = tokio::time::timeout(self.timeout, async {
            let mut conn = self.connection().await?;
            let r: redis::RedisResult<(u64, i64)> = self
                .script
                .key(key)
                .arg(window_ms)
                .invoke_async(&mut conn)
                .await;
            r
        })
        .await;
        match outcome {
            Ok(Ok((n, ttl))) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    info!("Rate limit store is answering again.");
                }
                let ttl = Duration::from_millis(u64::try_from(ttl).unwrap_or(window_ms));
                Some((n, ttl))
            }
            failed => {
                *self.conn.lock().await = None;
                self.errors.inc();
                if !self.down.swap(true, Ordering::Relaxed) {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    warn!(error = %why, "Rate limit store unreachable: cluster limits are not enforced (failing open) until it is back.");
                }
                None
            }
        }
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.client.get_multiplexed_async_connection().await?;
        *slot = Some(c.clone());
        Ok(c)
    }
}
