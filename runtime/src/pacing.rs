//! What one request may cost in time: its body must arrive within
//! `http.body_read_timeout_ms` or keep up `http.min_body_bytes_per_sec`
//! (so a large upload on a good link is fine and a trickle is not), and the
//! whole request must be answered within `http.request_timeout_ms`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use hub_core::{Error, ErrorCode};
use tokio::time::{Instant, Sleep};

use crate::config::HttpConfig;
use crate::http::HttpError;

/// A request body that arrived too slowly.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly ({received} bytes in {elapsed:?})")]
pub struct SlowBody {
    pub received: u64,
    pub elapsed: Duration,
}

/// The time limits of one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLimits {
    body_grace: Duration,
    min_rate: u64,
    deadline: Duration,
}

impl RequestLimits {
    pub(crate) fn new(config: &HttpConfig) -> Self {
        Self {
            body_grace: Duration::from_millis(config.body_read_timeout_ms),
            min_rate: config.min_body_bytes_per_sec.max(1),
            deadline: Duration::from_millis(config.request_timeout_ms),
        }
    }
}

/// A body with a pace to keep: having received `n` bytes, it may take until
/// `max(grace, n / min_rate)` after the start for the next frame.
struct PacedBody {
    inner: Body,
    started: Instant,
    received: u64,
    limits: RequestLimits,
    /// Made on the first wait only: a body that is already here costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl PacedBody {
    fn allowed_until(&self) -> Instant {
        let on_pace = Duration::from_secs_f64(self.received as f64 / self.limits.min_rate as f64);
        self.started + self.limits.body_grace.max(on_pace)
    }
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let until = this.allowed_until();
                    if let Some(timer) = &mut this.timer {
                        timer.as_mut().reset(until);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let until = this.allowed_until();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                if timer.as_mut().poll(cx).is_ready() {
                    let slow = SlowBody {
                        received: this.received,
                        elapsed: this.started.elapsed(),
                    };
                    tracing::info!(received = slow.received, elapsed = ?slow.elapsed, "request body too slow");
                    return Poll::Ready(Some(Err(axum::Error::new(slow))));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` (a body error, through its sources) is [`SlowBody`].
pub fn is_slow_body(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<SlowBody>() {
            return true;
        }
        current = e.source();
    }
    false
}

pub(crate) fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Paces the body and bounds the whole request (`next`, the rest of the
/// stack). A request past its deadline is `REQUEST_TIMEOUT` in its
/// protocol's shape.
pub(crate) async fn guard<Run: Future<Output = Response>>(
    limits: RequestLimits,
    request: Request,
    next: impl FnOnce(Request) -> Run,
) -> Response {
    let grpc = is_grpc(&request);
    let request = request.map(|inner| {
        Body::new(PacedBody {
            inner,
            started: Instant::now(),
            received: 0,
            limits,
            timer: None,
        })
    });
    match tokio::time::timeout(limits.deadline, next(request)).await {
        Ok(response) => response,
        Err(_) => {
            let error = Error::new(ErrorCode::RequestTimeout);
            if grpc {
                crate::grpc::status(&error).into_http()
            } else {
                HttpError::from(error).into_response()
            }
        }
    }
}
