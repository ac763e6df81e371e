//! The shared wiring: configuration in, stores and use cases out. Every
//! service of a process shares one PostgreSQL pool, one hashing pool, one
//! MongoDB client and one S3 client, built here, and every part that keeps
//! state (budgets, limiters, the image library's pools and uploads in
//! progress) is built once here and handed to each service that uses it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use hub_core::{
    ActivityLog, Administration, Authentication, DependencyProbe, Directory, Factors, HashingPool,
    ImageLibrary, KeySet, Outbox, PasswordHasher, Registration, Relay, SessionLifecycle,
    SessionRepository, SignIn, SignUp, SystemClock, TokenSettings, Tokens, UserRepository,
    VerifiedPasswords,
};
use hub_runtime::LoginLimiter;
use hub_runtime::budgets::AttemptBudgets;
use hub_runtime::config::TokenConfig;
use hub_runtime::service::{Backing, Need};
use hub_runtime::{Config, Readiness, Service};
use hub_soap::{SecurityPolicy, SecuritySettings, WsSecurity};
use hub_store::{
    CachedSessions, CachedUsers, MongoActivityLog, MongoDatabase, MongoProbe, MongoSettings,
    PgImageRepository, PgKnownDevices, PgOutbox, PgProbe, PgReplayGuard, PgSessionRepository,
    PgUserRepository, PoolSettings, S3ObjectStore, S3Probe, S3Settings,
};
use sqlx::PgPool;

/// Everything the services share: one pool, one hashing pool, the use cases.
#[derive(Clone)]
pub struct Hub {
    pub(crate) config: Config,
    pub(crate) pool: PgPool,
    users: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionRepository>,
    pub(crate) hashing: HashingPool,
    pub(crate) tokens: Option<Arc<Tokens>>,
    mongo: Arc<tokio::sync::OnceCell<MongoDatabase>>,
    /// The open-session cache behind `sessions`, when configured; its
    /// listener runs while the services do.
    pub(crate) session_cache: Option<Arc<CachedSessions>>,
    /// The directory read model behind `users`, when configured; its
    /// listener runs while the services do.
    pub(crate) directory_cache: Option<Arc<CachedUsers>>,
    /// Registration and password-check budgets: one per process, so every
    /// service offering them spends the same.
    pub(crate) budgets: Arc<AttemptBudgets>,
    /// Login attempts per client, account and device: one per process, so
    /// every port that signs users in spends the same budgets.
    login_limiter: Arc<LoginLimiter>,
    /// Passwords verified a moment ago (WS-Security UsernameTokens): one
    /// per process, so a lockout drops them for every port.
    verified_passwords: Arc<VerifiedPasswords>,
    /// The parts built on first use, shared by every clone of this hub.
    pub(crate) once: Arc<BuiltOnce>,
}

/// What a process builds at most once, on first use (a command that serves
/// nothing starts no sanitizing threads): every service, and every clone of
/// the [`Hub`], gets the same one.
#[derive(Default)]
pub(crate) struct BuiltOnce {
    /// The S3 client and its connections.
    image_store: OnceLock<S3ObjectStore>,
    /// Its sanitizing pool, upload buffer pool and uploads-in-progress map
    /// are per process: one per service would double the threads and the
    /// pooled bytes, and let a user hold twice their uploads in progress.
    image_library: OnceLock<ImageLibrary>,
    /// Webhook connections kept for the next delivery.
    pub(crate) webhook_transport: OnceLock<Arc<hub_store::HttpWebhooks>>,
    /// The feed slots (events.max_subscribers) are per process.
    pub(crate) event_feeds: OnceLock<hub_core::feed::EventFeeds>,
    /// The ID tokens' RSA key, read (or, unconfigured, made) once.
    id_token_key: OnceLock<Arc<hub_core::IdTokenKey>>,
    /// "Forgot password?" lookups in flight are bounded per process.
    recovery: OnceLock<hub_core::recovery::Recovery>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
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

impl Hub {
    /// Builds the shared parts; connects to nothing yet (the pool is lazy).
    pub fn build(config: Config) -> anyhow::Result<Self> {
        let pool = hub_store::connect_lazy(&PoolSettings {
            url: config.database.url.expose().as_str().into(),
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
        let directory_cache = (config.directory.cache_capacity > 0).then(|| {
            Arc::new(CachedUsers::new(
                pool.clone(),
                config.directory.cache_capacity,
                config.directory.cache_max_age(),
            ))
        });
        let users: Arc<dyn UserRepository> = match &directory_cache {
            Some(cache) => Arc::clone(cache) as Arc<dyn UserRepository>,
            None => Arc::new(PgUserRepository::new(pool.clone())),
        };
        // With the directory on, the session cache runs even at capacity 0:
        // it tells the directory of credential changes and serves profiles.
        let session_cache =
            (config.sessions.cache_capacity > 0 || directory_cache.is_some()).then(|| {
                let cache = CachedSessions::new(
                    pool.clone(),
                    config.sessions.cache_capacity,
                    Duration::from_secs(config.sessions.cache_max_age_secs),
                );
                Arc::new(match &directory_cache {
                    Some(directory) => cache.with_directory(Arc::clone(directory)),
                    None => cache,
                })
            });
        let sessions: Arc<dyn SessionRepository> = match &session_cache {
            Some(cache) => Arc::clone(cache) as Arc<dyn SessionRepository>,
            None => Arc::new(PgSessionRepository::new(pool.clone())),
        };
        let budgets = Arc::new(AttemptBudgets::new(
            &config.limits,
            config.http.client_ipv6_prefix,
        ));
        let login_limiter = Arc::new(LoginLimiter::new(
            &config.services.rest_auth.login_limit,
            config.http.client_ipv6_prefix,
        ));
        let security = &config.soap.security;
        let verified_passwords = Arc::new(
            VerifiedPasswords::new(
                security.credential_cache(),
                security.credential_cache_entries,
            )
            .context("building the verified-credential cache")?,
        );
        Ok(Self {
            budgets,
            login_limiter,
            verified_passwords,
            once: Arc::default(),
            users,
            sessions,
            session_cache,
            directory_cache,
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

    /// How many users still have an insecure imported hash, for /metrics.
    pub(crate) fn insecure_hashes(&self) -> Arc<InsecureHashes> {
        Arc::new(InsecureHashes(self.users()))
    }

    /// `hub users import`: legacy users with the hashes they have.
    pub fn importer(&self) -> hub_core::Importer {
        hub_core::Importer::new(
            self.users(),
            Arc::new(SystemClock),
            self.config.import.ceilings(),
        )
    }

    /// What operators do to accounts (`hub users grant-admin`).
    pub fn administration(&self) -> Administration {
        Administration::new(
            self.users(),
            Arc::clone(&self.sessions),
            Arc::new(SystemClock),
        )
    }

    /// The token keys; a service that signs or verifies tokens needs them.
    pub fn tokens(&self) -> anyhow::Result<Arc<Tokens>> {
        self.tokens.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "no token signing key: set tokens.signing_key_path \
                 (POLYHUB_TOKENS__SIGNING_KEY_PATH); `hub keys generate --out PATH` makes one"
            )
        })
    }

    /// Signing in and out; needs the token keys.
    pub fn authentication(&self) -> anyhow::Result<Authentication> {
        Ok(Authentication::new(
            self.users(),
            Arc::clone(&self.sessions),
            self.hashing.clone(),
            self.tokens()?,
            Arc::new(SystemClock),
            self.config.sessions.lifetime(),
            Arc::new(PgKnownDevices::new(self.pool.clone())),
        )
        .with_insecure_until(self.config.import.insecure_until)
        .with_devices_per_user(
            self.config
                .services
                .rest_auth
                .login_limit
                .max_devices_per_user,
        ))
    }

    /// Registering OAuth clients (`hub clients`); needs no token keys.
    pub fn client_registry(&self) -> hub_core::ClientRegistry {
        hub_core::ClientRegistry::new(
            Arc::new(hub_store::PgOAuthClients::new(self.pool.clone())),
            Arc::clone(&self.sessions),
            Arc::new(SystemClock),
            self.config.oidc.max_clients.max(1),
        )
    }

    /// The ID tokens' key: `oidc.id_token_key_path`, or one made for this
    /// process (with a warning: other instances cannot verify its tokens).
    fn id_token_key(&self) -> anyhow::Result<Arc<hub_core::IdTokenKey>> {
        if let Some(key) = self.once.id_token_key.get() {
            return Ok(Arc::clone(key));
        }
        let key = match &self.config.oidc.id_token_key_path {
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the ID token key {}", path.display()))?;
                hub_core::IdTokenKey::from_pem(&pem)
                    .with_context(|| format!("loading the ID token key {}", path.display()))?
            }
            None => {
                tracing::warn!(
                    "no oidc.id_token_key_path: this process signs ID tokens with a key of its own, \
                     which other instances do not publish; `hub keys generate-id-token --out PATH` makes one to share"
                );
                let pem = hub_core::IdTokenKey::generate_pem()?;
                hub_core::IdTokenKey::from_pem(&pem)?
            }
        };
        let key = Arc::clone(self.once.id_token_key.get_or_init(|| Arc::new(key)));
        tracing::info!(kid = key.jwk().kid, "ID token key loaded");
        Ok(key)
    }

    /// OpenID Connect's code flow (`oidc.*`); needs both token keys.
    pub fn oidc(&self) -> anyhow::Result<hub_core::Oidc> {
        Ok(hub_core::Oidc::new(
            self.oauth()?,
            Arc::new(hub_store::PgOidcStore::new(self.pool.clone())),
            self.authentication()?,
            self.id_token_key()?,
            Arc::new(SystemClock),
            self.config
                .oidc
                .code_flow(self.config.sessions.max_open_per_user),
        ))
    }

    /// The OAuth 2.0 grants (`oidc.*`); needs the token keys.
    pub fn oauth(&self) -> anyhow::Result<hub_core::OAuth> {
        Ok(hub_core::OAuth::new(
            Arc::new(hub_store::PgOAuthClients::new(self.pool.clone())),
            self.authentication()?,
            Arc::new(SystemClock),
            self.config.oidc.settings(),
        ))
    }

    /// SCIM 2.0 provisioning (`scim.*`).
    pub fn scim(&self) -> hub_core::scim::Scim {
        hub_core::scim::Scim::new(
            Arc::new(hub_store::PgScimStore::new(self.pool.clone())),
            Arc::clone(&self.sessions),
            self.hashing.clone(),
            Arc::new(SystemClock),
            self.config.scim.settings(&self.config.oidc.issuer),
        )
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
                    url: config.url.expose().as_str().into(),
                    database: config.database.clone(),
                    server_selection_timeout: Duration::from_millis(
                        config.server_selection_timeout_ms,
                    ),
                })
                .await
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
    /// One client per process: the uploads, the probes and the bucket's
    /// set-up share its connections.
    pub fn image_store(&self) -> S3ObjectStore {
        self.once
            .image_store
            .get_or_init(|| {
                let s3 = &self.config.images.s3;
                S3ObjectStore::new(&S3Settings {
                    endpoint: s3.endpoint.clone(),
                    region: s3.region.clone(),
                    bucket: s3.bucket.clone(),
                    access_key: s3.access_key.clone(),
                    secret_key: s3.secret_key.expose().as_str().into(),
                    timeout: Duration::from_millis(s3.timeout_ms),
                })
            })
            .clone()
    }

    /// Image uploads, listings and public delivery: the process's one
    /// library (its clones share the sanitizing pool, the buffer pool and
    /// the uploads in progress), built on first use.
    pub fn image_library(&self) -> ImageLibrary {
        self.once
            .image_library
            .get_or_init(|| {
                ImageLibrary::new(
                    Arc::new(PgImageRepository::new(self.pool.clone())),
                    Arc::new(self.image_store()),
                    Arc::new(SystemClock),
                    self.config.images.limits(),
                    self.config.images.workers(),
                )
                .with_quota(self.config.images.quota())
                .with_buffer_pool(self.config.images.buffer_pool_bytes)
            })
            .clone()
    }

    /// The process's login limiter, for every port that signs users in.
    pub fn login_limiter(&self) -> Arc<LoginLimiter> {
        Arc::clone(&self.login_limiter)
    }

    /// Signing in, signing up and changing a credential, on the process's
    /// login limiter and attempt budgets: every `SignIn` of a process (the
    /// JSON API's, the console's) spends the same. Needs the token keys.
    pub fn sign_in(&self) -> anyhow::Result<SignIn> {
        Ok(SignIn::new(
            self.authentication()?,
            self.registration(),
            self.login_limiter(),
            Arc::clone(&self.budgets) as Arc<dyn hub_core::AccountBudgets>,
            self.config.services.rest_auth.login_limit.device_lifetime(),
        )
        .with_verified_passwords(Arc::clone(&self.verified_passwords))
        .with_factors(self.factors())
        .with_recovery(self.recovery()?))
    }

    /// Reset links, address verification and new-device notices; mail is
    /// on when `smtp.host` is set.
    pub fn recovery(&self) -> anyhow::Result<hub_core::recovery::Recovery> {
        if let Some(recovery) = self.once.recovery.get() {
            return Ok(recovery.clone());
        }
        let recovery = hub_core::recovery::Recovery::new(
            Arc::new(hub_store::PgRecoveryStore::new(self.pool.clone())),
            self.users(),
            Arc::clone(&self.sessions),
            self.hashing.clone(),
            self.tokens()?,
            Arc::new(SystemClock),
            self.config.smtp.enabled(),
        );
        Ok(self.once.recovery.get_or_init(|| recovery).clone())
    }

    /// The mail subscriber of the event log, when `smtp.host` is set (its
    /// subscription made then: mail events are written only while mail is
    /// on, so none wait for a mailer that is not configured).
    pub async fn mailer(&self) -> anyhow::Result<Option<hub_core::recovery::Mailer>> {
        let smtp = &self.config.smtp;
        let Some(host) = smtp.host.as_deref().filter(|h| !h.trim().is_empty()) else {
            return Ok(None);
        };
        let transport = hub_store::SmtpMail::new(&hub_store::SmtpSettings {
            host: host.trim().to_owned(),
            port: smtp.port,
            security: match smtp.security {
                hub_runtime::config::SmtpSecurityConfig::None => hub_store::SmtpSecurity::None,
                hub_runtime::config::SmtpSecurityConfig::Starttls => {
                    hub_store::SmtpSecurity::StartTls
                }
                hub_runtime::config::SmtpSecurityConfig::Tls => hub_store::SmtpSecurity::Tls,
            },
            username: smtp.username.clone(),
            password: smtp
                .password
                .as_ref()
                .map(|p| secrecy::SecretString::from(p.expose().clone())),
            from: smtp.from.clone(),
            timeout: std::time::Duration::from_millis(smtp.timeout_ms.max(100)),
        })
        .map_err(|e| anyhow::anyhow!(e))?;
        let queue = PgOutbox::for_subscriber(self.pool.clone(), "mail");
        queue
            .subscribe(hub_core::recovery::MAIL_EVENTS)
            .await
            .context("subscribing the mailer to the event log")?;
        Ok(Some(hub_core::recovery::Mailer::new(
            Arc::new(queue),
            Arc::new(transport),
            self.users(),
            self.tokens()?,
            Arc::new(SystemClock),
            hub_core::recovery::MailerSettings {
                base_url: self.config.oidc.issuer.clone(),
                idle_poll: std::time::Duration::from_millis(500),
                max_attempts: 20,
            },
        )))
    }

    /// Second factors: TOTP, passkeys (when a relying party is
    /// configured), recovery codes and the sign-in tickets.
    pub fn factors(&self) -> Factors {
        let factors = Factors::new(
            Arc::new(hub_store::PgFactorStore::new(self.pool.clone())),
            Arc::clone(&self.sessions),
            Arc::new(SystemClock),
            self.config.auth.totp_issuer.clone(),
        )
        .requiring_admins(self.config.auth.require_mfa_for_admins);
        match self.passkeys() {
            Some(passkeys) => factors.with_passkeys(passkeys),
            None => factors,
        }
    }

    /// Passkeys, when `webauthn` (or `oidc.issuer`) names a host.
    fn passkeys(&self) -> Option<hub_core::passkeys::Passkeys> {
        let settings = match self.config.webauthn.settings(&self.config.oidc.issuer) {
            Ok(settings) => settings,
            Err(why) => {
                tracing::debug!("{why}");
                return None;
            }
        };
        match hub_core::passkeys::Passkeys::new(
            &settings,
            Arc::new(hub_store::PgPasskeyStore::new(self.pool.clone())),
            Arc::new(SystemClock),
        ) {
            Ok(passkeys) => Some(passkeys),
            Err(e) => {
                tracing::warn!(error = %e, "passkeys are off");
                None
            }
        }
    }

    /// The SOAP services' WS-Security processor, when an operation's policy
    /// takes a header; it verifies passwords and tokens, so it needs the
    /// token keys then.
    pub fn ws_security(&self) -> anyhow::Result<Option<Arc<WsSecurity>>> {
        let security = &self.config.soap.security;
        if security.register_user == SecurityPolicy::None
            && security.lookup_user == SecurityPolicy::None
        {
            return Ok(None);
        }
        let sign_in = self.sign_in().context(
            "WS-Security (soap.security.register_user or lookup_user not `none`) checks passwords and tokens",
        )?;
        Ok(Some(Arc::new(WsSecurity::new(
            sign_in,
            self.authentication()?,
            Arc::new(PgReplayGuard::new(self.pool.clone())),
            Arc::clone(&self.budgets),
            Arc::new(SystemClock),
            SecuritySettings {
                clock_skew: security.clock_skew(),
                max_age: security.max_age(),
            },
        ))))
    }

    /// Registration with the process's per-client budget, for every port
    /// that registers; needs no token keys.
    pub fn sign_up(&self) -> SignUp {
        SignUp::new(
            self.registration(),
            Arc::clone(&self.budgets) as Arc<dyn hub_core::AccountBudgets>,
        )
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

    /// The probe of one backing store, for `/ready`.
    async fn probe(&self, backing: Backing) -> anyhow::Result<Arc<dyn DependencyProbe>> {
        Ok(match backing {
            Backing::Postgres => Arc::new(PgProbe::new(self.pool.clone())),
            Backing::Mongo => Arc::new(MongoProbe::new(self.mongo().await?)),
            Backing::ObjectStore => Arc::new(S3Probe::new(self.image_store())),
        })
    }

    /// `service`'s readiness: a probe of each backing store the registry
    /// names for it, required or only reported as the registry says.
    pub(crate) async fn readiness(&self, service: Service) -> anyhow::Result<Readiness> {
        let mut readiness = Readiness::new(
            service.name(),
            Duration::from_millis(self.config.http.ready_timeout_ms),
        );
        for (backing, need) in service.backing() {
            let probe = self.probe(*backing).await?;
            readiness = match need {
                Need::Required => readiness.with(probe),
                Need::Reported => readiness.reporting(probe),
            };
        }
        Ok(readiness)
    }

    /// Creates what the running services need in the stores (the image
    /// bucket, MongoDB's indexes), each retried in the background until its
    /// store answers, so a service starts while a store is away.
    pub(crate) async fn prepare_stores(
        &self,
        services: &[Service],
        stop: hub_runtime::Shutdown,
    ) -> anyhow::Result<()> {
        let uses = |backing| services.iter().any(|s| s.uses(backing));
        if uses(Backing::Mongo) {
            let log = self.activity_log().await?;
            let retention = self.config.mongo.event_retention();
            hub_store::prepare_in_background("MongoDB indexes", stop.clone().wait(), move || {
                let log = log.clone();
                async move { log.prepare(retention).await }
            });
        }
        if uses(Backing::ObjectStore) {
            let store = self.image_store();
            let public = self.config.images.public_base_url.is_some();
            hub_store::prepare_in_background("image bucket", stop.wait(), move || {
                let store = store.clone();
                async move { store.prepare(public).await }
            });
        }
        Ok(())
    }
}

/// `polyhub_users_insecure_hashes`: users whose imported hash is a bare
/// digest, still waiting for the login that upgrades it.
pub(crate) struct InsecureHashes(Arc<dyn UserRepository>);

#[async_trait::async_trait]
impl hub_runtime::metrics::MetricsSource for InsecureHashes {
    async fn collect(&self, out: &mut hub_runtime::metrics::Exposition) {
        match self.0.count_insecure_hashes().await {
            Ok(count) => {
                out.family(
                    "gauge",
                    "polyhub_users_insecure_hashes",
                    "Users whose imported hash is a bare MD5/SHA digest (refused at login after import.insecure_until).",
                )
                .sample("polyhub_users_insecure_hashes", &[], count as f64);
            }
            Err(e) => tracing::debug!(error = %e, "insecure hashes not counted"),
        }
    }
}

/// `polyhub_directory_cache_*`: the directory read model's size, whether it
/// is on, and how its reads were answered (the hit rate is hits over hits
/// plus misses).
pub(crate) struct DirectoryMetrics(pub(crate) Arc<CachedUsers>);

#[async_trait::async_trait]
impl hub_runtime::metrics::MetricsSource for DirectoryMetrics {
    async fn collect(&self, out: &mut hub_runtime::metrics::Exposition) {
        let stats = self.0.stats();
        out.gauge(
            "polyhub_directory_cache_listening",
            "1 while the directory cache's change listener is connected (the cache is used only then).",
            f64::from(u8::from(stats.listening)),
        )
        .counter(
            "polyhub_directory_cache_connections_total",
            "Times the directory cache's change listener connected; past 1, each is a reconnection after a loss (the cache restarts empty).",
            stats.connections,
        )
        .gauge(
            "polyhub_directory_cache_capacity",
            "Users the directory cache may hold (directory.cache_capacity).",
            stats.capacity as f64,
        );
        out.family(
            "gauge",
            "polyhub_directory_cache_entries",
            "Entries in the directory cache: users, and names known to be free.",
        )
        .sample(
            "polyhub_directory_cache_entries",
            &[("kind", "user")],
            stats.users as f64,
        )
        .sample(
            "polyhub_directory_cache_entries",
            &[("kind", "missing")],
            stats.missing as f64,
        );
        out.family(
            "counter",
            "polyhub_directory_cache_reads_total",
            "Directory reads: hit (answered from memory), miss (asked PostgreSQL), bypass (cache off, asked PostgreSQL).",
        )
        .sample("polyhub_directory_cache_reads_total", &[("result", "hit")], stats.hits as f64)
        .sample("polyhub_directory_cache_reads_total", &[("result", "miss")], stats.misses as f64)
        .sample("polyhub_directory_cache_reads_total", &[("result", "bypass")], stats.bypassed as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::{ErrorCode, Principal, Role, SessionId, UserId};

    /// Every service gets its stateful parts from the hub, so asking twice,
    /// or asking a clone, must give the same ones.
    #[tokio::test]
    async fn stateful_parts_are_built_once_per_process() {
        let mut config = Config::default();
        config.images.max_uploads_per_user = 1;
        let hub = Hub::build(config).unwrap();
        let other = hub.clone();
        assert!(Arc::ptr_eq(&hub.login_limiter(), &other.login_limiter()));
        assert!(Arc::ptr_eq(&hub.budgets, &other.budgets));

        let user = Principal {
            user_id: UserId::generate(),
            session_id: SessionId::generate(),
            role: Role::User,
            expires_at: time::OffsetDateTime::now_utc(),
        };
        let held = hub.image_library().begin_upload(&user).unwrap();
        assert_eq!(other.image_library().uploads_in_progress(), 1);
        let refused = other.image_library().begin_upload(&user).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::UploadsInProgress);
        drop(held);
        assert_eq!(hub.image_library().uploads_in_progress(), 0);

        // A buffer given back by one service's upload is there for another's.
        let mut upload = hub.image_library().new_upload();
        upload.push([0u8; 4096]).unwrap();
        drop(upload);
        assert!(other.image_library().pooled_buffer_bytes() >= 4096);
    }
}
