//! `GET /events/ws`: the event log, live, over a WebSocket, in the message
//! shape WebSocket clients of the absorbed notification service already
//! speak (docs/EVENTS.md):
//!
//! - `{"action":"subscribe","topic":"user_updates"}` is answered
//!   `{"message":"Subscribed to user_updates"}`, `unsubscribe` likewise;
//! - events come as the log shows them, with their `id` and `topic`;
//! - `?after=ID` resumes just after event ID (refused with 400 before the
//!   upgrade when the log no longer keeps it); without it the feed starts
//!   at the newest event when the connection opens. Nothing is sent before
//!   the first subscribe, and an event is sent when its topic is
//!   subscribed at the moment the feed reads it.
//!
//! The upgrade needs an admin's bearer token, or a client-credentials token
//! with scope `events:read` (401/403 before any upgrade); the role, scope
//! and token are checked again while the feed lasts. A reader
//! that lets `events.buffer` events pile up is closed with code 4429.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hub_core::feed::{Feed, Topic, Topics};
use hub_core::{Error, ErrorCode};
use hub_runtime::{BearerToken, HttpError, QueryParams};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::RestAuthState;

/// The largest message a client may send.
const MAX_CLIENT_MESSAGE: usize = 4096;
/// How long one write to a client may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Close codes (docs/EVENTS.md).
pub const CLOSE_SLOW_CONSUMER: u16 = 4429;
pub const CLOSE_TOKEN_INVALID: u16 = 4401;
pub const CLOSE_FORBIDDEN: u16 = 4403;
pub const CLOSE_BAD_RESUME: u16 = 4400;
pub const CLOSE_UNAVAILABLE: u16 = 1013;
pub const CLOSE_NO_SUBSCRIBE: u16 = 4408;

/// A feed must subscribe within this, and is pinged this often after: a
/// socket that holds a slot without reading, or whose peer is gone, ends.
const HEARTBEAT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct FeedQuery {
    /// Resume just after the event with this `id`.
    after: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ClientMessage {
    action: String,
    topic: Option<String>,
}

/// `GET /events/ws`
pub(crate) async fn events_ws(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    QueryParams(query): QueryParams<FeedQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    let mut feed = state.feeds.open(&token).await?;
    // The cursor is placed before the upgrade answers, so nothing that
    // commits after the client sees the upgrade can be missed.
    feed.start(query.after).await?;
    let buffer = state.feeds.settings().buffer;
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(socket, feed, buffer)))
}

/// How the log side ends the feed: the close's code and reason (for a slow
/// reader the socket side writes it, knowing what it last wrote).
struct Close(u16, String);

/// Aborts the log side when the socket side ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn close_for(error: &Error) -> (u16, String) {
    match error.code() {
        ErrorCode::InvalidToken => (
            CLOSE_TOKEN_INVALID,
            "the token is no longer valid".to_owned(),
        ),
        ErrorCode::Forbidden => (
            CLOSE_FORBIDDEN,
            "the event feed is for admins and clients with events:read".to_owned(),
        ),
        ErrorCode::InvalidRequest => (CLOSE_BAD_RESUME, "cannot resume there".to_owned()),
        code => (
            CLOSE_UNAVAILABLE,
            format!(
                "{}: the event log cannot be read; reconnect later",
                code.as_str()
            ),
        ),
    }
}

/// The log side: waits for the first subscribe, then reads the feed and
/// queues each event; a full queue ends the feed.
async fn produce(
    mut feed: Feed,
    started: oneshot::Receiver<()>,
    out: mpsc::Sender<(i64, String)>,
    closing: oneshot::Sender<Close>,
) {
    if started.await.is_err() {
        return;
    }
    loop {
        let events = match feed.next().await {
            Ok(events) => events,
            Err(e) => {
                if !matches!(e.code(), ErrorCode::InvalidToken | ErrorCode::Forbidden) {
                    tracing::warn!(error = %e, "event feed stopped");
                }
                let (code, reason) = close_for(&e);
                let _ = closing.send(Close(code, reason));
                return;
            }
        };
        for (topic, event) in events {
            let mut shown = event.to_json();
            if let Some(object) = shown.as_object_mut() {
                object.insert("topic".to_owned(), json!(topic.as_str()));
            }
            match out.try_send((event.position, shown.to_string())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!("event feed closed: the reader is too slow");
                    let _ = closing.send(Close(CLOSE_SLOW_CONSUMER, String::new()));
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

/// The socket side: the caller's messages, the queued events, the close.
async fn serve(socket: WebSocket, feed: Feed, buffer: usize) {
    let topics = feed.topics();
    // The last event written to the socket (at first, where the feed
    // starts): what a reader closed for slowness resumes after.
    let mut written = feed.cursor();
    let mut heard = tokio::time::Instant::now();
    let opened = heard;
    let (mut sink, mut stream) = socket.split();
    let (out, mut queued) = mpsc::channel(buffer.max(1));
    let (start, started) = oneshot::channel();
    let (closing, mut closed) = oneshot::channel();
    let _producer = AbortOnDrop(tokio::spawn(produce(feed, started, out, closing)));
    let mut start = Some(start);
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        // The close first: a feed that must end ends before it sends more.
        let message = tokio::select! {
            biased;
            last = &mut closed => {
                if let Ok(Close(code, reason)) = last {
                    let reason = match (code, written) {
                        (CLOSE_SLOW_CONSUMER, Some(id)) => format!("too slow; resume with after={id}"),
                        (CLOSE_SLOW_CONSUMER, None) => "too slow; reconnect".to_owned(),
                        _ => reason,
                    };
                    let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
                    let _ = send(&mut sink, Message::Close(Some(frame))).await;
                }
                break;
            }
            // Before the caller's messages, so a chatty caller cannot put
            // off the subscribe deadline or the liveness check.
            _ = heartbeat.tick() => {
                if start.is_some() && opened.elapsed() >= HEARTBEAT {
                    let frame = CloseFrame {
                        code: CLOSE_NO_SUBSCRIBE,
                        reason: Utf8Bytes::from_static("subscribe to a topic within 30 s of connecting"),
                    };
                    let _ = send(&mut sink, Message::Close(Some(frame))).await;
                    break;
                }
                // Nothing heard (not even a pong) for two pings: gone.
                if heard.elapsed() > HEARTBEAT * 2 {
                    break;
                }
                if send(&mut sink, Message::Ping(axum::body::Bytes::new())).await.is_err() {
                    break;
                }
                None
            }
            incoming = stream.next() => {
                heard = tokio::time::Instant::now();
                match incoming {
                    Some(Ok(Message::Text(text))) => reply(&topics, &text, &mut start),
                    Some(Ok(Message::Binary(_))) => Some(error_message("send JSON text messages")),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => None,
                }
            },
            next = queued.recv() => match next {
                Some((position, text)) => {
                    if send(&mut sink, Message::Text(text.into())).await.is_err() {
                        break;
                    }
                    written = Some(position);
                    None
                }
                None => break,
            },
        };
        if let Some(message) = message
            && send(&mut sink, Message::Text(message.into()))
                .await
                .is_err()
        {
            break;
        }
    }
}

async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    message: Message,
) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

fn error_message(text: &str) -> String {
    json!({ "error": text, "code": ErrorCode::InvalidRequest.as_str() }).to_string()
}

/// The answer to one client message; the first subscribe starts the feed.
fn reply(topics: &Topics, text: &str, start: &mut Option<oneshot::Sender<()>>) -> Option<String> {
    let Ok(message) = serde_json::from_str::<ClientMessage>(text) else {
        return Some(error_message(
            r#"expected {"action":"subscribe"|"unsubscribe","topic":"..."}"#,
        ));
    };
    let topic = match message.topic.as_deref().map(Topic::parse) {
        Some(Ok(topic)) => topic,
        Some(Err(e)) => return Some(error_message(e.message())),
        None => return Some(error_message("name a topic")),
    };
    Some(match message.action.as_str() {
        "subscribe" => {
            topics.add(topic);
            if let Some(start) = start.take() {
                let _ = start.send(());
            }
            json!({ "message": format!("Subscribed to {}", topic.as_str()) }).to_string()
        }
        "unsubscribe" => {
            topics.remove(topic);
            json!({ "message": format!("Unsubscribed from {}", topic.as_str()) }).to_string()
        }
        _ => error_message("the action is subscribe or unsubscribe"),
    })
}
