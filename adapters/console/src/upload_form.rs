//! The upload form, read in two steps. Before its CSRF token is checked,
//! at most [`BEFORE_CHECK_MAX_BYTES`] of the body reach the multipart
//! parser, and the token field is read up to [`TOKEN_MAX_BYTES`]: whatever a
//! form puts first (a preamble, part headers, a "token" of many MiB), the
//! hub holds a few KiB of it, not the upload's whole limit, and holds it
//! outside the user's uploads-in-progress cap only that long. Once the token
//! is checked and an upload slot taken, [`Gate::open`] lets the file
//! through.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use futures_util::Stream;

use crate::account::unreadable;
use crate::guard::refused;
use crate::pages::Early;

/// What the parser may read before the token is checked: a browser's
/// delimiter, the token's part headers, the token and the next delimiter
/// take a few hundred bytes.
const BEFORE_CHECK_MAX_BYTES: usize = 4 * 1024;
/// The longest token field read; a token is 43 characters.
const TOKEN_MAX_BYTES: usize = 256;

/// Whether the body may pass more than [`BEFORE_CHECK_MAX_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    /// The parser asked for more while the gate was shut and its allowance
    /// spent: it waits for bytes that will not come until the gate opens.
    starved: AtomicBool,
}

impl Gate {
    /// Lets the rest of the body through.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    fn starved(&self) -> bool {
        self.starved.load(Ordering::SeqCst)
    }
}

/// A request body behind a [`Gate`]: while it is shut, the first
/// `allowance` bytes pass, and a chunk that straddles the allowance is cut,
/// its rest held (one chunk of the transport's, not the form) until the
/// gate opens.
struct Gated {
    inner: BodyDataStream,
    held: Option<Bytes>,
    allowance: usize,
    gate: Arc<Gate>,
}

impl Stream for Gated {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.gate.is_open() {
            if let Some(held) = this.held.take() {
                return Poll::Ready(Some(Ok(held)));
            }
            return Pin::new(&mut this.inner).poll_next(cx);
        }
        if this.allowance == 0 {
            // No waker: only the handler polls the parser, and it opens the
            // gate or reads `starved` (in `token`) before it polls again.
            this.gate.starved.store(true, Ordering::SeqCst);
            return Poll::Pending;
        }
        let mut chunk = match this.held.take() {
            Some(held) => held,
            None => match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => chunk,
                other => return other,
            },
        };
        if chunk.len() > this.allowance {
            this.held = Some(chunk.split_off(this.allowance));
        }
        this.allowance -= chunk.len();
        Poll::Ready(Some(Ok(chunk)))
    }
}

/// The form of `request`, its body behind a shut gate.
pub(crate) async fn read(request: Request) -> Result<(Multipart, Arc<Gate>), Early> {
    let gate = Arc::new(Gate::default());
    let (parts, body) = request.into_parts();
    let gated = Gated {
        inner: body.into_data_stream(),
        held: None,
        allowance: BEFORE_CHECK_MAX_BYTES,
        gate: Arc::clone(&gate),
    };
    // The route's body limit (an extension in `parts`) still applies.
    let request = Request::from_parts(parts, Body::from_stream(gated));
    let multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| Early::from(unreadable(&e)))?;
    Ok((multipart, gate))
}

/// The form's first field, which must be its CSRF token, read within the
/// gate's allowance and [`TOKEN_MAX_BYTES`]; anything longer is refused as
/// a form without its token, before another byte is read.
pub(crate) async fn token(multipart: &mut Multipart, gate: &Gate) -> Result<String, Early> {
    let mut read = pin!(token_field(multipart));
    poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Pending if gate.starved() => Poll::Ready(Err(refused(&format!(
            "the form's first field is not a CSRF token within its first {} KiB",
            BEFORE_CHECK_MAX_BYTES / 1024
        ))
        .into())),
        other => other,
    })
    .await
}

async fn token_field(multipart: &mut Multipart) -> Result<String, Early> {
    let mut field = match multipart.next_field().await {
        Ok(Some(field)) if field.name() == Some("csrf") => field,
        Ok(_) => return Err(refused("the form was posted without its CSRF token").into()),
        Err(e) => return Err(unreadable(&e).into()),
    };
    let mut token = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| unreadable(&e))? {
        if token.len() + chunk.len() > TOKEN_MAX_BYTES {
            return Err(refused("the form's CSRF token is longer than any token").into());
        }
        token.extend_from_slice(&chunk);
    }
    String::from_utf8(token)
        .map_err(|_| refused("the form's CSRF token is not this session's").into())
}
