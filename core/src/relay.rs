//! The outbox relay: carries the event log's events (user and session
//! events, each written in the same transaction as its change) to the
//! activity log, its first subscriber, in order and in batches. The relay
//! reads the activity log's own queue of the log, so its delivery state is
//! its own: another subscriber's neither waits for it nor is moved by it.
//!
//! Delivery is at least once and recording is idempotent by event id, so the
//! result is exactly once: a batch is marked delivered only after the
//! activity log has it, and a batch whose marking fails is recorded again
//! later and recognised as already there. While the activity log is away the
//! relay waits with exponential backoff and the events stay in the outbox.
//!
//! An activity log that is there but refuses a batch (a document it will
//! not take) is not an outage: the batch is delivered again event by event,
//! the events it takes are marked delivered, and each refused one counts an
//! attempt; refused `max_attempts` times, it is quarantined (`hub outbox
//! retry` puts it back). Later events of a refused event's stream (its
//! session, or for a user event its user) wait in the outbox behind it, so
//! each stream's events arrive in order.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

use crate::error::{Error, ErrorKind};
use crate::ports::{ActivityLog, ClaimedEvents, Clock, Outbox};

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
    /// Times the activity log may refuse one event before it is quarantined.
    pub max_attempts: u32,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            idle_poll: Duration::from_millis(100),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            keep_delivered: Duration::from_secs(7 * 24 * 60 * 60),
            max_attempts: 5,
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
        let recorded = match self.log.record_batch(claimed.events(), delivered_at).await {
            Ok(recorded) => recorded,
            Err(e) if e.kind() == ErrorKind::Unavailable => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, count, "the activity log refused a batch; delivering it event by event");
                return self.deliver_singly(claimed, delivered_at).await;
            }
        };
        let oldest = claimed
            .events()
            .iter()
            .map(|p| p.event.at())
            .min()
            .unwrap_or(delivered_at);
        claimed.delivered(delivered_at).await?;
        let lag = Duration::try_from(self.clock.now() - oldest).unwrap_or_default();
        self.status
            .succeeded(recorded, u64::try_from(count).unwrap_or(u64::MAX), lag);
        tracing::debug!(count, recorded, ?lag, "relay delivered a batch");
        Ok(count)
    }

    /// A batch the activity log refused, delivered one event at a time: the
    /// events it takes are delivered, the refused ones count an attempt
    /// (and are quarantined at `max_attempts`), later events of a refused
    /// one's session stay behind it, and an outage midway leaves the rest
    /// pending. Fails while a refused event is still waiting for its next
    /// attempt, so the relay backs off before trying it again.
    async fn deliver_singly(
        &self,
        claimed: Box<dyn ClaimedEvents>,
        delivered_at: OffsetDateTime,
    ) -> Result<usize, Error> {
        let mut delivered = Vec::new();
        let mut refused = Vec::new();
        let mut held = HashSet::new();
        let (mut recorded, mut oldest) = (0, delivered_at);
        let mut outage = None;
        let mut last_refusal = None;
        for pending in claimed.events() {
            let event = &pending.event;
            if held.contains(&event.stream()) {
                continue;
            }
            match self
                .log
                .record_batch(std::slice::from_ref(pending), delivered_at)
                .await
            {
                Ok(new) => {
                    recorded += new;
                    oldest = oldest.min(event.at());
                    delivered.push(event.id());
                }
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    outage = Some(e);
                    break;
                }
                Err(e) => {
                    let cause = e
                        .internal_cause()
                        .map_or_else(|| e.to_string(), |cause| format!("{e}: {cause}"));
                    tracing::warn!(event = %event.id(), event_type = event.type_name(), stream = %event.stream(), error = %cause, "the activity log refused an event");
                    refused.push((event.id(), format!("refused by the activity log: {cause}")));
                    held.insert(event.stream());
                    last_refusal = Some(e);
                }
            }
        }
        let quarantined = claimed
            .settle(
                &delivered,
                &refused,
                delivered_at,
                self.settings.max_attempts,
            )
            .await?;
        if quarantined > 0 {
            tracing::error!(
                quarantined,
                "outbox events the activity log kept refusing were quarantined; fix the cause, then `hub outbox retry`"
            );
        }
        if !delivered.is_empty() {
            let lag = Duration::try_from(self.clock.now() - oldest).unwrap_or_default();
            let count = u64::try_from(delivered.len()).unwrap_or(u64::MAX);
            self.status.succeeded(recorded, count, lag);
        }
        if let Some(outage) = outage {
            return Err(outage);
        }
        match last_refusal {
            Some(refusal) if quarantined < refused.len() as u64 => Err(refusal),
            _ => Ok(delivered.len()),
        }
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
    use crate::ErrorCode;
    use crate::ports::{Backlog, PendingEvent};
    use crate::session::{ClientInfo, Session, SessionEvent, SessionEventKind, SessionId};
    use crate::user::UserId;
    use async_trait::async_trait;
    use uuid::Uuid;

    /// What a settled claim was told.
    #[derive(Debug, Default)]
    struct Settled {
        delivered: Vec<Uuid>,
        refused: Vec<Uuid>,
    }

    struct Claim(Vec<PendingEvent>, Arc<Mutex<Settled>>);

    #[async_trait]
    impl ClaimedEvents for Claim {
        fn events(&self) -> &[PendingEvent] {
            &self.0
        }
        async fn delivered(self: Box<Self>, _: OffsetDateTime) -> Result<(), Error> {
            self.1.lock().unwrap().delivered = self.0.iter().map(|p| p.event.id()).collect();
            Ok(())
        }
        async fn settle(
            self: Box<Self>,
            delivered: &[Uuid],
            refused: &[(Uuid, String)],
            _: OffsetDateTime,
            _: u32,
        ) -> Result<u64, Error> {
            let mut settled = self.1.lock().unwrap();
            settled.delivered = delivered.to_vec();
            settled.refused = refused.iter().map(|(id, _)| *id).collect();
            Ok(0)
        }
    }

    struct OneClaim(Mutex<Option<Claim>>);

    #[async_trait]
    impl Outbox for OneClaim {
        async fn claim(&self, _: u32) -> Result<Box<dyn ClaimedEvents>, Error> {
            let claim = self.0.lock().unwrap().take().unwrap();
            Ok(Box::new(claim))
        }
        async fn backlog(&self) -> Result<Backlog, Error> {
            Ok(Backlog::default())
        }
        async fn prune(&self, _: OffsetDateTime) -> Result<u64, Error> {
            Ok(0)
        }
        async fn retry_quarantined(&self) -> Result<u64, Error> {
            Ok(0)
        }
    }

    /// Refuses any batch holding `poison`; takes everything else.
    struct Refusing {
        poison: Uuid,
    }

    #[async_trait]
    impl ActivityLog for Refusing {
        async fn record(
            &self,
            event: &crate::events::DomainEvent,
            _: Option<&crate::user::Username>,
        ) -> Result<bool, Error> {
            if event.id() == self.poison {
                return Err(Error::internal("document failed validation"));
            }
            Ok(true)
        }
        async fn last_connection(
            &self,
            _: UserId,
        ) -> Result<Option<crate::ports::LastConnection>, Error> {
            Ok(None)
        }
    }

    fn event(session: &Session, kind: SessionEventKind) -> PendingEvent {
        PendingEvent {
            position: 0,
            event: SessionEvent::new(kind, session, OffsetDateTime::now_utc()).into(),
            username: None,
        }
    }

    /// A refused event holds back the later events of its session (they
    /// stay pending, behind it), while other sessions' events go through.
    #[tokio::test]
    async fn a_refused_event_holds_back_its_session_only() {
        let session = |id| Session {
            id,
            user_id: UserId::generate(),
            created_at: OffsetDateTime::now_utc(),
            expires_at: OffsetDateTime::now_utc(),
            last_seen_at: OffsetDateTime::now_utc(),
            revoked_at: None,
            client: ClientInfo::default(),
        };
        let (a, b) = (
            session(SessionId::generate()),
            session(SessionId::generate()),
        );
        let events = vec![
            event(&a, SessionEventKind::Opened),
            event(&b, SessionEventKind::Opened),
            event(&a, SessionEventKind::Touched),
            event(&b, SessionEventKind::Revoked),
        ];
        let ids: Vec<Uuid> = events.iter().map(|p| p.event.id()).collect();
        let settled = Arc::new(Mutex::new(Settled::default()));
        let relay = Relay::new(
            Arc::new(OneClaim(Mutex::new(Some(Claim(
                events,
                Arc::clone(&settled),
            ))))),
            Arc::new(Refusing { poison: ids[0] }),
            Arc::new(crate::ports::SystemClock),
            RelaySettings::default(),
        );
        let refused = relay.deliver_batch().await.unwrap_err();
        assert_eq!(
            refused.code(),
            ErrorCode::Internal,
            "it backs off before the next attempt"
        );
        let settled = settled.lock().unwrap();
        assert_eq!(settled.refused, vec![ids[0]]);
        assert_eq!(
            settled.delivered,
            vec![ids[1], ids[3]],
            "a's touch waits behind its opening"
        );
    }

    /// The whole way in memory: the events user and session changes write
    /// to the in-memory log reach the in-memory activity log exactly once,
    /// through an outage, a relay that died after recording a batch but
    /// before marking it, and an event refused until it is quarantined,
    /// then put back and delivered.
    #[tokio::test]
    async fn user_and_session_events_reach_the_activity_log_exactly_once_in_memory() {
        use crate::ports::memory::{InMemoryActivityLog, InMemorySessions, InMemoryUsers};
        use crate::ports::{NewUser, SessionRepository, UserRepository};
        use crate::user::{Email, Password, Role, Username};

        let users = Arc::new(InMemoryUsers::default());
        let alice = Username::parse("alice").unwrap();
        let password = Password::parse("correct horse", &alice).unwrap();
        let user = users
            .insert(NewUser {
                id: UserId::generate(),
                username: alice.clone(),
                email: Email::parse("alice@example.com").unwrap(),
                password_hash: crate::PasswordHasher::insecure_for_tests(1)
                    .hash(&password)
                    .unwrap(),
                role: Role::User,
                created_at: OffsetDateTime::now_utc(),
                created_by: None,
            })
            .await
            .unwrap()
            .id;
        let sessions = InMemorySessions::with_users(users);
        let start = OffsetDateTime::now_utc();
        let at = |seconds| start + time::Duration::seconds(seconds);
        let mut opened = Vec::new();
        for i in 0..4 {
            let session = Session {
                id: SessionId::generate(),
                user_id: user,
                created_at: at(i),
                expires_at: at(3600),
                last_seen_at: at(i),
                revoked_at: None,
                client: ClientInfo::default(),
            };
            let event = SessionEvent::new(SessionEventKind::Opened, &session, at(i));
            sessions.open(&session, &event).await.unwrap();
            opened.push(session);
        }
        let mut touched = opened[3].clone();
        touched.last_seen_at = at(10);
        let touch = SessionEvent::new(SessionEventKind::Touched, &touched, at(10));
        assert!(sessions.touch(&touched, &touch).await.unwrap());
        assert!(
            sessions
                .revoke(opened[0].id, at(11), "logout")
                .await
                .unwrap()
        );
        // alice's creation, four openings, a touch, a revocation.
        let ids: Vec<Uuid> = sessions.all_events().iter().map(|e| e.id()).collect();
        assert_eq!(ids.len(), 7);

        let outbox = Arc::new(sessions.outbox());
        let log = Arc::new(InMemoryActivityLog::default());
        let relay = Relay::new(
            outbox.clone(),
            log.clone(),
            Arc::new(crate::ports::SystemClock),
            RelaySettings {
                batch_size: 5,
                max_attempts: 2,
                ..RelaySettings::default()
            },
        );

        // The activity log is away: nothing moves, nothing is lost.
        log.set_away(true);
        let away = relay.deliver_batch().await.unwrap_err();
        assert_eq!(away.code(), ErrorCode::Unavailable);
        assert_eq!(outbox.backlog().await.unwrap().pending, 7);
        log.set_away(false);
        assert!(log.events().is_empty());

        // A relay recorded four events, then died before marking them.
        let claimed = outbox.claim(4).await.unwrap();
        log.record_batch(claimed.events(), OffsetDateTime::now_utc())
            .await
            .unwrap();
        drop(claimed);

        // The log refuses the fourth opening: its session's touch waits
        // behind it, the others go, and the second refusal quarantines it.
        log.refuse(ids[4]);
        let refused = relay.deliver_batch().await.unwrap_err();
        assert_ne!(refused.code(), ErrorCode::Unavailable, "{refused}");
        assert_eq!(relay.deliver_batch().await.unwrap(), 1, "the revocation");
        let backlog = outbox.backlog().await.unwrap();
        assert_eq!((backlog.pending, backlog.quarantined), (1, 1));
        assert_eq!(relay.deliver_batch().await.unwrap(), 1, "the touch");
        assert_eq!(relay.deliver_batch().await.unwrap(), 0);

        // Fixed, put back, delivered.
        log.accept_all();
        assert_eq!(outbox.retry_quarantined().await.unwrap(), 1);
        assert_eq!(relay.deliver_batch().await.unwrap(), 1);
        assert_eq!(outbox.backlog().await.unwrap(), Backlog::default());

        let mut recorded: Vec<Uuid> = log.events().iter().map(|r| r.event.id()).collect();
        recorded.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(recorded, expected, "each event exactly once");
        let last = log.last_connection(user).await.unwrap().unwrap();
        assert_eq!(
            (last.session_id, last.at, last.username),
            (opened[3].id, at(10), Some(alice)),
            "the newest opening or touch, not the late opening"
        );
        assert!(
            relay.status().snapshot().repeated >= 3,
            "the dead relay's batch"
        );
    }

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
