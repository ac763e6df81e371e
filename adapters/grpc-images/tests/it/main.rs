//! grpc-images' tests: one binary, started through the test kit with
//! rest-auth beside it (to sign users in), the real PostgreSQL and a real
//! S3 server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod images;
