//! Preparing a store in the background: a service starts while a store is
//! away, and what it needs there (a bucket, indexes) is made once it answers.

use std::future::Future;
use std::time::Duration;

use hub_core::Error;

/// Runs `attempt` in the background until it succeeds or `stop` completes,
/// waiting 1 s after the first failure, doubling up to a minute, with a
/// warning naming `what` each time.
pub fn prepare_in_background<F, Fut>(
    what: &'static str,
    stop: impl Future<Output = ()> + Send + 'static,
    mut attempt: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Error>> + Send,
{
    tokio::spawn(async move {
        tokio::pin!(stop);
        let mut wait = Duration::from_secs(1);
        loop {
            match attempt().await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, retry_in = ?wait, "{what} not ready yet"),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    });
}
