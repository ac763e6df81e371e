//! The console over HTTP, against rest-auth started by the test kit (the
//! console is mounted on its port): what a browser is sent, and what a
//! forged or oversized form gets. The browser itself is in hub-e2e
//! (e2e/tests/it/console.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pages;
mod roles;
mod security;
mod webhooks;
