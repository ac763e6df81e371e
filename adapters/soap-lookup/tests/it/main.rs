//! soap-lookup's tests: one binary. `routes` drives the router alone over
//! hub-core's in-memory users; `soap` starts only the SOAP services through
//! the test kit, against the real PostgreSQL, so neither needs MongoDB or S3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod routes;
mod soap;
