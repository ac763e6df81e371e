//! Typed configuration, in one place: defaults, then an optional TOML file, then
//! `POLYHUB_*` environment variables (`POLYHUB_DATABASE__URL` sets
//! `database.url`). Unknown keys are errors, so a misspelt setting fails the
//! start instead of being silently ignored.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::secret::Secret;
use crate::service::Service;

/// The environment variable that names the config file (read by the binaries).
pub const CONFIG_FILE_VAR: &str = "POLYHUB_CONFIG";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub hashing: HashingConfig,
    pub http: HttpConfig,
    pub tokens: TokenConfig,
    pub auth: AuthConfig,
    pub webauthn: WebauthnConfig,
    pub smtp: SmtpConfig,
    pub sessions: SessionConfig,
    pub directory: DirectoryConfig,
    pub mongo: MongoConfig,
    pub relay: RelayConfig,
    pub webhooks: WebhooksConfig,
    pub events: EventsConfig,
    pub oidc: OidcConfig,
    pub scim: ScimConfig,
    pub images: ImagesConfig,
    pub soap: SoapConfig,
    pub limits: LimitsConfig,
    pub import: ImportConfig,
    pub console: ConsoleConfig,
    pub services: ServicesConfig,
}

impl Config {
    /// Defaults, then `file` when given, then `POLYHUB_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment
            .merge(Env::prefixed("POLYHUB_").ignore(&["config"]).split("__"))
            .extract()
            .map_err(Box::new)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`; never printed.
    pub url: Secret<String>,
    pub max_connections: u32,
    pub min_connections: u32,
    /// How long a request waits for a pooled connection before UNAVAILABLE.
    pub acquire_timeout_ms: u64,
    pub idle_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/polyhub".to_owned()),
            max_connections: 16,
            min_connections: 0,
            acquire_timeout_ms: 3_000,
            idle_timeout_secs: 300,
        }
    }
}

impl DatabaseConfig {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive (`info`, `hub_core=debug,info`); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Plain,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashingConfig {
    /// PBKDF2 iterations; may only be raised above hub-core's floor (600,000).
    pub iterations: u32,
    /// Hashes running at once; 0 means one per core.
    pub workers: usize,
    /// Requests that may wait for a hashing worker; 0 means 32 per worker.
    pub max_waiting: usize,
    pub max_wait_ms: u64,
    /// Places one client (an address, or an IPv6 network) may hold in the
    /// pool, running or waiting; 0 means a quarter of workers + max_waiting.
    pub max_per_client: usize,
}

impl Default for HashingConfig {
    fn default() -> Self {
        Self {
            iterations: hub_core::PasswordHasher::MIN_ITERATIONS,
            workers: 0,
            max_waiting: 0,
            max_wait_ms: 10_000,
            max_per_client: 0,
        }
    }
}

impl HashingConfig {
    pub fn pool_config(&self) -> hub_core::WorkPoolConfig {
        let defaults = hub_core::WorkPoolConfig::default();
        let workers = if self.workers == 0 {
            defaults.workers
        } else {
            self.workers
        };
        hub_core::WorkPoolConfig {
            workers,
            max_waiting: if self.max_waiting == 0 {
                workers * 32
            } else {
                self.max_waiting
            },
            max_wait: Duration::from_millis(self.max_wait_ms),
            max_per_client: self.max_per_client,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body any HTTP service reads.
    pub max_body_bytes: usize,
    /// How long a readiness check may take before the dependency counts as down.
    pub ready_timeout_ms: u64,
    /// How long in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// How long a client has to send a request's head; hyper's timer runs
    /// while it waits for the next request too, so an idle keep-alive
    /// connection is closed after this long.
    pub header_read_timeout_ms: u64,
    /// How long a request body may take, unless it keeps arriving at
    /// `min_body_bytes_per_sec` or faster (large uploads).
    pub body_read_timeout_ms: u64,
    pub min_body_bytes_per_sec: u64,
    /// A connection on which no byte moves either way for this long is closed
    /// (HTTP/2 included, which has no header timer).
    pub idle_timeout_ms: u64,
    /// How long a request may take from its head to its response's head.
    pub request_timeout_ms: u64,
    /// Connections one listener serves fully; past it, `reserve_connections`
    /// more answer only health and readiness, and the rest are closed.
    pub max_connections: usize,
    pub reserve_connections: usize,
    /// Connections one client may hold on one listener (an IPv4 address, or
    /// an IPv6 network of `client_ipv6_prefix` bits).
    pub max_connections_per_client: usize,
    pub client_ipv6_prefix: u8,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// The largest HTTP/2 frame a client may send (16 KiB to 16 MiB less
    /// one byte; clamped into that range). A connection buffers at most
    /// one frame it is reading, and fewer, larger frames make an upload
    /// cheaper on both ends.
    pub max_frame_bytes: u32,
    /// Which requests get an access line: `all`, `errors` or `off`.
    pub access_log: AccessLogMode,
    /// With `all`: one in this many successful requests is written (errors
    /// always are); 1 writes every one.
    pub access_log_sample: u32,
    /// Cookies the hub sets are `Secure` (sent over HTTPS only); turn off
    /// only for plain-HTTP loopback use.
    pub secure_cookies: bool,
    /// Gateways whose `X-Forwarded-For` names the client (addresses or
    /// networks, `["127.0.0.1", "10.0.0.0/8"]`); none by default, and a
    /// header from any other peer is ignored.
    pub trusted_proxies: Vec<crate::forwarded::ProxyNet>,
}

/// Which requests the access log writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogMode {
    #[default]
    All,
    Errors,
    Off,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            ready_timeout_ms: 2_000,
            shutdown_grace_secs: 20,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            min_body_bytes_per_sec: 64 * 1024,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 120_000,
            max_connections: 1_024,
            reserve_connections: 32,
            max_connections_per_client: 128,
            client_ipv6_prefix: 64,
            max_streams_per_connection: 100,
            max_frame_bytes: 256 * 1024,
            access_log: AccessLogMode::All,
            access_log_sample: 1,
            secure_cookies: true,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    /// Access-token lifetime; a token never outlives its session either.
    pub lifetime_secs: u64,
    /// The current Ed25519 private key (PKCS#8 PEM); `hub keys generate` makes one.
    pub signing_key_path: Option<PathBuf>,
    /// Public keys (PEM) of earlier signing keys whose tokens still verify.
    pub previous_public_key_paths: Vec<PathBuf>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "polyhub".to_owned(),
            audience: "polyhub".to_owned(),
            lifetime_secs: 15 * 60,
            signing_key_path: None,
            previous_public_key_paths: Vec::new(),
        }
    }
}

impl TokenConfig {
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime_secs)
    }
}

/// Sign-in rules beyond the password.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Admins sign in with a second factor; an admin without one sets up
    /// an authenticator app at the next sign-in, before any session opens.
    pub require_mfa_for_admins: bool,
    /// The name authenticator apps show beside the account (the label's
    /// issuer in the `otpauth://` URI).
    pub totp_issuer: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            require_mfa_for_admins: false,
            totp_issuer: "polyhub".to_owned(),
        }
    }
}

/// Passkeys (WebAuthn). They are bound to a host name (the RP ID), never
/// an IP address: with neither set here nor a host name in `oidc.issuer`,
/// passkeys are off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebauthnConfig {
    /// The RP ID: the console's host name or a parent domain of it. Unset:
    /// the host of `origin`.
    pub rp_id: Option<String>,
    /// The console's origin, as browsers show it. Unset: `oidc.issuer`.
    pub origin: Option<String>,
    /// The name authenticators show.
    pub rp_name: String,
    /// Takes the origin's host on any port (development only).
    pub allow_any_port: bool,
}

impl Default for WebauthnConfig {
    fn default() -> Self {
        Self {
            rp_id: None,
            origin: None,
            rp_name: "polyhub".to_owned(),
            allow_any_port: false,
        }
    }
}

impl WebauthnConfig {
    /// The relying party, or why passkeys are off.
    pub fn settings(&self, issuer: &str) -> Result<hub_core::passkeys::PasskeySettings, String> {
        let origin = self.origin.clone().unwrap_or_else(|| issuer.to_owned());
        let host = origin
            .split_once("://")
            .map(|(_, rest)| rest.split(['/', ':']).next().unwrap_or_default())
            .unwrap_or_default()
            .to_owned();
        let rp_id = self.rp_id.clone().unwrap_or(host);
        if rp_id.is_empty() || rp_id.parse::<std::net::IpAddr>().is_ok() || rp_id.starts_with('[') {
            return Err(format!(
                "passkeys are off: the RP ID {rp_id:?} is not a host name (set webauthn.rp_id and webauthn.origin)"
            ));
        }
        Ok(hub_core::passkeys::PasskeySettings {
            rp_id,
            origin,
            rp_name: self.rp_name.clone(),
            allow_any_port: self.allow_any_port,
        })
    }
}

/// How the connection to the mail server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurityConfig {
    /// Plain SMTP: a relay on the same host, or a test server.
    None,
    /// STARTTLS, required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// Mail: password reset links, address verification, new-device notices.
/// With no `host`, mail is off: the pages say so, and an address change
/// takes effect without a link.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: Option<String>,
    pub port: u16,
    pub security: SmtpSecurityConfig,
    pub username: Option<String>,
    pub password: Option<Secret<String>>,
    /// The sender, `Name <address>` or an address.
    pub from: String,
    /// One send's limit, connection included.
    pub timeout_ms: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: 587,
            security: SmtpSecurityConfig::Starttls,
            username: None,
            password: None,
            from: "polyhub <no-reply@localhost>".to_owned(),
            timeout_ms: 10_000,
        }
    }
}

impl SmtpConfig {
    /// Whether mail is on.
    pub fn enabled(&self) -> bool {
        self.host.as_deref().is_some_and(|h| !h.trim().is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// How long a session stays open after login (or after its last touch
    /// through the sessions service) unless revoked.
    pub lifetime_secs: u64,
    /// How long a session can be kept alive by touching it, from its login.
    pub max_lifetime_secs: u64,
    /// Open sessions remembered in memory (invalidated by PostgreSQL
    /// notifications); 0 turns the cache off.
    pub cache_capacity: usize,
    /// The longest any remembered session is trusted without asking again.
    pub cache_max_age_secs: u64,
    /// Open sessions a user may have before another one opened from a
    /// token (`POST /api/sessions`) is refused with QUOTA_EXCEEDED.
    pub max_open_per_user: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            lifetime_secs: 12 * 60 * 60,
            max_lifetime_secs: 7 * 24 * 60 * 60,
            cache_capacity: 100_000,
            cache_max_age_secs: 30,
            max_open_per_user: hub_core::lifecycle::DEFAULT_MAX_OPEN_SESSIONS,
        }
    }
}

/// The directory read model: users remembered in memory for lookups and
/// `/profile`, invalidated by PostgreSQL notifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Users remembered (and an eighth of that in names known to be free);
    /// 0 turns the cache off.
    pub cache_capacity: usize,
    /// The longest any remembered user is trusted without asking again.
    pub cache_max_age_secs: u64,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 100_000,
            cache_max_age_secs: 30,
        }
    }
}

impl DirectoryConfig {
    pub fn cache_max_age(&self) -> Duration {
        Duration::from_secs(self.cache_max_age_secs)
    }
}

impl SessionConfig {
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime_secs)
    }

    pub fn limits(&self) -> hub_core::SessionLimits {
        hub_core::SessionLimits {
            lifetime: self.lifetime(),
            max_lifetime: Duration::from_secs(self.max_lifetime_secs.max(self.lifetime_secs)),
            max_open: self.max_open_per_user.max(1),
        }
    }
}

/// MongoDB: session activity and last connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoConfig {
    /// `mongodb://host:port/?options`; never printed.
    pub url: Secret<String>,
    pub database: String,
    /// How long an operation waits for a reachable server before UNAVAILABLE.
    pub server_selection_timeout_ms: u64,
    /// How long session events are kept (a TTL index).
    pub event_retention_days: u64,
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("mongodb://127.0.0.1:27017/".to_owned()),
            database: "polyhub".to_owned(),
            server_selection_timeout_ms: 2_000,
            event_retention_days: 90,
        }
    }
}

impl MongoConfig {
    pub fn event_retention(&self) -> Duration {
        Duration::from_secs(self.event_retention_days * 24 * 60 * 60)
    }
}

/// The outbox relay of the sessions service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Off: this process does not relay (another instance does).
    pub enabled: bool,
    pub batch_size: u32,
    pub idle_poll_ms: u64,
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// How long delivered events stay in the PostgreSQL outbox.
    pub keep_delivered_hours: u64,
    /// Times the activity log may refuse one event (not be away: refuse it)
    /// before the event is quarantined.
    pub max_attempts: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let core = hub_core::RelaySettings::default();
        Self {
            enabled: true,
            batch_size: core.batch_size,
            idle_poll_ms: millis(core.idle_poll),
            min_backoff_ms: millis(core.min_backoff),
            max_backoff_ms: millis(core.max_backoff),
            keep_delivered_hours: core.keep_delivered.as_secs() / 3600,
            max_attempts: core.max_attempts,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RelayConfig {
    pub fn settings(&self) -> hub_core::RelaySettings {
        hub_core::RelaySettings {
            batch_size: self.batch_size.max(1),
            idle_poll: Duration::from_millis(self.idle_poll_ms),
            min_backoff: Duration::from_millis(self.min_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms.max(self.min_backoff_ms)),
            keep_delivered: Duration::from_secs(self.keep_delivered_hours * 3600),
            max_attempts: self.max_attempts.max(1),
        }
    }
}

/// Webhook endpoints and their delivery (docs/EVENTS.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Off: this process does not deliver (another instance does). On, it
    /// delivers where the sessions service runs, like the relay.
    pub enabled: bool,
    /// Networks webhooks may reach although they are loopback or private
    /// (CIDRs or addresses); nothing else that is not public.
    pub allowed_networks: Vec<crate::forwarded::ProxyNet>,
    pub max_endpoints: usize,
    pub connect_timeout_ms: u64,
    /// The whole exchange of one delivery.
    pub timeout_ms: u64,
    /// The most of a receiver's answer read.
    pub max_response_bytes: usize,
    pub batch_size: u32,
    /// Users' events delivered side by side, per endpoint.
    pub concurrency: usize,
    pub idle_poll_ms: u64,
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// An endpoint failing this long is disabled.
    pub disable_after_hours: u64,
    /// How long a rotated secret still signs beside the new one.
    pub rotation_grace_hours: u64,
    /// Endpoints delivering at once (each holds a database connection
    /// while it delivers a batch).
    pub max_busy_endpoints: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let core = hub_core::DispatchSettings::default();
        Self {
            enabled: true,
            allowed_networks: Vec::new(),
            max_endpoints: 50,
            connect_timeout_ms: 5_000,
            timeout_ms: 15_000,
            max_response_bytes: 4096,
            batch_size: core.batch_size,
            concurrency: core.concurrency,
            idle_poll_ms: millis(core.idle_poll),
            min_backoff_ms: millis(core.min_backoff),
            max_backoff_ms: millis(core.max_backoff),
            disable_after_hours: core.disable_after.as_secs() / 3600,
            rotation_grace_hours: 24,
            max_busy_endpoints: core.max_busy_endpoints,
        }
    }
}

impl WebhooksConfig {
    /// One delivery's time, at most 25 s: a round (30 s) plus one delivery
    /// must fit in the queue's lease (60 s).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.clamp(100, 25_000))
    }

    pub fn dispatch(&self) -> hub_core::DispatchSettings {
        hub_core::DispatchSettings {
            batch_size: self.batch_size.clamp(1, 10_000),
            concurrency: self.concurrency.clamp(1, 256),
            idle_poll: Duration::from_millis(self.idle_poll_ms.max(1)),
            min_backoff: Duration::from_millis(self.min_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms.max(self.min_backoff_ms)),
            disable_after: Duration::from_secs(self.disable_after_hours.max(1) * 3600),
            refresh: hub_core::DispatchSettings::default().refresh,
            max_busy_endpoints: self.max_busy_endpoints.max(1),
        }
    }

    pub fn limits(&self) -> hub_core::webhooks::WebhookLimits {
        hub_core::webhooks::WebhookLimits {
            max_endpoints: self.max_endpoints,
            rotation_grace: Duration::from_secs(self.rotation_grace_hours * 3600),
        }
    }
}

/// The live event feeds: the WebSocket on rest-auth's port and the gRPC
/// `Events/Watch` stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Feeds open at once, per process; one more is refused (503).
    pub max_subscribers: usize,
    /// Events waiting for one slow reader; a full buffer closes its feed.
    pub buffer: usize,
    /// How often a feed looks for new events.
    pub poll_ms: u64,
    /// How often a feed checks that its caller is still an admin with a
    /// valid token.
    pub recheck_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_subscribers: 64,
            buffer: 1024,
            poll_ms: 100,
            recheck_secs: 30,
        }
    }
}

impl EventsConfig {
    pub fn feed(&self) -> hub_core::feed::FeedSettings {
        hub_core::feed::FeedSettings {
            buffer: self.buffer.clamp(1, 1_000_000),
            poll: Duration::from_millis(self.poll_ms.max(10)),
            recheck: Duration::from_secs(self.recheck_secs.max(1)),
            batch: 500,
        }
    }
}

/// The OAuth 2.0 / OpenID Connect provider on rest-auth's port
/// (docs/OIDC.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL: what clients discover and `iss` of every token
    /// issued through it; the public origin of rest-auth's port.
    pub issuer: String,
    /// How long a client-credentials access token lasts.
    pub access_token_lifetime_secs: u64,
    /// The most clients that can be registered.
    pub max_clients: usize,
    /// The RSA private key (PKCS#8 PEM) that signs ID tokens (RS256);
    /// `hub keys generate-id-token` makes one. Unset: each process makes
    /// its own at start, which only a single instance can use.
    pub id_token_key_path: Option<PathBuf>,
    /// How long an authorization code may wait for its exchange.
    pub code_lifetime_secs: u64,
    /// How long an ID token is valid.
    pub id_token_lifetime_secs: u64,
}

/// SCIM 2.0 provisioning (`/scim/v2` on rest-auth's port).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScimConfig {
    /// Groups whose members are admins while they are in them, by
    /// displayName (compared case-insensitively): how a directory decides
    /// who is admin. Empty: no group grants a role.
    pub admin_groups: Vec<String>,
    /// The most resources one page of a query holds.
    pub max_results: u32,
    /// The most members one group may have.
    pub max_members: usize,
}

impl Default for ScimConfig {
    fn default() -> Self {
        Self {
            admin_groups: Vec::new(),
            max_results: 200,
            max_members: 10_000,
        }
    }
}

impl ScimConfig {
    /// The use case's settings; `issuer` is rest-auth's public origin.
    pub fn settings(&self, issuer: &str) -> hub_core::scim::ScimSettings {
        hub_core::scim::ScimSettings {
            base_url: format!("{}/scim/v2", issuer.trim_end_matches('/')),
            admin_groups: self.admin_groups.clone(),
            max_results: self.max_results.clamp(1, 1000),
            max_members: self.max_members.max(1),
        }
    }
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:5001".to_owned(),
            access_token_lifetime_secs: 600,
            max_clients: 1000,
            id_token_key_path: None,
            code_lifetime_secs: 60,
            id_token_lifetime_secs: 300,
        }
    }
}

impl OidcConfig {
    pub fn settings(&self) -> hub_core::OAuthSettings {
        hub_core::OAuthSettings {
            issuer: self.issuer.trim_end_matches('/').to_owned(),
            // Between a minute and a day.
            access_token_lifetime: Duration::from_secs(
                self.access_token_lifetime_secs.clamp(60, 86_400),
            ),
        }
    }

    /// The code flow's settings; `max_open_sessions` is
    /// `sessions.max_open_per_user` (a grant is a session).
    pub fn code_flow(&self, max_open_sessions: u32) -> hub_core::OidcSettings {
        hub_core::OidcSettings {
            // RFC 6749 §4.1.2: a code lives ten minutes at most.
            code_lifetime: Duration::from_secs(self.code_lifetime_secs.clamp(1, 600)),
            id_token_lifetime: Duration::from_secs(self.id_token_lifetime_secs.clamp(60, 86_400)),
            max_open_sessions,
        }
    }
}

/// Image uploads and the object store they go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Bytes one upload may carry; passing it ends the stream.
    pub max_bytes: usize,
    /// Pixels an image header may declare (against decompression bombs).
    pub max_pixels: u64,
    /// The largest gRPC message (one upload chunk) accepted.
    pub max_message_bytes: usize,
    /// Uploads sanitized at once; 0 means one per core.
    pub sanitize_workers: usize,
    /// Where anyone reads stored images. Unset: this service delivers them
    /// at `{external_url}/images/{key}`. Set (a store with anonymous read,
    /// or a CDN): `{public_base_url}/{key}`, and the bucket gets an
    /// anonymous-read policy at start.
    pub public_base_url: Option<String>,
    /// An upload stream that sends nothing for this long is ended
    /// (DEADLINE_EXCEEDED) and its buffer freed.
    pub stall_timeout_ms: u64,
    /// Uploads one user may have in progress at once.
    pub max_uploads_per_user: usize,
    /// Images, and bytes as stored, one user may keep.
    pub max_images_per_user: u64,
    pub max_bytes_per_user: u64,
    /// Bytes of upload buffers kept for reuse, idle and lent out together
    /// (counted by capacity); past it a finished upload's buffer is freed.
    /// 0 keeps none.
    pub buffer_pool_bytes: usize,
    pub s3: S3Config,
}

impl ImagesConfig {
    pub fn quota(&self) -> hub_core::ImageQuota {
        hub_core::ImageQuota {
            max_images: self.max_images_per_user,
            max_bytes: self.max_bytes_per_user,
            max_uploads_in_progress: self.max_uploads_per_user,
        }
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms.max(1))
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        let core = hub_core::ImageLimits::default();
        Self {
            max_bytes: core.max_bytes,
            max_pixels: core.max_pixels,
            max_message_bytes: 4 * 1024 * 1024,
            sanitize_workers: 0,
            public_base_url: None,
            stall_timeout_ms: 10_000,
            max_uploads_per_user: hub_core::ImageQuota::default().max_uploads_in_progress,
            max_images_per_user: hub_core::ImageQuota::default().max_images,
            max_bytes_per_user: hub_core::ImageQuota::default().max_bytes,
            buffer_pool_bytes: hub_core::DEFAULT_BUFFER_POOL_BYTES,
            s3: S3Config::default(),
        }
    }
}

impl ImagesConfig {
    pub fn limits(&self) -> hub_core::ImageLimits {
        hub_core::ImageLimits {
            max_bytes: self.max_bytes,
            max_pixels: self.max_pixels,
        }
    }

    pub fn workers(&self) -> usize {
        if self.sanitize_workers == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            self.sanitize_workers
        }
    }
}

/// An S3 (or S3-compatible) store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `http://host:port` of a compatible store; unset for AWS S3 itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    /// Never printed.
    pub secret_key: Secret<String>,
    /// How long one store operation may take before the store counts as away.
    pub timeout_ms: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".to_owned(),
            bucket: "polyhub-images".to_owned(),
            access_key: String::new(),
            secret_key: Secret::new(String::new()),
            timeout_ms: 5_000,
        }
    }
}

/// Bounds on reading a SOAP message: what one request may cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoapConfig {
    pub max_body_bytes: usize,
    pub max_depth: usize,
    pub max_elements: usize,
    /// WS-Security: who may call each operation, and how a header is checked.
    pub security: SoapSecurityConfig,
}

impl Default for SoapConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_depth: 32,
            max_elements: 1_000,
            security: SoapSecurityConfig::default(),
        }
    }
}

/// Whether a SOAP operation takes a WS-Security header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityPolicy {
    /// No header is processed: a `wsse:Security` marked mustUnderstand is a
    /// MustUnderstand fault, and every caller is anonymous.
    None,
    /// A header is checked when sent; without one the caller is anonymous.
    Optional,
    /// Every call must carry a valid header; the WSDL says so
    /// (WS-SecurityPolicy 1.3).
    Required,
}

impl SecurityPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::None => "none",
            SecurityPolicy::Optional => "optional",
            SecurityPolicy::Required => "required",
        }
    }
}

/// WS-Security (OASIS WSS 1.1, UsernameToken Profile 1.1) on the SOAP
/// services.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoapSecurityConfig {
    /// The policy of soap-register's RegisterUser.
    pub register_user: SecurityPolicy,
    /// The policy of soap-lookup's LookupUser (and its legacy GET, which
    /// carries no header: refused when `required`).
    pub lookup_user: SecurityPolicy,
    /// How far a sender's clock may be ahead of ours (a Created in the
    /// future) or behind (an Expires just past).
    pub clock_skew_seconds: u64,
    /// How old a Created (the Timestamp's or the UsernameToken's) may be;
    /// also how long a Nonce is remembered against replays.
    pub max_age_seconds: u64,
    /// How long a verified UsernameToken password is remembered, so a
    /// client sending it on every call does not cost a hash on every call;
    /// 0 hashes every call.
    pub credential_cache_seconds: u64,
    /// At most this many remembered verifications.
    pub credential_cache_entries: usize,
}

impl Default for SoapSecurityConfig {
    fn default() -> Self {
        Self {
            register_user: SecurityPolicy::Optional,
            lookup_user: SecurityPolicy::Optional,
            clock_skew_seconds: 60,
            max_age_seconds: 300,
            credential_cache_seconds: 300,
            credential_cache_entries: hub_core::verified::DEFAULT_CAPACITY,
        }
    }
}

impl SoapSecurityConfig {
    pub fn clock_skew(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.clock_skew_seconds)
    }

    pub fn max_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.max_age_seconds)
    }

    pub fn credential_cache(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.credential_cache_seconds)
    }
}

/// A service that only needs a port and its public address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub port: u16,
    /// The URL clients reach this service at (behind a proxy, its public
    /// address); defaults to the bound address.
    #[serde(default)]
    pub external_url: Option<String>,
}

/// soap-lookup: a port, its public address, and its strict CORS list.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoapLookupConfig {
    pub port: u16,
    pub external_url: Option<String>,
    pub cors: CorsConfig,
}

impl Default for SoapLookupConfig {
    fn default() -> Self {
        Self {
            port: Service::SoapLookup.default_port(),
            external_url: None,
            cors: CorsConfig::default(),
        }
    }
}

/// Which browser origins may call a service. Empty: none.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
    pub allow_credentials: bool,
}

/// Login attempts allowed per client address, per account and per known
/// device: a burst, then one more every `replenish_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginLimitConfig {
    pub per_ip_burst: u32,
    pub per_ip_replenish_ms: u64,
    /// Attempts on one account from devices that have not signed in to it
    /// before: the lockout against guessing.
    pub per_user_burst: u32,
    pub per_user_replenish_ms: u64,
    /// Failed attempts a device that has signed in to the account before
    /// may make before it counts as unknown again.
    pub per_device_burst: u32,
    pub per_device_replenish_ms: u64,
    /// How long a device token (issued at each successful login) is honoured.
    pub device_lifetime_days: u64,
    /// Devices each account keeps remembered (the most recently used): a
    /// device token counts only while its device is one of them, so this
    /// bounds the failure budgets one account can hold.
    pub max_devices_per_user: u32,
}

impl Default for LoginLimitConfig {
    fn default() -> Self {
        Self {
            per_ip_burst: 30,
            per_ip_replenish_ms: 2_000,
            per_user_burst: 10,
            per_user_replenish_ms: 6_000,
            per_device_burst: 10,
            per_device_replenish_ms: 60_000,
            device_lifetime_days: 90,
            max_devices_per_user: 10,
        }
    }
}

impl LoginLimitConfig {
    pub fn per_ip(&self) -> BudgetConfig {
        BudgetConfig {
            burst: self.per_ip_burst,
            replenish_ms: self.per_ip_replenish_ms,
        }
    }

    pub fn per_user(&self) -> BudgetConfig {
        BudgetConfig {
            burst: self.per_user_burst,
            replenish_ms: self.per_user_replenish_ms,
        }
    }

    pub fn per_device(&self) -> BudgetConfig {
        BudgetConfig {
            burst: self.per_device_burst,
            replenish_ms: self.per_device_replenish_ms,
        }
    }

    pub fn device_lifetime(&self) -> Duration {
        Duration::from_secs(self.device_lifetime_days.max(1) * 24 * 60 * 60)
    }
}

/// The account console (on rest-auth's port).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the admin's system page reads `/ready` and `/metrics` of a
    /// service this process does not run, by service (`sessions`,
    /// `session_tracker`, ...: `POLYHUB_CONSOLE__PROBE_URLS__SESSIONS`).
    /// A service without one is read at its configured address; one this
    /// process runs, on its own listener.
    pub probe_urls: std::collections::BTreeMap<String, String>,
}

impl ConsoleConfig {
    /// The probe address configured for `service`, if any.
    pub fn probe_url(&self, service: Service) -> Option<&str> {
        let key = service.name().replace('-', "_");
        self.probe_urls
            .iter()
            .find(|(k, _)| k.replace('-', "_").eq_ignore_ascii_case(&key))
            .map(|(_, url)| url.trim_end_matches('/'))
    }
}

/// `hub users import`: how much work an imported password hash may ask of
/// one login (a hash above any ceiling is refused at import), and how many
/// rows go to PostgreSQL at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportConfig {
    /// The most work of any imported hash, whatever its scheme, in
    /// PBKDF2-SHA256 iterations of one 32-byte block
    /// (`hub_core::PasswordHash::work`).
    pub max_pbkdf2_iterations: u32,
    pub max_bcrypt_cost: u32,
    pub max_scrypt_mib: u32,
    pub max_scrypt_p: u32,
    pub max_argon2_mib: u32,
    pub max_argon2_t: u32,
    pub max_argon2_p: u32,
    pub batch_size: usize,
    /// The largest body `POST /admin/users/import` reads (the file import
    /// streams and has no limit).
    pub max_body_bytes: usize,
    /// Until when imported insecure hashes (bare MD5/SHA digests, taken only
    /// with `--allow-insecure`) still log in and are upgraded; after it
    /// they are refused. `hub users import --allow-insecure` needs it set.
    #[serde(with = "time::serde::rfc3339::option")]
    pub insecure_until: Option<time::OffsetDateTime>,
}

impl Default for ImportConfig {
    fn default() -> Self {
        let c = hub_core::HashCeilings::default();
        Self {
            max_pbkdf2_iterations: c.max_pbkdf2_iterations,
            max_bcrypt_cost: c.max_bcrypt_cost,
            max_scrypt_mib: c.max_scrypt_mib,
            max_scrypt_p: c.max_scrypt_p,
            max_argon2_mib: c.max_argon2_mib,
            max_argon2_t: c.max_argon2_t,
            max_argon2_p: c.max_argon2_p,
            batch_size: 1_000,
            max_body_bytes: 8 * 1024 * 1024,
            insecure_until: None,
        }
    }
}

impl ImportConfig {
    pub fn ceilings(&self) -> hub_core::HashCeilings {
        hub_core::HashCeilings {
            max_pbkdf2_iterations: self.max_pbkdf2_iterations,
            max_bcrypt_cost: self.max_bcrypt_cost,
            max_scrypt_mib: self.max_scrypt_mib,
            max_scrypt_p: self.max_scrypt_p,
            max_argon2_mib: self.max_argon2_mib,
            max_argon2_t: self.max_argon2_t,
            max_argon2_p: self.max_argon2_p,
        }
    }
}

/// An attempt budget: `burst` at once, then one more every `replenish_ms`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub burst: u32,
    pub replenish_ms: u64,
}

/// Budgets of the requests that cost a password hash, beside login's own
/// (`services.rest_auth.login_limit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Registrations per client address, REST and SOAP together.
    pub registration_per_client: BudgetConfig,
    /// Current-password checks (`PUT /profile`) per client address...
    pub password_check_per_client: BudgetConfig,
    /// ...and per account, wherever they come from.
    pub password_check_per_account: BudgetConfig,
    /// Anonymous SOAP lookups (no WS-Security header) per client address,
    /// against username enumeration; an authenticated caller spends none.
    pub anonymous_lookup_per_client: BudgetConfig,
    /// SOAP calls per account authenticated by WS-Security (admins
    /// excepted): what one account holder may look up, and the nonces it
    /// may have recorded.
    pub soap_calls_per_account: BudgetConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            registration_per_client: BudgetConfig {
                burst: 20,
                replenish_ms: 3_000,
            },
            password_check_per_client: BudgetConfig {
                burst: 20,
                replenish_ms: 3_000,
            },
            password_check_per_account: BudgetConfig {
                burst: 5,
                replenish_ms: 12_000,
            },
            anonymous_lookup_per_client: BudgetConfig {
                burst: 30,
                replenish_ms: 1_000,
            },
            soap_calls_per_account: BudgetConfig {
                burst: 300,
                replenish_ms: 100,
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestAuthConfig {
    pub port: u16,
    /// The URL clients reach this service at; defaults to the bound address.
    pub external_url: Option<String>,
    pub cors: CorsConfig,
    pub login_limit: LoginLimitConfig,
}

impl Default for RestAuthConfig {
    fn default() -> Self {
        Self {
            port: Service::RestAuth.default_port(),
            external_url: None,
            cors: CorsConfig::default(),
            login_limit: LoginLimitConfig::default(),
        }
    }
}

/// Where each service listens; [`Service::listen`] reads it by service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    /// The address every listener binds; `0.0.0.0` in containers.
    pub bind_address: IpAddr,
    pub rest_auth: RestAuthConfig,
    pub soap_register: PortConfig,
    pub soap_lookup: SoapLookupConfig,
    pub sessions: SessionsServiceConfig,
    pub session_tracker: SessionsServiceConfig,
    pub grpc_images: PortConfig,
}

/// The session API (5004) and the last-connection tracker (5020).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsServiceConfig {
    pub port: u16,
    /// The URL clients reach this service at; defaults to the bound address.
    #[serde(default)]
    pub external_url: Option<String>,
    #[serde(default)]
    pub cors: CorsConfig,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            bind_address: IpAddr::from([127, 0, 0, 1]),
            rest_auth: RestAuthConfig::default(),
            soap_register: PortConfig {
                port: Service::SoapRegister.default_port(),
                external_url: None,
            },
            soap_lookup: SoapLookupConfig::default(),
            sessions: SessionsServiceConfig {
                port: Service::Sessions.default_port(),
                external_url: None,
                cors: CorsConfig::default(),
            },
            session_tracker: SessionsServiceConfig {
                port: Service::SessionTracker.default_port(),
                external_url: None,
                cors: CorsConfig::default(),
            },
            grpc_images: PortConfig {
                port: Service::GrpcImages.default_port(),
                external_url: None,
            },
        }
    }
}

#[cfg(test)]
// figment's Jail closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_then_file_then_environment() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "polyhub.toml",
                r#"
                [database]
                max_connections = 4
                url = "postgres://file@db/polyhub"
                [services.rest_auth]
                port = 6001
                "#,
            )?;
            jail.set_env("POLYHUB_DATABASE__URL", "postgres://env:pw@db/polyhub");
            jail.set_env("POLYHUB_LOG__FORMAT", "json");
            let config = Config::load(Some(Path::new("polyhub.toml"))).map_err(|e| *e)?;
            assert_eq!(config.database.max_connections, 4);
            assert_eq!(config.database.url.expose(), "postgres://env:pw@db/polyhub");
            assert_eq!(config.log.format, LogFormat::Json);
            assert_eq!(config.services.rest_auth.port, 6001);
            assert_eq!(config.database.acquire_timeout_ms, 3_000, "default kept");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_from_file_and_environment() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("polyhub.toml", "[database]\nmax_conections = 4\n")?;
            let err = Config::load(Some(Path::new("polyhub.toml"))).unwrap_err();
            assert!(err.to_string().contains("max_conections"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("POLYHUB_DATABSE__URL", "postgres://x");
            let err = Config::load(None).unwrap_err();
            assert!(err.to_string().contains("databse"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_named_file_is_an_error() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            assert!(Config::load(Some(Path::new("nope.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("POLYHUB_DATABASE__URL", "postgres://u:hunter2@db/p");
            let config = Config::load(None).map_err(|e| *e)?;
            assert!(!format!("{config:?}").contains("hunter2"));
            Ok(())
        });
    }

    #[test]
    fn hashing_pool_sizes_default_from_the_cores() {
        let pool = HashingConfig::default().pool_config();
        assert!(pool.workers >= 1);
        assert_eq!(pool.max_waiting, pool.workers * 32);
    }
}
