//! polyhub end to end, one binary: `hub serve` and the six service binaries
//! run as real processes, driven only from outside through the clients each
//! protocol's users would use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod consistency;
mod console;
mod gateway;
mod journey;
mod mfa;
mod oidc;
mod passkeys;
mod standalone;
