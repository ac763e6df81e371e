//! hub-runtime's tests over real sockets with real clients: the shared HTTP
//! layer, and serving under hostile clients (timers, caps, bounded labels).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http;
mod serving;
