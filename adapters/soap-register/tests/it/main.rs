//! soap-register's tests: one binary. They start only the SOAP services
//! (and rest-auth for the cross-protocol one), so they need neither MongoDB
//! nor S3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod soap;
mod wsse;
