//! `hub`: wires configuration, stores and use cases into every polyhub
//! service, and runs them in one process or one each. The service crates are
//! libraries; this crate is the one place where they are assembled, so the
//! `hub` binary, each service's binary and the tests run the same thing.
//!
//! - [`wiring`]: configuration in, stores and use cases out ([`Hub`]);
//! - `services`: the registry's build side, each [`Service`] to its router;
//! - [`serve`]: binding, serving and draining;
//! - [`launch`]: what every executable does around that;
//! - [`import`]: `hub users import`, reading a file of legacy users;
//! - [`events`]: `hub events tail`, the event log for operators.

pub mod events;
pub mod import;
pub mod launch;
pub mod serve;
mod services;
pub mod wiring;

pub use hub_runtime::Service;
pub use serve::{Listener, Running};
pub use wiring::Hub;
