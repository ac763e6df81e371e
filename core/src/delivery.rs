//! Webhook delivery: each enabled endpoint's queue of the event log, POSTed
//! to its URL and signed, by one worker per endpoint.
//!
//! - **At least once, same id:** an event is marked delivered only after a
//!   2xx answer; until then it stays in the endpoint's queue and is sent
//!   again, with the same `webhook-id` (its event id).
//! - **In order per user:** a claimed batch is split by user (an event of no
//!   user stands alone); each user's events go one after another, users side
//!   by side, at most `concurrency` at once. A user whose event failed gets
//!   none of its later events until that one is accepted. Only one instance
//!   delivers an endpoint's queue at a time (the queue's claim says so).
//! - **Floods no one:** a failure backs the endpoint off exponentially, with
//!   jitter, up to `max_backoff`; an endpoint failing for `disable_after`
//!   (a day), or answering 410 Gone, is disabled, which its
//!   `webhook.disabled` event, the console, `hub webhooks list` and the
//!   metrics show.
//! - **Never slows a request:** delivery runs here, in the background, from
//!   the log the request's transaction already wrote.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use uuid::Uuid;

use crate::error::Error;
use crate::events::LoggedEvent;
use crate::ports::{Clock, PendingEvent};
use crate::webhooks::{
    Delivery, EndpointId, SigningKeys, WebhookChange, WebhookEndpoints, WebhookEvent,
    WebhookTransport,
};

/// The most one round may take: it stops starting deliveries then. Its
/// queue's lease (hub-store's `DELIVERY_LEASE`, 60 s) covers this plus one
/// delivery's timeout (`webhooks.timeout_ms` is at most 25 s).
pub const ROUND_BUDGET: Duration = Duration::from_secs(30);

/// How the dispatcher paces itself.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Events claimed per round, per endpoint.
    pub batch_size: u32,
    /// Users' streams delivered side by side, per endpoint.
    pub concurrency: usize,
    /// How often an empty queue is looked at again.
    pub idle_poll: Duration,
    /// The first wait after a failure; it doubles (with jitter) up to
    /// `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// An endpoint failing this long is disabled.
    pub disable_after: Duration,
    /// How often the list of endpoints is read again.
    pub refresh: Duration,
    /// Endpoints delivering at the same time (each holds a database
    /// connection while it delivers a batch).
    pub max_busy_endpoints: usize,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            concurrency: 8,
            idle_poll: Duration::from_millis(50),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            disable_after: Duration::from_secs(24 * 60 * 60),
            refresh: Duration::from_secs(2),
            max_busy_endpoints: 4,
        }
    }
}

/// What delivery has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct DispatchStatus {
    delivered: AtomicU64,
    failed: AtomicU64,
    disabled: AtomicU64,
    last_lag_micros: AtomicU64,
}

/// A reading of [`DispatchStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchSnapshot {
    /// Deliveries a receiver accepted.
    pub delivered: u64,
    /// Deliveries that failed (and will be retried).
    pub failed: u64,
    /// Endpoints this process disabled.
    pub disabled: u64,
    /// Event time to acceptance, of the last accepted delivery.
    pub last_lag: Duration,
}

impl DispatchStatus {
    pub fn snapshot(&self) -> DispatchSnapshot {
        DispatchSnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            disabled: self.disabled.load(Ordering::Relaxed),
            last_lag: Duration::from_micros(self.last_lag_micros.load(Ordering::Relaxed)),
        }
    }
}

/// Delivers every enabled endpoint's queue.
#[derive(Clone)]
pub struct Dispatcher {
    endpoints: Arc<dyn WebhookEndpoints>,
    transport: Arc<dyn WebhookTransport>,
    clock: Arc<dyn Clock>,
    settings: DispatchSettings,
    status: Arc<DispatchStatus>,
    busy: Arc<Semaphore>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The body of one delivery: the event as every reader of the log shows
/// it, with Standard Webhooks' `timestamp` beside `occurred_at`.
pub fn body(event: &LoggedEvent) -> Vec<u8> {
    let mut shown = event.to_json();
    if let Some(object) = shown.as_object_mut() {
        let at = object.get("occurred_at").cloned().unwrap_or_default();
        object.insert("timestamp".to_owned(), at);
    }
    serde_json::to_vec(&shown).unwrap_or_default()
}

/// How one user's run of a batch went.
struct StreamOutcome {
    key: Uuid,
    delivered: Vec<Uuid>,
    /// Why the first undelivered event failed.
    failure: Option<String>,
    gone: bool,
}

impl Dispatcher {
    pub fn new(
        endpoints: Arc<dyn WebhookEndpoints>,
        transport: Arc<dyn WebhookTransport>,
        clock: Arc<dyn Clock>,
        settings: DispatchSettings,
    ) -> Self {
        let busy = Arc::new(Semaphore::new(settings.max_busy_endpoints.max(1)));
        Self {
            endpoints,
            transport,
            clock,
            settings,
            status: Arc::new(DispatchStatus::default()),
            busy,
        }
    }

    pub fn status(&self) -> Arc<DispatchStatus> {
        Arc::clone(&self.status)
    }

    /// Runs until `stop` resolves: one worker per enabled endpoint, started
    /// and stopped as endpoints are added, deleted, disabled and enabled.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        // Each worker's stop flag: a worker is asked to stop, never aborted,
        // so it never leaves a database call half done.
        let mut workers: HashMap<EndpointId, (AbortHandle, Arc<AtomicBool>)> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut listing_failed = false;
        loop {
            match self.endpoints.list().await {
                Ok(endpoints) => {
                    if std::mem::take(&mut listing_failed) {
                        tracing::info!("webhook endpoints readable again");
                    }
                    let enabled: Vec<EndpointId> = endpoints
                        .iter()
                        .filter(|e| e.disabled_at.is_none())
                        .map(|e| e.id)
                        .collect();
                    workers.retain(|id, (handle, stop)| {
                        let keep = enabled.contains(id) && !handle.is_finished();
                        if !keep {
                            stop.store(true, Ordering::Relaxed);
                        }
                        keep || !handle.is_finished()
                    });
                    for id in enabled {
                        if let std::collections::hash_map::Entry::Vacant(slot) = workers.entry(id) {
                            let (worker, stop) = (self.clone(), Arc::new(AtomicBool::new(false)));
                            let flag = Arc::clone(&stop);
                            let handle = tasks.spawn(async move { worker.deliver(id, flag).await });
                            slot.insert((handle, stop));
                        }
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut listing_failed, true) {
                        tracing::warn!(error = %e, "cannot read the webhook endpoints; retrying");
                    }
                }
            }
            // Reap finished workers so the set does not grow.
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(self.settings.refresh) => {}
            }
        }
        // Asked to stop, a worker ends its round (and gives its lease back)
        // first; one still waiting after this is ended where it sleeps or
        // waits, its lease left to expire.
        for (_, stop) in workers.values() {
            stop.store(true, Ordering::Relaxed);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
    }

    /// One endpoint's worker: returns when the endpoint is gone or disabled.
    async fn deliver(self, id: EndpointId, stop: Arc<AtomicBool>) {
        let queue = self.endpoints.queue(id);
        let mut backoff = self.settings.min_backoff;
        let mut blocked = Blocked::default();
        // Unknown at start (an earlier process may have left failing_since
        // set): the first clean round clears it.
        let mut failing = true;
        let mut warned = false;
        let mut target = Target::default();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let round = match target.current(&*self.endpoints, id, self.clock.now()).await {
                Ok(Some((keys, url))) => self.round(&*queue, keys, url, &mut blocked).await,
                Ok(None) => Ok(Round::Stopped),
                Err(e) => Err(e),
            };
            let pause = match round {
                Ok(Round::Idle) => self.settings.idle_poll,
                Ok(Round::Waiting(until)) => until
                    .saturating_duration_since(Instant::now())
                    .min(self.settings.max_backoff)
                    .max(self.settings.idle_poll),
                Ok(Round::Delivered { failure: None }) if blocked.is_empty() => {
                    if std::mem::take(&mut failing) {
                        backoff = self.settings.min_backoff;
                        if let Err(e) = self.endpoints.recovered(id).await {
                            tracing::warn!(endpoint = %id, error = %e, "cannot record a webhook endpoint's recovery");
                        }
                        if std::mem::take(&mut warned) {
                            tracing::info!(endpoint = %id, "webhook endpoint accepting deliveries again");
                        }
                    }
                    Duration::ZERO
                }
                // Some users' events went, another's was refused: the others
                // go on at once, the refused user's after its own backoff.
                Ok(Round::Delivered { failure }) => {
                    if let Some(reason) = failure {
                        if !std::mem::replace(&mut warned, true) {
                            tracing::warn!(endpoint = %id, reason = %reason, "a webhook delivery was refused; that user's events wait for their retry, the others go on");
                        }
                        failing = true;
                        if self.record_failure(id, &reason).await {
                            return;
                        }
                    }
                    Duration::ZERO
                }
                Ok(Round::Stopped) => return,
                Ok(Round::Gone) => {
                    self.disable(id, "the receiver answered 410 Gone").await;
                    return;
                }
                Ok(Round::Failed(reason)) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(endpoint = %id, reason = %reason, "webhook delivery failing; retrying with backoff");
                    }
                    failing = true;
                    if self.record_failure(id, &reason).await {
                        return;
                    }
                    let pause = jittered(backoff);
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    pause
                }
                Err(e) => {
                    tracing::warn!(endpoint = %id, error = %e, "webhook queue unreadable; retrying");
                    jittered(self.settings.min_backoff.max(Duration::from_millis(100)))
                }
            };
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Records a failure; true when the endpoint has now been failing for
    /// too long and was disabled.
    async fn record_failure(&self, id: EndpointId, reason: &str) -> bool {
        let now = self.clock.now();
        let since = match self.endpoints.failed(id, now, reason).await {
            Ok(since) => since,
            Err(e) => {
                tracing::warn!(endpoint = %id, error = %e, "cannot record a webhook failure");
                return false;
            }
        };
        let failing_for = Duration::try_from(now - since).unwrap_or_default();
        if failing_for < self.settings.disable_after {
            return false;
        }
        let why = format!(
            "deliveries failed for {} hours; last: {reason}",
            failing_for.as_secs() / 3600
        );
        self.disable(id, &why).await
    }

    async fn disable(&self, id: EndpointId, why: &str) -> bool {
        let url = match self.endpoints.get(id).await {
            Ok(Some(endpoint)) => endpoint.url,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(endpoint = %id, error = %e, "cannot disable a webhook endpoint");
                return false;
            }
        };
        let event = WebhookEvent::new(
            id,
            None,
            self.clock.now(),
            WebhookChange::Disabled {
                url: crate::webhooks::origin(&url),
                reason: why.to_owned(),
            },
        );
        match self.endpoints.disable(id, why, &event).await {
            Ok(()) => {
                self.status.disabled.fetch_add(1, Ordering::Relaxed);
                tracing::error!(endpoint = %id, origin = %crate::webhooks::origin(&url), reason = %why, "webhook endpoint disabled; `hub webhooks enable` resumes it");
                true
            }
            Err(e) => {
                tracing::warn!(endpoint = %id, error = %e, "cannot disable a webhook endpoint");
                false
            }
        }
    }

    /// One claim of the queue, delivered within [`ROUND_BUDGET`]. Users
    /// whose earlier event was refused are skipped until their own retry
    /// time (their events stay queued, in order).
    async fn round(
        &self,
        queue: &dyn crate::webhooks::WebhookQueue,
        keys: Arc<SigningKeys>,
        url: Arc<str>,
        blocked: &mut Blocked,
    ) -> Result<Round, Error> {
        let Ok(_permit) = self.busy.acquire().await else {
            return Ok(Round::Stopped);
        };
        let claim = queue
            .claim(self.settings.batch_size, &blocked.waiting(Instant::now()))
            .await?;
        if claim.events().is_empty() {
            // Only waiting users' events, if any: nothing to do before the
            // first of them may be tried again.
            return Ok(match blocked.next(Instant::now()) {
                Some(until) => Round::Waiting(until),
                None => Round::Idle,
            });
        }
        let now = Instant::now();
        let mut streams: Vec<(Uuid, Vec<PendingEvent>)> = Vec::new();
        let mut waiting_until: Option<Instant> = None;
        for pending in claim.events() {
            let key = stream_of(pending);
            if let Some(until) = blocked.until(key, now) {
                waiting_until = Some(waiting_until.map_or(until, |w| w.min(until)));
                continue;
            }
            match streams.iter_mut().find(|(k, _)| *k == key) {
                Some((_, events)) => events.push(pending.clone()),
                None => streams.push((key, vec![pending.clone()])),
            }
        }
        if streams.is_empty() {
            claim.settle(&[], &[], self.clock.now(), u32::MAX).await?;
            return Ok(Round::Waiting(waiting_until.unwrap_or(now)));
        }
        let deadline = now + ROUND_BUDGET;
        let mut running = JoinSet::new();
        let mut outcomes = Vec::with_capacity(streams.len());
        for (key, events) in streams {
            if running.len() >= self.settings.concurrency.max(1)
                && let Some(Ok(outcome)) = running.join_next().await
            {
                outcomes.push(outcome);
            }
            let (this, keys, url) = (self.clone(), Arc::clone(&keys), Arc::clone(&url));
            running.spawn(async move { this.stream(key, &url, &keys, events, deadline).await });
        }
        while let Some(done) = running.join_next().await {
            if let Ok(outcome) = done {
                outcomes.push(outcome);
            }
        }
        let delivered: Vec<Uuid> = outcomes.iter().flat_map(|o| o.delivered.clone()).collect();
        let gone = outcomes.iter().any(|o| o.gone);
        let failure = outcomes.iter().find_map(|o| o.failure.clone());
        let failed_users = outcomes.iter().filter(|o| o.failure.is_some()).count();
        for outcome in &outcomes {
            match &outcome.failure {
                Some(_) => blocked.refused(outcome.key, &self.settings),
                None => blocked.accepted(outcome.key),
            }
        }
        let at = self.clock.now();
        if delivered.len() == claim.events().len() {
            claim.delivered(at).await?;
        } else {
            claim.settle(&delivered, &[], at, u32::MAX).await?;
        }
        if gone {
            return Ok(Round::Gone);
        }
        Ok(match failure {
            // Every user of the batch refused looks like the receiver's
            // trouble; one user refused is that user's (the next claim
            // leaves them out).
            Some(reason) if delivered.is_empty() && failed_users > 1 => Round::Failed(reason),
            failure => Round::Delivered { failure },
        })
    }

    /// One user's events of a batch, in order, stopping at the first that
    /// is not accepted, or at the round's deadline.
    async fn stream(
        &self,
        key: Uuid,
        url: &str,
        keys: &SigningKeys,
        events: Vec<PendingEvent>,
        deadline: Instant,
    ) -> StreamOutcome {
        let mut outcome = StreamOutcome {
            key,
            delivered: Vec::with_capacity(events.len()),
            failure: None,
            gone: false,
        };
        for pending in events {
            if Instant::now() >= deadline {
                break;
            }
            let logged = LoggedEvent {
                position: pending.position,
                event: pending.event,
            };
            let body = body(&logged);
            let id = logged.event.id().to_string();
            let timestamp = self.clock.now().unix_timestamp();
            let signature = match keys.header(&id, timestamp, &body) {
                Ok(signature) => signature,
                Err(e) => {
                    outcome.failure = Some(e.to_string());
                    break;
                }
            };
            let headers = [
                ("webhook-id", id),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
                ("content-type", "application/json".to_owned()),
            ];
            match self.transport.post(url, &headers, &body).await {
                Delivery::Accepted => {
                    self.status.delivered.fetch_add(1, Ordering::Relaxed);
                    let lag = Duration::try_from(self.clock.now() - logged.event.at())
                        .unwrap_or_default();
                    self.status.last_lag_micros.store(
                        u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    outcome.delivered.push(logged.event.id());
                }
                Delivery::Gone => {
                    outcome.gone = true;
                    break;
                }
                Delivery::Failed(reason) => {
                    self.status.failed.fetch_add(1, Ordering::Relaxed);
                    outcome.failure = Some(reason);
                    break;
                }
            }
        }
        outcome
    }
}

/// What must arrive in order at a receiver: a user's events (their own and
/// their sessions'); an event of no user stands alone.
fn stream_of(pending: &PendingEvent) -> Uuid {
    pending
        .event
        .user_id()
        .map_or(pending.event.stream(), |user| user.as_uuid())
}

/// Users whose last event was refused, and when each may be tried again:
/// one user's refused event holds back that user's later events only.
#[derive(Debug, Default)]
struct Blocked(HashMap<Uuid, (Instant, Duration)>);

impl Blocked {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// When `key` may be tried again, if not yet.
    fn until(&self, key: Uuid, now: Instant) -> Option<Instant> {
        self.0
            .get(&key)
            .map(|(until, _)| *until)
            .filter(|until| *until > now)
    }

    /// The users still waiting for their retry time (at most 1,000: the
    /// claim leaves them out).
    fn waiting(&self, now: Instant) -> Vec<Uuid> {
        self.0
            .iter()
            .filter(|(_, (until, _))| *until > now)
            .map(|(key, _)| *key)
            .take(1_000)
            .collect()
    }

    /// When the first waiting user may be tried again.
    fn next(&self, now: Instant) -> Option<Instant> {
        self.0
            .values()
            .map(|(until, _)| *until)
            .filter(|until| *until > now)
            .min()
    }

    fn refused(&mut self, key: Uuid, settings: &DispatchSettings) {
        let wait = match self.0.get(&key) {
            Some((_, last)) => (*last * 2).min(settings.max_backoff),
            None => settings.min_backoff,
        };
        // Bounded: at most one entry per user of the claimed batches.
        if self.0.len() < 100_000 {
            self.0.insert(key, (Instant::now() + jittered(wait), wait));
        }
    }

    fn accepted(&mut self, key: Uuid) {
        self.0.remove(&key);
    }
}

enum Round {
    /// Nothing to deliver.
    Idle,
    /// Everything claimed belongs to users waiting for their retry time.
    Waiting(Instant),
    /// Some events were accepted; `failure` says why another was not.
    Delivered { failure: Option<String> },
    /// Nothing was accepted, from several users: why.
    Failed(String),
    /// The endpoint is gone or disabled.
    Stopped,
    /// The receiver answered 410 Gone.
    Gone,
}

/// An endpoint's URL and signing keys, read again at most once a second
/// (a rotation or a deletion shows within that), not on every round.
#[derive(Default)]
struct Target {
    read: Option<(Arc<SigningKeys>, Arc<str>, Instant)>,
}

impl Target {
    const FRESH: Duration = Duration::from_secs(1);

    async fn current(
        &mut self,
        endpoints: &dyn WebhookEndpoints,
        id: EndpointId,
        now: time::OffsetDateTime,
    ) -> Result<Option<(Arc<SigningKeys>, Arc<str>)>, Error> {
        if let Some((keys, url, at)) = &self.read
            && at.elapsed() < Self::FRESH
        {
            return Ok(Some((Arc::clone(keys), Arc::clone(url))));
        }
        let (Some(keys), Some(endpoint)) =
            (endpoints.keys(id, now).await?, endpoints.get(id).await?)
        else {
            self.read = None;
            return Ok(None);
        };
        let (keys, url): (Arc<SigningKeys>, Arc<str>) = (Arc::new(keys), endpoint.url.into());
        self.read = Some((Arc::clone(&keys), Arc::clone(&url), Instant::now()));
        Ok(Some((keys, url)))
    }
}

/// `wait` with up to half of it added at random, so endpoints that failed
/// together do not retry together.
fn jittered(wait: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let spread = if getrandom::fill(&mut byte).is_ok() {
        f64::from(byte[0]) / 255.0 / 2.0
    } else {
        0.25
    };
    wait.mul_f64(1.0 + spread)
}
