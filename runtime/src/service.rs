//! The one list of polyhub's services. Everything that needs to know which
//! services exist asks [`Service`]: `hub serve` and `--only`, each service's
//! own binary, the configuration's ports, the test kit, and the port table in
//! docs/ARCHITECTURE.md (a test reads it). A new service is a variant here, a
//! router arm in hub's `services.rs`, and its own crate; every `match` on
//! `Service` is exhaustive, so the compiler names anything left out.

use std::fmt;
use std::str::FromStr;

use axum::Router;

use crate::Readiness;
use crate::config::{CorsConfig, HttpConfig, ServicesConfig};

/// A polyhub service: one listener with its own routes, health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    RestAuth,
    SoapRegister,
    SoapLookup,
    Sessions,
    SessionTracker,
    GrpcImages,
}

/// A backing store a service talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backing {
    Postgres,
    Mongo,
    ObjectStore,
}

/// How a service's readiness depends on a backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Not ready without it.
    Required,
    /// Reported in `/ready`; the service degrades without it and stays ready.
    Reported,
}

/// Where a service listens and how clients reach it, read from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub port: u16,
    /// The public URL when configured (behind a proxy, or in another process).
    pub external_url: Option<String>,
}

impl Service {
    /// Every service, in the order `hub serve` starts and prints them.
    pub const ALL: [Service; 6] = [
        Service::RestAuth,
        Service::SoapRegister,
        Service::SoapLookup,
        Service::Sessions,
        Service::SessionTracker,
        Service::GrpcImages,
    ];

    /// The name in logs, health answers, metrics, `--only` and binaries.
    pub const fn name(self) -> &'static str {
        match self {
            Service::RestAuth => "rest-auth",
            Service::SoapRegister => "soap-register",
            Service::SoapLookup => "soap-lookup",
            Service::Sessions => "sessions",
            Service::SessionTracker => "session-tracker",
            Service::GrpcImages => "grpc-images",
        }
    }

    /// Its section under `[services]` in config (`POLYHUB_SERVICES__{KEY}__PORT`
    /// in upper case).
    pub const fn config_key(self) -> &'static str {
        match self {
            Service::RestAuth => "rest_auth",
            Service::SoapRegister => "soap_register",
            Service::SoapLookup => "soap_lookup",
            Service::Sessions => "sessions",
            Service::SessionTracker => "session_tracker",
            Service::GrpcImages => "grpc_images",
        }
    }

    /// The port it listens on unless config says otherwise.
    pub const fn default_port(self) -> u16 {
        match self {
            Service::RestAuth => 5001,
            Service::SoapRegister => 5002,
            Service::SoapLookup => 5016,
            Service::Sessions => 5004,
            Service::SessionTracker => 5020,
            Service::GrpcImages => 5015,
        }
    }

    /// What it serves, in a few words (the port table and `--help`).
    pub const fn summary(self) -> &'static str {
        match self {
            Service::RestAuth => {
                "REST/JSON auth: register, login, profile, JWKS; the account console"
            }
            Service::SoapRegister => "SOAP 1.1/1.2 RegisterUser",
            Service::SoapLookup => "SOAP 1.1/1.2 LookupUser and the legacy GET",
            Service::Sessions => "session API and the outbox relay",
            Service::SessionTracker => "last connection per user",
            Service::GrpcImages => "gRPC image uploads and listings, public delivery",
        }
    }

    /// Whether it verifies or signs tokens, so needs the signing key.
    pub const fn needs_tokens(self) -> bool {
        match self {
            Service::RestAuth
            | Service::Sessions
            | Service::SessionTracker
            | Service::GrpcImages => true,
            Service::SoapRegister | Service::SoapLookup => false,
        }
    }

    /// The backing stores it uses, and how its readiness depends on each.
    pub const fn backing(self) -> &'static [(Backing, Need)] {
        match self {
            // The account console, on rest-auth's port, shows the last
            // connection and stores uploads; both degrade without their store.
            Service::RestAuth => &[
                (Backing::Postgres, Need::Required),
                (Backing::Mongo, Need::Reported),
                (Backing::ObjectStore, Need::Reported),
            ],
            Service::SoapRegister | Service::SoapLookup => &[(Backing::Postgres, Need::Required)],
            Service::Sessions => &[
                (Backing::Postgres, Need::Required),
                (Backing::Mongo, Need::Reported),
            ],
            Service::SessionTracker => &[
                (Backing::Postgres, Need::Required),
                (Backing::Mongo, Need::Required),
            ],
            Service::GrpcImages => &[
                (Backing::Postgres, Need::Required),
                (Backing::ObjectStore, Need::Required),
            ],
        }
    }

    /// Whether it uses `backing` at all.
    pub fn uses(self, backing: Backing) -> bool {
        self.backing().iter().any(|(b, _)| *b == backing)
    }

    /// Its port and public address as configured.
    pub fn listen(self, services: &ServicesConfig) -> Listen {
        let (port, external_url) = match self {
            Service::RestAuth => (services.rest_auth.port, &services.rest_auth.external_url),
            Service::SoapRegister => (
                services.soap_register.port,
                &services.soap_register.external_url,
            ),
            Service::SoapLookup => (
                services.soap_lookup.port,
                &services.soap_lookup.external_url,
            ),
            Service::Sessions => (services.sessions.port, &services.sessions.external_url),
            Service::SessionTracker => (
                services.session_tracker.port,
                &services.session_tracker.external_url,
            ),
            Service::GrpcImages => (
                services.grpc_images.port,
                &services.grpc_images.external_url,
            ),
        };
        Listen {
            port,
            external_url: external_url.clone(),
        }
    }

    /// Sets its port (tests bind port 0).
    pub fn set_port(self, services: &mut ServicesConfig, port: u16) {
        match self {
            Service::RestAuth => services.rest_auth.port = port,
            Service::SoapRegister => services.soap_register.port = port,
            Service::SoapLookup => services.soap_lookup.port = port,
            Service::Sessions => services.sessions.port = port,
            Service::SessionTracker => services.session_tracker.port = port,
            Service::GrpcImages => services.grpc_images.port = port,
        }
    }

    /// Its CORS allow-list, for the services that serve browsers.
    pub fn cors(self, services: &ServicesConfig) -> Option<&CorsConfig> {
        match self {
            Service::RestAuth => Some(&services.rest_auth.cors),
            Service::SoapLookup => Some(&services.soap_lookup.cors),
            Service::Sessions => Some(&services.sessions.cors),
            Service::SessionTracker => Some(&services.session_tracker.cors),
            Service::SoapRegister | Service::GrpcImages => None,
        }
    }

    /// Every name, comma-separated (for messages).
    pub fn names() -> String {
        Self::ALL.map(Service::name).join(", ")
    }
}

/// What the wiring hands every service's `router` beside the service's own
/// state, so every adapter has the same constructor:
/// `pub fn router(state, ServiceContext) -> Result<Router, hub_core::Error>`.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    pub service: Service,
    /// Its dependencies (from [`Service::backing`]) and metrics sources.
    pub readiness: Readiness,
    pub http: HttpConfig,
    /// Its CORS allow-list, when it serves browsers ([`Service::cors`]).
    pub cors: Option<CorsConfig>,
}

impl ServiceContext {
    /// `routes` inside what every service shares (request ids, tracing,
    /// owned rejections, `/health`, `/ready`, `/metrics`), behind its CORS
    /// allow-list when it has one.
    pub fn serve(self, routes: Router) -> Router {
        self.serve_grpc(routes, std::collections::BTreeSet::new())
    }

    /// As [`Self::serve`], for a port that also serves gRPC: `methods`
    /// (`/package.Service/Method`) are the gRPC labels its metrics may use,
    /// any other path counting as `other`.
    pub fn serve_grpc(self, routes: Router, methods: std::collections::BTreeSet<String>) -> Router {
        let router = crate::http::grpc_service_router(routes, self.readiness, &self.http, methods);
        match &self.cors {
            Some(cors) => router.layer(crate::cors_layer(cors)),
            None => router,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a service's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown service {0:?}; the services are {names}", names = Service::names())]
pub struct UnknownService(pub String);

impl FromStr for Service {
    type Err = UnknownService;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name.trim())
            .ok_or_else(|| UnknownService(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_ports_are_distinct() {
        let mut ports = std::collections::BTreeSet::new();
        for service in Service::ALL {
            assert_eq!(service.name().parse::<Service>(), Ok(service));
            assert!(ports.insert(service.default_port()), "{service}");
        }
        let err = "soap".parse::<Service>().unwrap_err();
        assert!(err.to_string().contains("soap-lookup"), "{err}");
    }

    #[test]
    fn config_defaults_are_the_registry_ports() {
        let services = ServicesConfig::default();
        for service in Service::ALL {
            assert_eq!(service.listen(&services).port, service.default_port());
        }
    }

    /// docs/ARCHITECTURE.md's table of services is the registry, cell by cell.
    #[test]
    fn the_docs_service_table_is_the_registry() {
        let doc = include_str!("../../docs/ARCHITECTURE.md");
        let rows = crate::doc_table::rows(doc, "| service | port |");
        let store = |(backing, need): &(Backing, Need)| {
            let name = match backing {
                Backing::Postgres => "PostgreSQL",
                Backing::Mongo => "MongoDB",
                Backing::ObjectStore => "S3",
            };
            match need {
                Need::Required => name.to_owned(),
                Need::Reported => format!("{name} (reported)"),
            }
        };
        let expected: Vec<Vec<String>> = Service::ALL
            .iter()
            .map(|s| {
                vec![
                    s.name().to_owned(),
                    s.default_port().to_string(),
                    if s.needs_tokens() { "yes" } else { "no" }.to_owned(),
                    s.backing().iter().map(store).collect::<Vec<_>>().join(", "),
                    s.summary().to_owned(),
                ]
            })
            .collect();
        assert_eq!(
            rows, expected,
            "the table of services in docs/ARCHITECTURE.md"
        );
    }
}
