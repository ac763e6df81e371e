//! The registry's build side: each [`Service`] turned into its router from
//! the shared wiring. One arm per service, and every adapter has the same
//! constructor, `router(state, ServiceContext)`; the arm builds the state.

use std::sync::Arc;

use anyhow::Context;
use hub_core::{PublicUrls, RelayStatus, SignIn, SystemClock};
use hub_runtime::connections::ConnectionStats;
use hub_runtime::metrics::HashingMetrics;
use hub_runtime::service::Backing;
use hub_runtime::{Service, ServiceContext};

use crate::Hub;
use crate::wiring::DirectoryMetrics;

/// What is known about the whole start before any router is built: where
/// each service is reached (the WSDL names two of them), and this process's
/// relay when it runs one.
#[derive(Debug)]
pub(crate) struct Assembly {
    /// The public address of every service, bound here or configured.
    pub addresses: Vec<(Service, String)>,
    /// Where each service's `/ready` and `/metrics` are read from here: its
    /// listener when this process runs it, else its configured address.
    pub probes: Vec<(Service, String)>,
    pub relay: Option<Arc<RelayStatus>>,
    /// This process's webhook delivery, when it runs it.
    pub webhooks: Option<Arc<hub_core::DispatchStatus>>,
}

impl Assembly {
    fn address(&self, service: Service) -> &str {
        self.addresses
            .iter()
            .find(|(s, _)| *s == service)
            .map_or("", |(_, url)| url.as_str())
    }

    /// Where uploaded images are shown from.
    fn public_urls(&self, base_url: Option<&str>) -> PublicUrls {
        match base_url {
            Some(base) => PublicUrls::External {
                base: base.trim_end_matches('/').to_owned(),
            },
            None => PublicUrls::Delivered {
                base: self.address(Service::GrpcImages).to_owned(),
            },
        }
    }

    /// The WSDL, with WS-SecurityPolicy where `security` requires a header.
    fn wsdl(&self, security: &hub_runtime::config::SoapSecurityConfig) -> Arc<str> {
        hub_soap::users_wsdl(
            &format!("{}/register", self.address(Service::SoapRegister)),
            &format!("{}/user/soap", self.address(Service::SoapLookup)),
            security.register_user,
            security.lookup_user,
        )
        .into()
    }
}

impl Hub {
    /// The account console's state: it signs in through `sign_in`, the
    /// same use case (and budgets) as rest-auth's JSON API.
    async fn console(
        &self,
        sign_in: SignIn,
        assembly: &Assembly,
    ) -> anyhow::Result<hub_console::ConsoleState> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(1))
            .build()
            .context("building the console's HTTP client")?;
        Ok(hub_console::ConsoleState {
            authentication: self.authentication()?,
            sign_in,
            lifecycle: self.session_lifecycle().await?,
            administration: self.administration(),
            library: self.image_library(),
            urls: assembly.public_urls(self.config.images.public_base_url.as_deref()),
            stall_timeout: self.config.images.stall_timeout(),
            secure_cookies: self.config.http.secure_cookies,
            readiness: assembly
                .probes
                .iter()
                .map(|(service, url)| (service.name().to_owned(), url.clone()))
                .collect(),
            http,
            webhooks: self.webhooks()?,
            oidc: self.oidc()?,
            clients: self.client_registry(),
            policy: String::new(),
        })
    }

    fn soap_limits(&self) -> hub_soap::Limits {
        hub_soap::Limits {
            max_bytes: self.config.soap.max_body_bytes,
            max_depth: self.config.soap.max_depth,
            max_elements: self.config.soap.max_elements,
        }
    }

    async fn context(
        &self,
        service: Service,
        connections: Arc<ConnectionStats>,
    ) -> anyhow::Result<ServiceContext> {
        let mut readiness = self.readiness(service).await?.with_metrics(connections);
        // One read model per process, reported by every service that reads it.
        if let Some(cache) = &self.directory_cache
            && service.uses(Backing::Postgres)
        {
            readiness = readiness.with_metrics(Arc::new(DirectoryMetrics(Arc::clone(cache))));
        }
        // One image library per process (grpc-images, and the console on
        // rest-auth's port), reported alike by every service that stores
        // images: its uploads in progress, sanitizing pool and buffer pool.
        if service.uses(Backing::ObjectStore) {
            readiness = readiness.with_metrics(Arc::new(hub_grpc_images::UploadMetrics(
                self.image_library(),
            )));
        }
        Ok(ServiceContext {
            service,
            readiness,
            http: self.config.http.clone(),
            cors: service.cors(&self.config.services).cloned(),
        })
    }

    /// `service`'s whole router, built from this hub's use cases; its
    /// `/metrics` shows its listener's `connections`.
    pub(crate) async fn router(
        &self,
        service: Service,
        assembly: &Assembly,
        connections: Arc<ConnectionStats>,
    ) -> anyhow::Result<axum::Router> {
        let context = self.context(service, connections).await?;
        let hashing = || Arc::new(HashingMetrics(self.hashing.clone()));
        let router = match service {
            Service::RestAuth => {
                // One sign-in for the JSON API and the console on its port.
                let sign_in = self.sign_in()?;
                let rest = hub_rest_auth::RestAuthState {
                    authentication: self.authentication()?,
                    sign_in: sign_in.clone(),
                    database: Arc::new(hub_store::PgProbe::new(self.pool.clone())),
                    secure_cookies: self.config.http.secure_cookies,
                    importer: self.importer(),
                    import_batch: self.config.import.batch_size,
                    import_max_bytes: self.config.import.max_body_bytes,
                    webhooks: self.webhooks()?,
                    feeds: self.event_feeds()?,
                    oauth: self.oauth()?,
                    oidc: self.oidc()?,
                    scim: self.scim(),
                };
                let console = hub_console::routes(self.console(sign_in, assembly).await?);
                hub_rest_auth::router_with(
                    rest,
                    ServiceContext {
                        readiness: context
                            .readiness
                            .clone()
                            .with_metrics(hashing())
                            .with_metrics(self.login_limiter())
                            .with_metrics(self.budgets.clone())
                            .with_metrics(self.insecure_hashes()),
                        ..context
                    },
                    console,
                )
            }
            Service::SoapRegister => hub_soap_register::router(
                hub_soap_register::SoapRegisterState {
                    sign_up: self.sign_up(),
                    wsdl: assembly.wsdl(&self.config.soap.security),
                    limits: self.soap_limits(),
                    policy: self.config.soap.security.register_user,
                    security: self.ws_security()?,
                },
                ServiceContext {
                    readiness: context
                        .readiness
                        .clone()
                        .with_metrics(hashing())
                        .with_metrics(self.budgets.clone()),
                    ..context
                },
            ),
            Service::SoapLookup => hub_soap_lookup::router(
                hub_soap_lookup::SoapLookupState {
                    directory: self.directory(),
                    wsdl: assembly.wsdl(&self.config.soap.security),
                    limits: self.soap_limits(),
                    policy: self.config.soap.security.lookup_user,
                    security: self.ws_security()?,
                    budgets: Arc::clone(&self.budgets),
                },
                context,
            ),
            Service::Sessions => hub_sessions::router(
                hub_sessions::SessionsState {
                    lifecycle: self.session_lifecycle().await?,
                    relay: assembly.relay.clone(),
                    outbox: self.outbox(),
                    oauth: self.oauth()?,
                },
                ServiceContext {
                    readiness: context.readiness.clone().with_metrics(Arc::new(
                        crate::events::WebhookMetrics {
                            status: assembly.webhooks.clone(),
                            endpoints: self.webhook_endpoints(),
                        },
                    )),
                    ..context
                },
            ),
            Service::SessionTracker => hub_sessions::tracker_router(
                hub_sessions::SessionsState {
                    lifecycle: self.session_lifecycle().await?,
                    relay: None,
                    outbox: self.outbox(),
                    oauth: self.oauth()?,
                },
                context,
            ),
            Service::GrpcImages => hub_grpc_images::router(
                hub_grpc_images::ImagesState {
                    library: self.image_library(),
                    authentication: self.authentication()?,
                    urls: assembly.public_urls(self.config.images.public_base_url.as_deref()),
                    store_probe: Arc::new(hub_store::S3Probe::new(self.image_store())),
                    max_message_bytes: self.config.images.max_message_bytes,
                    stall_timeout: self.config.images.stall_timeout(),
                    auth: hub_runtime::grpc::BearerAuth::new(self.tokens()?, Arc::new(SystemClock))
                        .with_clients(&self.config.oidc.settings().issuer),
                    feeds: self.event_feeds()?,
                    oauth: self.oauth()?,
                },
                context,
            ),
        };
        router.with_context(|| format!("building {service}"))
    }
}
