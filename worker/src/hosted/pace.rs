//! A hosted model's request budget: requests per minute, spaced evenly, so no minute ever
//! sees more than the budget and no burst trips the service's own limiter.

use std::time::Duration;

use tokio::time::Instant;

pub struct Pace {
    interval: Duration,
    next: tokio::sync::Mutex<Option<Instant>>,
}

impl Pace {
    pub fn per_minute(requests: u32) -> Pace {
        Pace {
            interval: Duration::from_secs(60) / requests.max(1),
            next: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits for this request's turn: at least `interval` after the one before was let go.
    /// Turns are taken one at a time and counted from when each was actually let go, so a
    /// busy machine waking a waiter late never lets the next one in early.
    pub async fn wait(&self) {
        let mut next = self.next.lock().await;
        if let Some(at) = *next {
            tokio::time::sleep_until(at).await;
        }
        *next = Some(Instant::now() + self.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_spaced_by_the_budget() {
        let pace = Pace::per_minute(1200);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            pace.wait().await;
            at.push(start.elapsed());
        }
        assert!(at[0] < Duration::from_millis(20), "{at:?}");
        for pair in at.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(49), "{at:?}");
        }
    }
}
