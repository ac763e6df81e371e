//! The event log's readers: `hub events tail` prints events as JSON lines,
//! in the log's commit-safe order (see hub-store's event log); webhooks and
//! the live feeds are built here, once per process.

use std::io::Write;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use hub_core::events::EventLog;
use hub_core::feed::EventFeeds;
use hub_core::{Dispatcher, SystemClock, WebhookEndpoints, Webhooks};
use hub_store::{HttpWebhooks, PgEventLog, PgWebhookEndpoints, WebhookHttpSettings};

use crate::Hub;

/// The most events one `hub events tail` prints.
pub const MAX_TAIL: u32 = 10_000;

impl Hub {
    /// The event log, for its readers.
    pub fn event_log(&self) -> Arc<dyn EventLog> {
        Arc::new(PgEventLog::new(self.pool.clone()))
    }
}

/// Prints up to `limit` events after position `after` (without it, the
/// latest `limit`) to `out`, one JSON object per line; how many. A reader
/// that stopped reading (`| head`) ends the printing, not the command.
pub async fn tail(
    log: &dyn EventLog,
    after: Option<i64>,
    limit: u32,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let events = log
        .read(after, limit.clamp(1, MAX_TAIL))
        .await
        .context("reading the event log")?;
    for (printed, event) in events.iter().enumerate() {
        let line = event.to_json().to_string();
        if let Err(e) = writeln!(out, "{line}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(printed);
            }
            return Err(e).context("writing events");
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing events"),
        _ => Ok(events.len()),
    }
}

impl Hub {
    /// Webhook deliveries over HTTP, with the address guard: one per
    /// process, so its kept connections serve every endpoint's worker.
    pub fn webhook_transport(&self) -> anyhow::Result<Arc<HttpWebhooks>> {
        if let Some(transport) = self.once.webhook_transport.get() {
            return Ok(Arc::clone(transport));
        }
        let config = &self.config.webhooks;
        let transport = Arc::new(
            HttpWebhooks::new(WebhookHttpSettings {
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                timeout: config.timeout(),
                max_response_bytes: config.max_response_bytes,
                allowed_networks: config
                    .allowed_networks
                    .iter()
                    .map(|n| n.network())
                    .collect(),
                max_idle_per_origin: config.concurrency.max(1),
            })
            .context("setting up webhook delivery")?,
        );
        Ok(Arc::clone(
            self.once.webhook_transport.get_or_init(|| transport),
        ))
    }

    pub(crate) fn webhook_endpoints(&self) -> Arc<dyn WebhookEndpoints> {
        Arc::new(PgWebhookEndpoints::new(self.pool.clone()))
    }

    /// Managing webhook endpoints (REST, the console, `hub webhooks`).
    pub fn webhooks(&self) -> anyhow::Result<Webhooks> {
        Ok(Webhooks::new(
            self.webhook_endpoints(),
            self.webhook_transport()?,
            self.users(),
            Arc::new(SystemClock),
            self.config.webhooks.limits(),
        ))
    }

    /// Delivering every endpoint's queue (run where the sessions service
    /// runs, unless `webhooks.enabled = false`).
    pub fn dispatcher(&self) -> anyhow::Result<Dispatcher> {
        Ok(Dispatcher::new(
            self.webhook_endpoints(),
            self.webhook_transport()?,
            Arc::new(SystemClock),
            self.config.webhooks.dispatch(),
        ))
    }

    /// The live feeds (WebSocket and gRPC): one opener per process, so
    /// `events.max_subscribers` counts every port's feeds.
    pub fn event_feeds(&self) -> anyhow::Result<EventFeeds> {
        if let Some(feeds) = self.once.event_feeds.get() {
            return Ok(feeds.clone());
        }
        let feeds = EventFeeds::new(
            self.event_log(),
            self.authentication()?,
            self.config.events.feed(),
            self.config.events.max_subscribers,
        )
        .with_clients(self.oauth()?);
        Ok(self.once.event_feeds.get_or_init(|| feeds).clone())
    }
}

/// Webhook delivery in `/metrics` on the sessions port: this process's
/// counters, and every endpoint's state (from the database).
pub(crate) struct WebhookMetrics {
    pub(crate) status: Option<Arc<hub_core::DispatchStatus>>,
    pub(crate) endpoints: Arc<dyn WebhookEndpoints>,
}

#[async_trait::async_trait]
impl hub_runtime::metrics::MetricsSource for WebhookMetrics {
    async fn collect(&self, out: &mut hub_runtime::metrics::Exposition) {
        if let Some(status) = &self.status {
            let status = status.snapshot();
            out.counter(
                "polyhub_webhook_delivered_total",
                "Webhook deliveries a receiver accepted (2xx).",
                status.delivered,
            )
            .counter(
                "polyhub_webhook_failed_total",
                "Webhook deliveries that failed and will be retried.",
                status.failed,
            )
            .counter(
                "polyhub_webhook_disabled_total",
                "Webhook endpoints this process disabled (failing too long, or 410 Gone).",
                status.disabled,
            )
            .gauge(
                "polyhub_webhook_lag_seconds",
                "Event time to acceptance of the last accepted webhook delivery.",
                status.last_lag.as_secs_f64(),
            );
        }
        match self.endpoints.list().await {
            Ok(endpoints) => {
                let count = |f: &dyn Fn(&hub_core::WebhookEndpoint) -> bool| {
                    #[allow(clippy::cast_precision_loss)] // at most webhooks.max_endpoints
                    let n = endpoints.iter().filter(|e| f(e)).count() as f64;
                    n
                };
                out.family(
                    "gauge",
                    "polyhub_webhook_endpoints",
                    "Webhook endpoints by state: active, failing (retrying with backoff) or disabled.",
                )
                .sample(
                    "polyhub_webhook_endpoints",
                    &[("state", "active")],
                    count(&|e| e.disabled_at.is_none() && e.failing_since.is_none()),
                )
                .sample(
                    "polyhub_webhook_endpoints",
                    &[("state", "failing")],
                    count(&|e| e.disabled_at.is_none() && e.failing_since.is_some()),
                )
                .sample(
                    "polyhub_webhook_endpoints",
                    &[("state", "disabled")],
                    count(&|e| e.disabled_at.is_some()),
                );
            }
            Err(e) => tracing::warn!(error = %e, "webhook endpoints not counted"),
        }
    }
}
