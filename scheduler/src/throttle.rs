//! Per-principal limits, so one tenant's runaway script cannot starve the others: a token
//! bucket on the rate of client calls, and a cap on the streams (watches, uploads, downloads)
//! each principal holds open. Bookkeeping only, with the time passed in; handlers ask it.
//! Workers are not throttled: they act only on their own work, at a pace the farm sets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::Error;

/// How much each principal may ask.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sustained client calls per second (0: no rate limit).
    pub calls_per_second: f64,
    /// Calls a quiet principal may make at once before the rate applies.
    pub burst: f64,
    /// Streams (watches, uploads, downloads) one principal may hold open.
    pub streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            calls_per_second: 50.0,
            burst: 200.0,
            streams: 64,
        }
    }
}

/// Remembered principals past this many are forgotten when idle (full bucket, no stream).
const REMEMBERED: usize = 10_000;

#[derive(Debug)]
struct Account {
    tokens: f64,
    refilled: Instant,
    streams: usize,
}

#[derive(Debug, Default)]
pub struct Throttle {
    limits: Limits,
    accounts: Mutex<HashMap<String, Account>>,
}

/// One open stream of a principal; dropping it closes the slot.
#[derive(Debug)]
pub struct StreamSlot {
    throttle: Arc<Throttle>,
    who: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut accounts = self.throttle.lock();
        if let Some(account) = accounts.get_mut(&self.who) {
            account.streams = account.streams.saturating_sub(1);
        }
    }
}

impl Throttle {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Throttle {
            limits,
            accounts: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Account>> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn account<'a>(
        &self,
        accounts: &'a mut HashMap<String, Account>,
        who: &str,
        now: Instant,
    ) -> &'a mut Account {
        if accounts.len() >= REMEMBERED && !accounts.contains_key(who) {
            let (rate, burst) = (self.limits.calls_per_second, self.limits.burst);
            accounts.retain(|_, account| {
                let refilled = account.tokens
                    + rate
                        * now
                            .saturating_duration_since(account.refilled)
                            .as_secs_f64();
                account.streams > 0 || refilled < burst
            });
        }
        accounts.entry(who.to_string()).or_insert(Account {
            tokens: self.limits.burst,
            refilled: now,
            streams: 0,
        })
    }

    /// Admits one call of `who` at `now`, or says how long to wait.
    pub fn call(&self, who: &str, now: Instant) -> Result<(), Error> {
        let rate = self.limits.calls_per_second;
        if rate <= 0.0 {
            return Ok(());
        }
        let mut accounts = self.lock();
        let account = self.account(&mut accounts, who, now);
        let elapsed = now
            .saturating_duration_since(account.refilled)
            .as_secs_f64();
        account.tokens = (account.tokens + elapsed * rate).min(self.limits.burst);
        account.refilled = now;
        if account.tokens >= 1.0 {
            account.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - account.tokens) / rate * 1000.0).ceil();
            Err(Error::ResourceExhausted(format!(
                "rate limit: {who} may make {rate} calls a second (bursts of {}); retry in {wait_ms} ms",
                self.limits.burst
            )))
        }
    }

    /// Opens one stream of `who`, or refuses when it holds its share.
    pub fn open_stream(self: &Arc<Self>, who: &str, now: Instant) -> Result<StreamSlot, Error> {
        let mut accounts = self.lock();
        let account = self.account(&mut accounts, who, now);
        if account.streams >= self.limits.streams {
            return Err(Error::ResourceExhausted(format!(
                "{who} holds {} open streams (watches, uploads, downloads), the most one caller may; close some, or poll GetSequence",
                self.limits.streams
            )));
        }
        account.streams += 1;
        Ok(StreamSlot {
            throttle: self.clone(),
            who: who.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn limits(rate: f64, burst: f64, streams: usize) -> Limits {
        Limits {
            calls_per_second: rate,
            burst,
            streams,
        }
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_applies_per_principal() {
        let throttle = Throttle::new(limits(10.0, 5.0, 1));
        let start = Instant::now();
        for _ in 0..5 {
            throttle.call("alice", start).unwrap();
        }
        let error = throttle.call("alice", start).unwrap_err().to_string();
        assert!(
            error.contains("alice") && error.contains("retry in 100 ms"),
            "{error}"
        );
        // Bob is not slowed by Alice.
        throttle.call("bob", start).unwrap();
        // A tenth of a second later Alice has one call again, and only one.
        let later = start + Duration::from_millis(100);
        throttle.call("alice", later).unwrap();
        assert!(throttle.call("alice", later).is_err());
    }

    #[test]
    fn streams_are_capped_per_principal_and_freed_when_dropped() {
        let throttle = Throttle::new(limits(0.0, 0.0, 2));
        let now = Instant::now();
        let first = throttle.open_stream("alice", now).unwrap();
        let _second = throttle.open_stream("alice", now).unwrap();
        let error = throttle.open_stream("alice", now).unwrap_err().to_string();
        assert!(error.contains("2 open streams"), "{error}");
        let _bob = throttle.open_stream("bob", now).unwrap();
        drop(first);
        throttle.open_stream("alice", now).unwrap();
        // A rate of 0 is off.
        for _ in 0..1000 {
            throttle.call("alice", now).unwrap();
        }
    }

    proptest! {
        /// Over any schedule of calls, a principal is admitted at most burst + rate × elapsed
        /// times, and a principal that waits long enough between calls is never refused.
        #[test]
        fn admitted_calls_never_exceed_burst_plus_rate(
            gaps_ms in prop::collection::vec(0u64..200, 1..300),
            rate in 1.0f64..100.0,
            burst in 1.0f64..50.0,
        ) {
            let throttle = Throttle::new(limits(rate, burst, 1));
            let start = Instant::now();
            let mut now = start;
            let mut admitted = 0u32;
            for gap in &gaps_ms {
                now += Duration::from_millis(*gap);
                if throttle.call("p", now).is_ok() {
                    admitted += 1;
                }
            }
            let elapsed = now.duration_since(start).as_secs_f64();
            prop_assert!(f64::from(admitted) <= burst + rate * elapsed + 1e-6);
            let patient = Throttle::new(limits(rate, burst, 1));
            let spacing = Duration::from_secs_f64(1.0 / rate);
            let mut now = start;
            for _ in 0..gaps_ms.len() {
                now += spacing;
                prop_assert!(patient.call("p", now).is_ok());
            }
        }
    }
}
