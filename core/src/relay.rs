//! The outbox relay: carries session events from the source of truth (the
//! outbox, written in the same transaction as each session change) to the
//! activity log, in order and in batches.
//!
//! Delivery is at least once and recording is idempotent by event id, so the
//! result is exactly once: a batch is marked delivered only after the
//! activity log has it, and a batch whose marking fails is recorded again
//! later and recognised as already there. While the activity log is away the
//! relay waits with exponential backoff and the events stay in the outbox.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

use crate::error::Error;
use crate::ports::{ActivityLog, Clock, Outbox};

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Events claimed and delivered per batch.
    pub batch_size: u32,
    /// How often an empty outbox is looked at again.
    pub idle_poll: Duration,
    /// The first wait after a failure; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Delivered events older than this are deleted from the outbox.
    pub keep_delivered: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            idle_poll: Duration::from_millis(100),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            keep_delivered: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

/// What the relay has done, for metrics and readiness details. Shared by
/// every clone of one relay's status.
#[derive(Debug, Default)]
pub struct RelayStatus {
    delivered: AtomicU64,
    repeated: AtomicU64,
    failures: AtomicU64,
    batches: AtomicU64,
    last_lag_micros: AtomicU64,
    failing: AtomicBool,
    last_error: Mutex<Option<RelayError>>,
}

/// The last failure as operators may see it: its stable code and when. The
/// cause (a host name, a driver's message) goes to the log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayError {
    pub code: crate::ErrorCode,
    pub at: OffsetDateTime,
}

/// A consistent-enough reading of [`RelayStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySnapshot {
    /// Events newly recorded in the activity log.
    pub delivered: u64,
    /// Events the activity log already had (a repeated delivery).
    pub repeated: u64,
    /// Delivery attempts that failed.
    pub failures: u64,
    pub batches: u64,
    /// The largest lag (event time to delivery) in the last batch.
    pub last_lag: Duration,
    /// Whether the last attempt failed.
    pub failing: bool,
    pub last_error: Option<RelayError>,
}

impl RelayStatus {
    pub fn snapshot(&self) -> RelaySnapshot {
        RelaySnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            repeated: self.repeated.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            last_lag: Duration::from_micros(self.last_lag_micros.load(Ordering::Relaxed)),
            failing: self.failing.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| *e),
        }
    }

    fn succeeded(&self, recorded: u64, total: u64, lag: Duration) {
        self.delivered.fetch_add(recorded, Ordering::Relaxed);
        self.repeated
            .fetch_add(total.saturating_sub(recorded), Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.last_lag_micros.store(
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.recovered();
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("relay delivering again");
            if let Ok(mut last) = self.last_error.lock() {
                *last = None;
            }
        }
    }

    fn failed(&self, error: &Error, at: OffsetDateTime) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        // The first failure of a run is a warning; the retries that follow
        // would only repeat it.
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %error, "relay cannot deliver; retrying with backoff");
        } else {
            tracing::debug!(error = %error, "relay still cannot deliver");
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(RelayError {
                code: error.code(),
                at,
            });
        }
    }
}

/// One relay: any number may run at once against the same outbox.
#[derive(Clone)]
pub struct Relay {
    outbox: Arc<dyn Outbox>,
    log: Arc<dyn ActivityLog>,
    clock: Arc<dyn Clock>,
    settings: RelaySettings,
    status: Arc<RelayStatus>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .field("status", &self.status.snapshot())
            .finish_non_exhaustive()
    }
}

/// How long to wait before the next attempt: the backoff with up to half of
/// it taken off at random, so relays that failed together do not retry together.
fn jittered(backoff: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let fraction = match getrandom::fill(&mut byte) {
        Ok(()) => f64::from(byte[0]) / 255.0,
        Err(_) => 0.0,
    };
    backoff.mul_f64(1.0 - fraction / 2.0)
}

impl Relay {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        log: Arc<dyn ActivityLog>,
        clock: Arc<dyn Clock>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            outbox,
            log,
            clock,
            settings,
            status: Arc::default(),
        }
    }

    pub fn status(&self) -> Arc<RelayStatus> {
        Arc::clone(&self.status)
    }

    pub fn outbox(&self) -> &Arc<dyn Outbox> {
        &self.outbox
    }

    /// Claims one batch, records it and marks it delivered; how many events
    /// it held. On any failure the batch goes back to the outbox.
    pub async fn deliver_batch(&self) -> Result<usize, Error> {
        let claimed = self.outbox.claim(self.settings.batch_size).await?;
        let count = claimed.events().len();
        if count == 0 {
            return Ok(0);
        }
        let delivered_at = self.clock.now();
        let recorded = self
            .log
            .record_batch(claimed.events(), delivered_at)
            .await?;
        let oldest = claimed
            .events()
            .iter()
            .map(|p| p.event.at)
            .min()
            .unwrap_or(delivered_at);
        claimed.delivered(delivered_at).await?;
        let lag = Duration::try_from(self.clock.now() - oldest).unwrap_or_default();
        self.status
            .succeeded(recorded, u64::try_from(count).unwrap_or(u64::MAX), lag);
        tracing::debug!(count, recorded, ?lag, "relay delivered a batch");
        Ok(count)
    }

    /// Delivers until `stop` completes: full batches back to back, then a
    /// look every `idle_poll`, and backoff while anything fails. Delivered
    /// events past their keeping time are pruned about once a minute.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut backoff = self.settings.min_backoff;
        let mut next_prune = self.clock.now();
        tracing::info!(batch_size = self.settings.batch_size, "relay started");
        loop {
            let pause = match self.deliver_batch().await {
                Ok(count) => {
                    backoff = self.settings.min_backoff;
                    if count as u64 >= u64::from(self.settings.batch_size) {
                        Duration::ZERO
                    } else {
                        self.status.recovered();
                        self.settings.idle_poll
                    }
                }
                Err(error) => {
                    self.status.failed(&error, self.clock.now());
                    let pause = jittered(backoff);
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    pause
                }
            };
            if self.clock.now() >= next_prune {
                next_prune = self.clock.now() + time::Duration::minutes(1);
                self.prune().await;
            }
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("relay stopped");
    }

    async fn prune(&self) {
        let Ok(keep) = time::Duration::try_from(self.settings.keep_delivered) else {
            return;
        };
        let before: OffsetDateTime = self.clock.now() - keep;
        match self.outbox.prune(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "delivered outbox events pruned"),
            Err(e) => tracing::debug!(error = %e, "outbox pruning skipped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_takes_at_most_half_off() {
        for _ in 0..100 {
            let pause = jittered(Duration::from_secs(2));
            assert!(pause >= Duration::from_secs(1) && pause <= Duration::from_secs(2));
        }
    }

    #[test]
    fn a_failure_then_a_success_clears_the_error() {
        let status = RelayStatus::default();
        status.failed(
            &Error::unavailable("mongo at 10.0.0.5 refused"),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert!(status.snapshot().failing);
        assert_eq!(
            status.snapshot().last_error.map(|e| e.code),
            Some(crate::ErrorCode::Unavailable),
            "the code, never the cause's text"
        );
        status.succeeded(3, 4, Duration::from_millis(5));
        let snapshot = status.snapshot();
        assert!(!snapshot.failing);
        assert_eq!(snapshot.last_error, None);
        assert_eq!((snapshot.delivered, snapshot.repeated), (3, 1));
        assert_eq!(snapshot.failures, 1);
    }
}
