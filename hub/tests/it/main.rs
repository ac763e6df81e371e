//! The `hub` package's tests: the binaries as operators run them, the
//! deployment files, and what only the whole wiring shows (every service's
//! `/metrics`). Each adapter's own tests live in its crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod binaries;
mod cli;
mod deploy;
mod directory;
mod import;
mod import_costs;
mod mail;
mod metrics;
mod mfa;
mod oauth;
mod oidc;
mod per_process;
mod scim;
mod serving;
mod webhooks;
