//! An upload's body read as it comes, for every HTTP port that takes one
//! (grpc-images' `POST /v1/images`, the account console's upload form):
//! the same cap, the same stall timeout, the same answers.

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt;
use hub_core::{Error, ErrorCode, UploadBuffer};

use crate::http::HttpError;

/// 408, not the 503 of `REQUEST_TIMEOUT`'s kind: the client stopped
/// sending, and the connection is closed with the answer.
fn stalled(after: Duration) -> HttpError {
    HttpError::with_status(
        StatusCode::REQUEST_TIMEOUT,
        Error::with_message(
            ErrorCode::RequestTimeout,
            format!("no upload bytes for {} ms", after.as_millis()),
        ),
    )
}

/// Reads an upload's bytes as they come: `IMAGE_TOO_LARGE` the moment the
/// cap is passed, `REQUEST_TIMEOUT` when no bytes come for `stall`.
pub async fn receive<S, B, E>(
    mut chunks: S,
    mut buffer: UploadBuffer,
    stall: Duration,
) -> Result<UploadBuffer, HttpError>
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    loop {
        match tokio::time::timeout(stall, chunks.next()).await {
            Err(_) => return Err(stalled(stall)),
            Ok(None) => return Ok(buffer),
            Ok(Some(Ok(chunk))) => buffer.push(chunk)?,
            Ok(Some(Err(e))) => {
                return Err(Error::with_message(
                    ErrorCode::InvalidRequest,
                    format!("the upload body could not be read: {e}"),
                )
                .into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::ImageLimits;

    fn buffer(max_bytes: usize) -> UploadBuffer {
        UploadBuffer::new(&ImageLimits {
            max_bytes,
            ..ImageLimits::default()
        })
    }

    #[tokio::test]
    async fn an_upload_is_read_whole_or_refused_at_its_cap() {
        let chunks = || futures_util::stream::iter([Ok::<_, String>(vec![1u8; 3]), Ok(vec![2; 3])]);
        let read = receive(chunks(), buffer(6), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(read.len(), 6);
        let refused = receive(chunks(), buffer(5), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(refused.error().code(), ErrorCode::ImageTooLarge);
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_stalled_upload_is_408_request_timeout() {
        let silent = futures_util::stream::pending::<Result<Vec<u8>, String>>();
        let refused = receive(silent, buffer(10), Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(refused.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(refused.error().code(), ErrorCode::RequestTimeout);
        assert_eq!(refused.error().message(), "no upload bytes for 20 ms");
    }
}
