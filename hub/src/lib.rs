//! `hub`: wires configuration, stores and use cases into every polyhub service,
//! and runs them in one process. The service crates are libraries; this crate
//! is the one place where they are assembled, so the binary and the tests run
//! the same thing.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hub_core::{
    ActivityLog, Authentication, DependencyProbe, Directory, HashingPool, ImageLibrary, KeySet,
    Outbox, PasswordHasher, Registration, Relay, SessionLifecycle, SessionRepository, SystemClock,
    TokenSettings, Tokens, UserRepository,
};
use hub_runtime::config::TokenConfig;
use hub_runtime::{Config, Readiness, Shutdown};
use hub_store::{
    CachedSessions, MongoActivityLog, MongoDatabase, MongoProbe, MongoSettings, PgImageRepository,
    PgOutbox, PgProbe, PgSessionRepository, PgUserRepository, PoolSettings, S3ObjectStore, S3Probe,
    S3Settings,
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub mod launch;

/// Everything the services share: one pool, one hashing pool, the use cases.
#[derive(Clone)]
pub struct Hub {
    config: Config,
    pool: PgPool,
    users: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionRepository>,
    hashing: HashingPool,
    tokens: Option<Arc<Tokens>>,
    mongo: Arc<tokio::sync::OnceCell<MongoDatabase>>,
    /// The open-session cache behind `sessions`, when configured; its
    /// listener runs while the services do.
    session_cache: Option<Arc<CachedSessions>>,
}

/// Reads the signing key and the earlier public keys named in config.
fn load_tokens(config: &TokenConfig) -> anyhow::Result<Option<Tokens>> {
    let Some(path) = &config.signing_key_path else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the key file {}", path.display()))
    };
    let current = read(path)?;
    let previous = config
        .previous_public_key_paths
        .iter()
        .map(|p| read(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys = KeySet::from_pem(&current, &previous)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("loading the signing key {}", path.display()))?;
    tracing::info!(
        kid = keys.signing_kid(),
        verifying = previous.len() + 1,
        "token keys loaded"
    );
    Ok(Some(Tokens::new(
        keys,
        TokenSettings {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            lifetime: config.lifetime(),
        },
    )))
}

/// Runs `attempt` in the background until it succeeds or `shutdown` fires,
/// waiting 1 s after the first failure, doubling up to a minute, with a
/// warning naming `what` each time.
fn retry_in_background<F, Fut>(what: &'static str, shutdown: Shutdown, mut attempt: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), hub_core::Error>> + Send,
{
    tokio::spawn(async move {
        let mut wait = std::time::Duration::from_secs(1);
        loop {
            match attempt().await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, retry_in = ?wait, "{what} not ready yet"),
            }
            tokio::select! {
                () = shutdown.clone().wait() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(std::time::Duration::from_secs(60));
        }
    });
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Every service `hub serve` runs, by the name `--only` takes.
pub const SERVICES: [&str; 6] = [
    rest_auth::SERVICE,
    soap_register::SERVICE,
    soap_lookup::SERVICE,
    sessions::SERVICE,
    sessions::TRACKER,
    grpc_images::SERVICE,
];

/// One listener of a running hub.
#[derive(Debug, Clone)]
pub struct Listener {
    pub service: &'static str,
    pub local_addr: SocketAddr,
    pub external_url: String,
}

impl Hub {
    /// Builds the shared parts; connects to nothing yet (the pool is lazy).
    pub fn build(config: Config) -> anyhow::Result<Self> {
        let pool = hub_store::connect_lazy(&PoolSettings {
            url: config.database.url.expose().clone(),
            max_connections: config.database.max_connections,
            min_connections: config.database.min_connections,
            acquire_timeout: config.database.acquire_timeout(),
            idle_timeout: config.database.idle_timeout(),
        })
        .context("configuring the PostgreSQL pool")?;
        let hasher = PasswordHasher::new(config.hashing.iterations)
            .context("configuring password hashing")?;
        let hashing = HashingPool::new(hasher, config.hashing.pool_config());
        let tokens = load_tokens(&config.tokens)?.map(Arc::new);
        let session_cache = (config.sessions.cache_capacity > 0).then(|| {
            Arc::new(CachedSessions::new(
                pool.clone(),
                config.sessions.cache_capacity,
                std::time::Duration::from_secs(config.sessions.cache_max_age_secs),
            ))
        });
        let sessions: Arc<dyn SessionRepository> = match &session_cache {
            Some(cache) => Arc::clone(cache) as Arc<dyn SessionRepository>,
            None => Arc::new(PgSessionRepository::new(pool.clone())),
        };
        Ok(Self {
            users: Arc::new(PgUserRepository::new(pool.clone())),
            sessions,
            session_cache,
            config,
            pool,
            hashing,
            tokens,
            mongo: Arc::default(),
        })
    }

    /// The same hub hashing with `hasher`. Config can only raise the
    /// production parameters; a weaker hasher exists only in hub-core's
    /// test-support feature, so only tests can hand one in.
    pub fn with_password_hasher(mut self, hasher: PasswordHasher) -> Self {
        self.hashing = HashingPool::new(hasher, self.config.hashing.pool_config());
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Creates the database when missing, then applies every pending migration.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        if hub_store::ensure_database(self.config.database.url.expose())
            .await
            .context("creating the PostgreSQL database")?
        {
            tracing::info!("created the database");
        }
        hub_store::migrate(&self.pool)
            .await
            .context("migrating the PostgreSQL schema")
    }

    pub fn users(&self) -> Arc<dyn UserRepository> {
        Arc::clone(&self.users)
    }

    pub fn registration(&self) -> Registration {
        Registration::new(self.users(), self.hashing.clone(), Arc::new(SystemClock))
    }

    /// Signing in and out; needs the token keys.
    pub fn authentication(&self) -> anyhow::Result<Authentication> {
        let tokens = self.tokens.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "no token signing key: set tokens.signing_key_path \
                 (POLYHUB_TOKENS__SIGNING_KEY_PATH); `hub keys generate --out PATH` makes one"
            )
        })?;
        Ok(Authentication::new(
            self.users(),
            Arc::clone(&self.sessions),
            self.hashing.clone(),
            tokens,
            Arc::new(SystemClock),
            self.config.sessions.lifetime(),
        ))
    }

    pub fn directory(&self) -> Directory {
        Directory::new(self.users())
    }

    /// The MongoDB database, configured on first use; the client connects
    /// lazily, so this succeeds while MongoDB is away.
    pub async fn mongo(&self) -> anyhow::Result<MongoDatabase> {
        let config = &self.config.mongo;
        self.mongo
            .get_or_try_init(|| async {
                hub_store::connect_mongo(&MongoSettings {
                    url: config.url.expose().clone(),
                    database: config.database.clone(),
                    server_selection_timeout: std::time::Duration::from_millis(
                        config.server_selection_timeout_ms,
                    ),
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("configuring the MongoDB client")
            })
            .await
            .cloned()
    }

    /// Session events and last connections in MongoDB.
    pub async fn activity_log(&self) -> anyhow::Result<MongoActivityLog> {
        Ok(MongoActivityLog::new(&self.mongo().await?))
    }

    pub fn outbox(&self) -> Arc<dyn Outbox> {
        Arc::new(PgOutbox::new(self.pool.clone()))
    }

    /// A relay from this hub's outbox into its activity log.
    pub async fn relay(&self) -> anyhow::Result<Relay> {
        Ok(Relay::new(
            self.outbox(),
            Arc::new(self.activity_log().await?),
            Arc::new(SystemClock),
            self.config.relay.settings(),
        ))
    }

    /// The image store (S3 or compatible), as configured; connects on use.
    pub fn image_store(&self) -> S3ObjectStore {
        let s3 = &self.config.images.s3;
        S3ObjectStore::new(&S3Settings {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            bucket: s3.bucket.clone(),
            access_key: s3.access_key.clone(),
            secret_key: s3.secret_key.expose().clone(),
            timeout: std::time::Duration::from_millis(s3.timeout_ms),
        })
    }

    /// Image uploads and listings.
    pub fn image_library(&self) -> ImageLibrary {
        ImageLibrary::new(
            Arc::new(PgImageRepository::new(self.pool.clone())),
            Arc::new(self.image_store()),
            Arc::new(SystemClock),
            self.config.images.limits(),
            self.config.images.workers(),
        )
    }

    /// Creates the bucket (and its public-read policy when images are served
    /// from `public_base_url`), retrying in the background until the store
    /// answers.
    fn ensure_bucket(&self, shutdown: Shutdown) {
        let store = self.image_store();
        let public = self.config.images.public_base_url.is_some();
        retry_in_background("image bucket", shutdown, move || {
            let store = store.clone();
            async move {
                if store.ensure_bucket().await? {
                    tracing::info!(bucket = store.bucket(), "created the image bucket");
                }
                if public {
                    store.allow_public_read().await?;
                    tracing::info!(
                        bucket = store.bucket(),
                        "anonymous read allowed on the image bucket"
                    );
                }
                Ok(())
            }
        });
    }

    /// Managing sessions once signed in; needs the token keys.
    pub async fn session_lifecycle(&self) -> anyhow::Result<SessionLifecycle> {
        let activity: Arc<dyn ActivityLog> = Arc::new(self.activity_log().await?);
        Ok(SessionLifecycle::new(
            self.authentication()?,
            self.users(),
            Arc::clone(&self.sessions),
            activity,
            Arc::new(SystemClock),
            self.config.sessions.limits(),
        ))
    }

    /// Creates MongoDB's indexes, retrying in the background until MongoDB
    /// answers (a service starts while MongoDB is away).
    async fn ensure_mongo_indexes(&self, shutdown: Shutdown) -> anyhow::Result<()> {
        let log = self.activity_log().await?;
        let retention = self.config.mongo.event_retention();
        retry_in_background("MongoDB indexes", shutdown, move || {
            let log = log.clone();
            async move {
                log.ensure_indexes(retention).await?;
                tracing::info!("MongoDB indexes in place");
                Ok(())
            }
        });
        Ok(())
    }

    fn postgres_probe(&self) -> Arc<dyn DependencyProbe> {
        Arc::new(PgProbe::new(self.pool.clone()))
    }

    fn readiness(&self, service: &'static str) -> Readiness {
        Readiness::new(
            service,
            std::time::Duration::from_millis(self.config.http.ready_timeout_ms),
        )
        .with(self.postgres_probe())
    }

    fn mongo_probe(&self, database: MongoDatabase) -> Arc<dyn DependencyProbe> {
        Arc::new(MongoProbe::new(database))
    }

    /// Binds every service's port and serves until `shutdown` fires; returns
    /// the listeners as soon as they are bound, and a handle that ends when
    /// every service has drained.
    pub async fn start(
        &self,
        shutdown: Shutdown,
    ) -> anyhow::Result<(Vec<Listener>, tokio::task::JoinHandle<anyhow::Result<()>>)> {
        self.start_services(&SERVICES, shutdown).await
    }

    /// As [`Self::start`], for the named services only (`hub serve --only`).
    /// The sessions service brings the relay; every service shares the one
    /// pool, MongoDB client and S3 client of this hub.
    pub async fn start_services(
        &self,
        names: &[&str],
        shutdown: Shutdown,
    ) -> anyhow::Result<(Vec<Listener>, tokio::task::JoinHandle<anyhow::Result<()>>)> {
        if let Some(unknown) = names.iter().find(|n| !SERVICES.contains(n)) {
            anyhow::bail!(
                "unknown service {unknown:?}; the services are {}",
                SERVICES.join(", ")
            );
        }
        let runs = |name: &str| names.contains(&name);
        let services = &self.config.services;
        let http = &self.config.http;
        // What can be checked without the network is checked before a port is taken.
        let needs_tokens = [
            rest_auth::SERVICE,
            sessions::SERVICE,
            sessions::TRACKER,
            grpc_images::SERVICE,
        ]
        .iter()
        .any(|n| runs(n));
        let authentication = if needs_tokens {
            Some(self.authentication()?)
        } else {
            None
        };
        // Every port is bound first, so each service knows every public
        // address before it is built (the WSDL names two of them).
        let ports: [(&'static str, u16, &Option<String>); 6] = [
            (
                rest_auth::SERVICE,
                services.rest_auth.port,
                &services.rest_auth.external_url,
            ),
            (
                soap_register::SERVICE,
                services.soap_register.port,
                &services.soap_register.external_url,
            ),
            (
                soap_lookup::SERVICE,
                services.soap_lookup.port,
                &services.soap_lookup.external_url,
            ),
            (
                sessions::SERVICE,
                services.sessions.port,
                &services.sessions.external_url,
            ),
            (
                sessions::TRACKER,
                services.session_tracker.port,
                &services.session_tracker.external_url,
            ),
            (
                grpc_images::SERVICE,
                services.grpc_images.port,
                &services.grpc_images.external_url,
            ),
        ];
        let mut bound = Vec::new();
        for (name, port, external_url) in ports {
            if runs(name) {
                bound.push(self.bind(name, port, external_url).await?);
            }
        }
        // A service's public address: where it listens here, or where its
        // configuration says it is when another process runs it.
        let address_of = |name: &str| -> String {
            if let Some((_, info)) = bound.iter().find(|(_, info)| info.service == name) {
                return info.external_url.clone();
            }
            let (_, port, external_url) = ports
                .iter()
                .find(|(n, _, _)| *n == name)
                .copied()
                .unwrap_or((name, 0, &None));
            external_url
                .clone()
                .unwrap_or_else(|| format!("http://{}:{port}", services.bind_address))
                .trim_end_matches('/')
                .to_owned()
        };
        let wsdl: Arc<str> = hub_soap::users_wsdl(
            &format!("{}/register", address_of(soap_register::SERVICE)),
            &format!("{}/user/soap", address_of(soap_lookup::SERVICE)),
        )
        .into();
        let limits = hub_soap::Limits {
            max_bytes: self.config.soap.max_body_bytes,
            max_depth: self.config.soap.max_depth,
            max_elements: self.config.soap.max_elements,
        };
        let sessions_run = runs(sessions::SERVICE) || runs(sessions::TRACKER);
        if sessions_run {
            self.ensure_mongo_indexes(shutdown.clone()).await?;
        }
        if runs(grpc_images::SERVICE) {
            self.ensure_bucket(shutdown.clone());
        }
        let relay = if !runs(sessions::SERVICE) {
            None
        } else if self.config.relay.enabled {
            Some(self.relay().await?)
        } else {
            tracing::info!("relay disabled here: another instance delivers the outbox");
            None
        };
        let sessions_state = if sessions_run {
            Some(sessions::SessionsState {
                lifecycle: self.session_lifecycle().await?,
                relay: relay.as_ref().map(Relay::status),
                outbox: self.outbox(),
            })
        } else {
            None
        };
        let missing = |what: &str| anyhow::anyhow!("{what} was not prepared");

        let mut routers = Vec::new();
        for (_, info) in &bound {
            let router = match info.service {
                rest_auth::SERVICE => rest_auth::router(
                    rest_auth::RestAuthState {
                        authentication: authentication
                            .clone()
                            .ok_or_else(|| missing("authentication"))?,
                        registration: self.registration(),
                        database: self.postgres_probe(),
                        limiter: Arc::new(rest_auth::LoginLimiter::new(
                            &services.rest_auth.login_limit,
                        )),
                    },
                    self.readiness(rest_auth::SERVICE).with_metrics(Arc::new(
                        hub_runtime::metrics::HashingMetrics(self.hashing.clone()),
                    )),
                    http,
                    &services.rest_auth,
                ),
                soap_register::SERVICE => soap_register::router(
                    soap_register::SoapRegisterState {
                        registration: self.registration(),
                        wsdl: Arc::clone(&wsdl),
                        limits,
                    },
                    self.readiness(soap_register::SERVICE)
                        .with_metrics(Arc::new(hub_runtime::metrics::HashingMetrics(
                            self.hashing.clone(),
                        ))),
                    http,
                ),
                soap_lookup::SERVICE => soap_lookup::router(
                    soap_lookup::SoapLookupState {
                        directory: self.directory(),
                        wsdl: Arc::clone(&wsdl),
                        limits,
                    },
                    self.readiness(soap_lookup::SERVICE),
                    http,
                    &services.soap_lookup.cors,
                ),
                sessions::SERVICE => sessions::router(
                    sessions_state.clone().ok_or_else(|| missing("sessions"))?,
                    self.readiness(sessions::SERVICE)
                        .reporting(self.mongo_probe(self.mongo().await?)),
                    http,
                    &services.sessions,
                ),
                sessions::TRACKER => sessions::tracker_router(
                    sessions_state.clone().ok_or_else(|| missing("sessions"))?,
                    self.readiness(sessions::TRACKER)
                        .with(self.mongo_probe(self.mongo().await?)),
                    http,
                    &services.session_tracker,
                ),
                grpc_images::SERVICE => self.images_router(&info.external_url)?,
                other => anyhow::bail!("no router for {other}"),
            };
            routers.push(router);
        }

        let mut listeners = Vec::new();
        let mut tasks = JoinSet::new();
        if let Some(cache) = &self.session_cache {
            let (cache, shutdown) = (Arc::clone(cache), shutdown.clone());
            tasks.spawn(async move {
                cache.listen(shutdown.wait()).await;
                Ok(())
            });
        }
        if let Some(relay) = relay {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                relay.run(shutdown.wait()).await;
                Ok(())
            });
        }
        for ((listener, info), router) in bound.into_iter().zip(routers) {
            let service = info.service;
            listeners.push(info);
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(shutdown.wait())
                .await
                .with_context(|| format!("serving {service}"))
            });
        }

        let grace = std::time::Duration::from_secs(http.shutdown_grace_secs);
        let handle = tokio::spawn(async move {
            let drained = async {
                while let Some(done) = tasks.join_next().await {
                    done.context("a service task failed")??;
                }
                anyhow::Ok(())
            };
            // Draining starts with the signal; past the grace period, stop anyway.
            tokio::select! {
                result = drained => result,
                () = async { shutdown.wait().await; tokio::time::sleep(grace).await } => {
                    tracing::warn!(?grace, "in-flight requests did not finish in time");
                    Ok(())
                }
            }
        });
        Ok((listeners, handle))
    }

    fn images_router(&self, external_url: &str) -> anyhow::Result<axum::Router> {
        let tokens = self
            .tokens
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no token signing key"))?;
        let store_probe: Arc<dyn DependencyProbe> = Arc::new(S3Probe::new(self.image_store()));
        grpc_images::router(
            grpc_images::ImagesState {
                library: self.image_library(),
                authentication: self.authentication()?,
                urls: match &self.config.images.public_base_url {
                    Some(base) => grpc_images::PublicUrls::External {
                        base: base.trim_end_matches('/').to_owned(),
                    },
                    None => grpc_images::PublicUrls::Delivered {
                        base: external_url.to_owned(),
                    },
                },
                store_probe: Arc::clone(&store_probe),
                max_message_bytes: self.config.images.max_message_bytes,
            },
            self.readiness(grpc_images::SERVICE).with(store_probe),
            &self.config.http,
            hub_runtime::grpc::BearerAuth::new(tokens, Arc::new(SystemClock)),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn bind(
        &self,
        service: &'static str,
        port: u16,
        external_url: &Option<String>,
    ) -> anyhow::Result<(TcpListener, Listener)> {
        let addr = SocketAddr::new(self.config.services.bind_address, port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {service} to {addr}"))?;
        let local_addr = listener.local_addr()?;
        let external_url = external_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"))
            .trim_end_matches('/')
            .to_owned();
        tracing::info!(service, %local_addr, %external_url, "listening");
        Ok((
            listener,
            Listener {
                service,
                local_addr,
                external_url,
            },
        ))
    }
}
