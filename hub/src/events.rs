//! The event log for operators: `hub events tail` prints events as JSON
//! lines, in the log's commit-safe order (see hub-store's event log).

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use hub_core::events::EventLog;
use hub_store::PgEventLog;

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
