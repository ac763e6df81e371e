//! `polyhub.events.v1.Events/Watch`: the live event feed for internal gRPC
//! callers, served on this port beside the image service. The same feed as
//! the WebSocket on rest-auth's port (hub-core's `feed`): topics, `after`
//! to resume, an admin's token checked again while the stream lasts, and a
//! reader too slow for `events.buffer` ended with `RESOURCE_EXHAUSTED`.

use std::pin::Pin;

use futures_core::Stream;
use hub_core::feed::{EventFeeds, Topic};
use hub_core::{Error, ErrorCode};
use hub_runtime::grpc::status;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::pb::events as pb;

/// The Events service.
#[derive(Clone)]
pub struct Events {
    pub feeds: EventFeeds,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// The bearer token of a call (the interceptor has verified it already).
fn token<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .ok_or_else(|| status(&Error::new(ErrorCode::InvalidToken)))
}

fn event(topic: Topic, logged: &hub_core::events::LoggedEvent) -> pb::Event {
    let shown = logged.to_json();
    let text = |field: &str| {
        shown
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    pb::Event {
        id: logged.position,
        event_id: text("event_id"),
        r#type: text("type"),
        occurred_at: text("occurred_at"),
        user_id: text("user_id"),
        session_id: text("session_id"),
        data_json: shown
            .get("data")
            .map(ToString::to_string)
            .unwrap_or_default(),
        topic: topic.as_str().to_owned(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// The stream side: what the feed task queues, as the call's stream.
struct Queued(mpsc::Receiver<Result<pb::Event, Status>>);

impl Stream for Queued {
    type Item = Result<pb::Event, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[tonic::async_trait]
impl pb::events_server::Events for Events {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let token = token(&request)?;
        let request = request.into_inner();
        if request.topics.is_empty() {
            return Err(status(&Error::with_message(
                ErrorCode::InvalidRequest,
                "name at least one topic",
            )));
        }
        let topics = request
            .topics
            .iter()
            .take(8)
            .map(|t| Topic::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| status(&e))?;
        let mut feed = self.feeds.open(&token).await.map_err(|e| status(&e))?;
        feed.start(request.after).await.map_err(|e| status(&e))?;
        let handle = feed.topics();
        for topic in topics {
            handle.add(topic);
        }
        let buffer = self.feeds.settings().buffer.max(1);
        // One slot more than the buffer, for the status that ends it.
        let (out, queued) = mpsc::channel(buffer + 1);
        tokio::spawn(async move {
            loop {
                // A caller that hung up frees its slot at once, events or not.
                let next = tokio::select! {
                    () = out.closed() => return,
                    next = feed.next() => next,
                };
                let events = match next {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = out.try_send(Err(status(&e)));
                        return;
                    }
                };
                for (topic, logged) in events {
                    if out.is_closed() {
                        return;
                    }
                    // Leaves the last slot for the closing status.
                    if out.capacity() <= 1 {
                        tracing::info!(
                            after = logged.position,
                            "event watch ended: the reader is too slow"
                        );
                        let _ = out.try_send(Err(Status::resource_exhausted(format!(
                            "OVERLOADED: the reader fell {buffer} events behind; watch again with after set to the last id received"
                        ))));
                        return;
                    }
                    if out.try_send(Ok(event(topic, &logged))).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(Queued(queued))))
    }
}
