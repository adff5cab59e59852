//! The retry budget of one service (Finagle's and Linkerd's idea).
//!
//! Retries may add at most `budget_percent` of the service's requests over
//! the last `budget_window`, plus `min_per_second` retries per second so a
//! quiet service can still retry. Over a span of `t` seconds (up to a
//! window) the attempts sent are thus at most `requests + ceil(requests x
//! percent/100) + min_per_second x t + 1` (the floor holds at most one
//! retry in reserve): a failing service cannot multiply
//! its load, whatever the clients do. (Rounding up lets the very first
//! request of a new service fall back once.)
//!
//! Why not tower's `TpsBudget`: its floor is a reserve of `min_per_sec x
//! ttl` retries available at any moment (100 at once with the defaults), a
//! burst rather than a rate, and it rounds the percentage to `1/n`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RetryConfig;

/// Slots of the sliding window.
const SLOTS: usize = 10;

/// How many retries a service may still make; counts what it spent.
///
/// Every request of the service passes through [`RetryBudget::deposit`], so
/// it is one relaxed atomic add: the requests are a running total, and the
/// window keeps the total at the start of each slot, written under the lock
/// only when a slot boundary has passed (once per slot, by whichever call
/// notices first). Requests counted just after a boundary may be booked to
/// the slot before it, so they leave the window a slot early: the budget is
/// never more generous than its definition. Retries (rare) take the lock.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: f64,
    slot: Duration,
    epoch: Instant,
    /// Requests since the budget was made.
    requests: AtomicU64,
    /// The slot number (`elapsed / slot`) the window was last moved to.
    slot_no: AtomicU64,
    state: Mutex<State>,
    retries: AtomicU64,
    exhausted: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// The running request total at the start of each slot.
    starts: [u64; SLOTS],
    /// Retries drawn on the percentage, per slot.
    retries: [u64; SLOTS],
    current: usize,
    current_no: u64,
    /// Retries the per-second floor still allows (at most one: a rate, not
    /// a reserve that a burst could spend at once).
    floor: f64,
    floor_at: Instant,
}

impl RetryBudget {
    /// An empty budget.
    pub fn new(config: &RetryConfig) -> Self {
        let now = Instant::now();
        let min_per_second = config.min_per_second as f64;
        Self {
            percent: config.budget_percent as u64,
            min_per_second,
            slot: (config.budget_window / SLOTS as u32).max(Duration::from_millis(1)),
            epoch: now,
            requests: AtomicU64::new(0),
            slot_no: AtomicU64::new(0),
            state: Mutex::new(State {
                starts: [0; SLOTS],
                retries: [0; SLOTS],
                current: 0,
                current_no: 0,
                floor: 0.0,
                floor_at: now,
            }),
            retries: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters invalid
        // (plain integers), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot_no(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.slot.as_nanos()) as u64
    }

    /// Moves the window to slot `no` under the lock `s`.
    fn advance(&self, s: &mut State, no: u64) {
        if no <= s.current_no {
            return;
        }
        let total = self.requests.load(Ordering::Relaxed);
        for _ in 0..(no - s.current_no).min(SLOTS as u64) {
            s.current = (s.current + 1) % SLOTS;
            s.starts[s.current] = total;
            s.retries[s.current] = 0;
        }
        s.current_no = no;
        self.slot_no.store(no, Ordering::Relaxed);
    }

    /// Counts one request: it earns `budget_percent`/100 of a retry.
    pub fn deposit(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let no = self.slot_no(Instant::now());
        if no != self.slot_no.load(Ordering::Relaxed) {
            let mut s = self.state();
            self.advance(&mut s, no);
        }
    }

    /// Takes one retry from the budget; false (and counted as exhausted)
    /// when there is none left.
    pub fn withdraw(&self) -> bool {
        let now = Instant::now();
        let mut s = self.state();
        self.advance(&mut s, self.slot_no(now));
        // The oldest slot of the window is the one after the current.
        let requests = self
            .requests
            .load(Ordering::Relaxed)
            .saturating_sub(s.starts[(s.current + 1) % SLOTS]);
        let retries: u64 = s.retries.iter().sum();
        let granted = if retries * 100 < requests * self.percent {
            let c = s.current;
            s.retries[c] += 1;
            true
        } else {
            let refill =
                now.saturating_duration_since(s.floor_at).as_secs_f64() * self.min_per_second;
            s.floor = (s.floor + refill).min(self.min_per_second.min(1.0));
            s.floor_at = now;
            if s.floor >= 1.0 {
                s.floor -= 1.0;
                true
            } else {
                false
            }
        };
        drop(s);
        if granted {
            self.retries.fetch_add(1, Ordering::Relaxed);
        } else {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
        }
        granted
    }

    /// Retries granted so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries refused because the budget was spent.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(&RetryConfig {
            budget_percent: percent,
            min_per_second,
            budget_window: Duration::from_secs(10),
            max_attempts: 2,
        })
    }

    fn drain(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_percent_of_requests_plus_a_floor_rate() {
        let b = budget(20, 10);
        for _ in 0..500 {
            b.deposit();
        }
        // 100 from the percentage; the floor starts empty.
        assert_eq!(drain(&b), 100);
        assert_eq!(b.exhausted(), 1);
        // The floor accrues 10 per second but holds at most one retry: over
        // t seconds it adds at most 10 x t + 1, never a burst.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(drain(&b), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(drain(&b), 1, "no burst after a quiet spell");
        let mut spread = 0;
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(100)).await;
            spread += drain(&b);
        }
        assert_eq!(spread, 10, "ten per second when spread out");
        assert_eq!(b.retries(), 112);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_earn_retries_only_within_the_window() {
        let b = budget(20, 0);
        assert!(!b.withdraw(), "nothing earned, no floor");
        for _ in 0..50 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.withdraw(), "deposits older than the window expired");
        for _ in 0..50 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(drain(&b), 10);
        // Retries taken stay counted against the window's requests.
        assert!(!b.withdraw(), "50 requests earn 10 retries, all taken");
        b.deposit();
        assert!(b.withdraw(), "51 earn 11 (rounded up)");
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_of_a_new_service_may_fall_back_once() {
        let b = budget(20, 10);
        b.deposit();
        assert!(b.withdraw());
        assert!(!b.withdraw());
        assert_eq!((b.retries(), b.exhausted()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_stays_within_the_bound() {
        // 1000 requests/s for 20 s, every one wanting a retry.
        let b = budget(20, 10);
        let (mut requests, mut retries) = (0u64, 0u64);
        for _ in 0..20_000 {
            b.deposit();
            requests += 1;
            if b.withdraw() {
                retries += 1;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(
            retries <= requests.div_ceil(5) + 10 * 20,
            "{retries} retries for {requests} requests"
        );
        assert!(retries >= requests / 5, "the budget is usable: {retries}");
    }
}
