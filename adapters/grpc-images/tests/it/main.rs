//! grpc-images' tests: one binary. `images` starts the service through the
//! test kit with rest-auth beside it (to sign users in), the real PostgreSQL
//! and a real S3 server; `routes` drives its router in memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod images;
mod routes;
