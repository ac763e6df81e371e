//! Logging: plain or JSON lines on standard error, filtered by config or
//! `RUST_LOG`. Standard output is left to commands' own output (the URLs
//! `hub serve` prints, what `hub users create` made).
//!
//! Lines are written by a thread of their own, never by the request that
//! logs them: a request formats its line into a bounded queue and goes on,
//! and the writer drains the queue into standard error through a buffer,
//! one write for many lines when they come fast. With an access line per
//! request, a blocking write to a slow terminal or a full pipe would
//! otherwise stall every request behind it. When the queue is full
//! (standard error not keeping up) new lines are dropped, counted in
//! `polyhub_log_lines_dropped_total`, so logging can cost a flood at most
//! the queue's memory. [`flush`] writes out what is queued; the executables
//! call it before they exit.

use std::io::BufWriter;
use std::sync::{Mutex, OnceLock};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Lines that may wait for the writer: at a few hundred bytes each, a few
/// megabytes at most.
pub const QUEUED_LINES: usize = 16_384;

static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber. Calling it twice is harmless (tests do).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("polyhub-log")
        // The writer thread flushes this buffer whenever its queue is
        // empty, so a line never waits longer than the lines before it.
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour codes only for a person at a terminal, never in a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let installed = match config.format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if installed.is_ok() {
        let _ = DROPPED.set(dropped);
        if let Ok(mut slot) = WRITER.lock() {
            *slot = Some(guard);
        }
    }
}

/// Writes out every queued line and stops the writer; lines logged after
/// this are lost. Call it last, before the process exits.
pub fn flush() {
    let guard = WRITER.lock().ok().and_then(|mut slot| slot.take());
    drop(guard);
}

/// Lines dropped because the queue was full, since the process started.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
