//! rest-auth's tests: one binary (link time on two cores), a module per
//! concern. Each starts only rest-auth, through the test kit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod authorization;
mod fairness;
mod hash_costs;
mod schemathesis;
