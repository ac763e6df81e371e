//! The `hub` command: every polyhub service in one process, and the admin
//! subcommands operators need.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hub::Hub;
use hub::Service;
use hub_core::{RegisterUser, Role};

#[derive(Debug, Parser)]
#[command(
    name = "hub",
    version,
    about = "polyhub: SOAP, REST and gRPC over one user domain"
)]
struct Cli {
    /// A TOML config file; `POLYHUB_*` environment variables override it.
    #[arg(long, global = true, env = hub_runtime::config::CONFIG_FILE_VAR)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the PostgreSQL database if missing and apply every pending migration.
    Migrate,
    /// Run every service (or those named with --only), each on its configured
    /// port, until SIGTERM or SIGINT.
    Serve {
        /// Only these services, comma-separated: rest-auth, soap-register,
        /// soap-lookup, sessions, session-tracker, grpc-images.
        #[arg(long, value_delimiter = ',')]
        only: Vec<Service>,
    },
    /// Manage users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Probe a service's HTTP endpoint (`hub check http://127.0.0.1:5001/ready`):
    /// exits 0 on a 2xx answer within 3 s. For container healthchecks, so the
    /// image needs no curl.
    Check { url: String },
    /// Manage token signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The activity log's queue of the event log, which the relay drains.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// The event log: every user and session change, in order.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// OAuth 2.0 / OpenID Connect clients (docs/OIDC.md).
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Webhook endpoints: URLs that receive the event log's events, signed
    /// per Standard Webhooks (docs/EVENTS.md).
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Registers a client; prints it as one JSON object with its
    /// `client_secret` (confidential clients), shown this once.
    Create {
        #[arg(long)]
        name: String,
        /// Where the authorization step may send the user back (exact match).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// A browser or native app: no secret, PKCE required.
        #[arg(long)]
        public: bool,
        /// No consent page for this client.
        #[arg(long)]
        first_party: bool,
        /// authorization_code, refresh_token or client_credentials; default:
        /// authorization_code and refresh_token.
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// The most its tokens may carry; default: openid profile email
        /// offline_access.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Where logging out may send the user (exact match).
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// How its ID tokens are signed: RS256 (default) or EdDSA.
        #[arg(long = "id-token-alg", default_value = "RS256")]
        id_token_alg: String,
    },
    /// One JSON object per client, never a secret.
    List,
    /// Deletes a client: its tokens stop working.
    Delete { client_id: String },
    /// A new secret; the old one stops working at once.
    RotateSecret { client_id: String },
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// Add an endpoint; prints it as JSON with its `secret` (`whsec_...`),
    /// shown this once.
    Add {
        url: String,
        /// Event types: exact (user.created), a prefix (user.*) or *.
        #[arg(long, num_args = 1.., required = true)]
        events: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every endpoint as a JSON line, with its state (never its secret).
    List,
    /// Delete an endpoint and its queue.
    Delete { id: String },
    /// A new secret, printed as JSON; the old one signs beside it for
    /// webhooks.rotation_grace_hours.
    RotateSecret { id: String },
    /// Deliver again every event after the one `--after` names (an `id`
    /// of `hub events tail`).
    Replay {
        id: String,
        #[arg(long)]
        after: i64,
    },
    /// Deliver to a disabled endpoint again (the events from now on; replay
    /// the missed ones).
    Enable { id: String },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print events as JSON lines (`{"id","event_id","type","occurred_at",
    /// "user_id","data"}`, `session_id` too for session events): the latest
    /// ones, or those after the event `--after` names (an `id` printed
    /// before), so a reader can page through the log without missing any.
    Tail {
        /// Print the events after this one (its `id`).
        #[arg(long)]
        after: Option<i64>,
        /// At most this many events (1 to 10000).
        #[arg(long, default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(hub::events::MAX_TAIL)))]
        limit: u32,
    },
    /// Print each subscriber of the log as a JSON line: its name, the types
    /// it takes, how many events it has yet to take and since when, and
    /// how many it set aside.
    Subscribers,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Put every quarantined event (one the relay could not read, or one
    /// MongoDB kept refusing) back in line, once the rows or the cause are
    /// fixed; the relay then delivers them.
    Retry,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Write a new Ed25519 key pair: the private key to OUT (mode 0600) and the
    /// public key beside it as OUT with `.pub.pem`. Point
    /// tokens.signing_key_path at the private key; to rotate, list the old
    /// public key in tokens.previous_public_key_paths until its tokens expire.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Write a new 2048-bit RSA private key (PKCS#8 PEM, mode 0600) to OUT:
    /// the key that signs OpenID Connect ID tokens (RS256). Point
    /// oidc.id_token_key_path at it, the same file on every instance.
    GenerateIdToken {
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Register a user with the same rules as every protocol; the password is
    /// read from the first line of standard input, so it stays out of the
    /// shell history and the process list.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        /// Create the user as an administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Give an existing user the admin role.
    GrantAdmin { username: String },
    /// Import users from another system with the password hashes they
    /// already have (formats: docs/OPERATIONS.md); each is replaced by
    /// polyhub's own at the user's next login. Reads JSON Lines or CSV
    /// (`username,email,password_hash[,role,created_at]`, with a header) as
    /// a stream; a rerun of the same file imports nothing.
    Import {
        /// The file to read.
        file: std::path::PathBuf,
        /// `jsonl` or `csv`; by default from the file's extension.
        #[arg(long)]
        format: Option<hub::import::ImportFormat>,
        /// Check every line, the database's uniqueness included, and keep nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also import bare MD5, SHA-1 and SHA-256 digests (hex, or
        /// `md5$salt$hex`: the digest of salt then password). They log in
        /// only until `import.insecure_until`, which must be set.
        #[arg(long)]
        allow_insecure: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hub::launch::main_with(run(cli))
}

/// One plain HTTP/1.0 GET; Ok when the status is 2xx.
fn check(url: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs can be checked")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let timeout = std::time::Duration::from_secs(3);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head)?;
    let status_line = String::from_utf8_lossy(&head[..read]);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status.starts_with('2'), "{url} answered {status:?}");
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Check { url } = &cli.command {
        return check(url);
    }
    let config = hub::launch::load_config(cli.config.as_deref())?;
    // Making keys needs neither a database nor existing keys.
    match &cli.command {
        Command::Keys {
            command: KeysCommand::Generate { out, force },
        } => return generate_key(out, *force),
        Command::Keys {
            command: KeysCommand::GenerateIdToken { out, force },
        } => return generate_id_token_key(out, *force),
        _ => {}
    }
    let hub = Hub::build(config)?;
    match cli.command {
        Command::Migrate => {
            hub.migrate().await?;
            tracing::info!("database schema is up to date");
        }
        Command::Serve { only } => {
            let services = if only.is_empty() {
                Service::ALL.to_vec()
            } else {
                only
            };
            hub::launch::serve(&hub, &services).await?;
        }
        Command::Users { command } => users(&hub, command).await?,
        Command::Outbox {
            command: OutboxCommand::Retry,
        } => {
            let back = hub.outbox().retry_quarantined().await?;
            println!("{back} quarantined events are pending again");
        }
        Command::Events {
            command: EventsCommand::Tail { after, limit },
        } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            hub::events::tail(&*hub.event_log(), after, limit, &mut out).await?;
        }
        Command::Events {
            command: EventsCommand::Subscribers,
        } => {
            for subscriber in hub.event_log().subscribers().await? {
                println!("{}", subscriber.to_json());
            }
        }
        Command::Webhooks { command } => webhooks(&hub, command).await?,
        Command::Clients { command } => clients(&hub, command).await?,
        Command::Keys { .. } | Command::Check { .. } => {}
    }
    Ok(())
}

async fn clients(hub: &Hub, command: ClientsCommand) -> anyhow::Result<()> {
    let oauth = hub.client_registry();
    let id = |id: &str| hub_core::ClientId::parse(id).map_err(operator_error);
    match command {
        ClientsCommand::Create {
            name,
            redirect_uris,
            public,
            first_party,
            grants,
            scopes,
            post_logout_redirect_uris,
            id_token_alg,
        } => {
            let id_token_alg = hub_core::IdTokenAlg::parse(&id_token_alg)
                .ok_or_else(|| anyhow::anyhow!("--id-token-alg is RS256 or EdDSA"))?;
            let grant_types = grants
                .iter()
                .map(|g| {
                    hub_core::GrantType::parse(g).ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown grant {g:?}: authorization_code, refresh_token or client_credentials"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (client, secret) = oauth
                .create_client(hub_core::NewClient {
                    name,
                    redirect_uris,
                    post_logout_redirect_uris,
                    public,
                    first_party,
                    grant_types,
                    scopes: scopes
                        .iter()
                        .flat_map(|s| s.split(' '))
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    id_token_alg,
                })
                .await
                .map_err(operator_error)?;
            let mut shown = client.to_json();
            if let (Some(object), Some(secret)) = (shown.as_object_mut(), secret) {
                object.insert("client_secret".to_owned(), secret.shown().into());
            }
            println!("{shown}");
        }
        ClientsCommand::List => {
            for client in oauth.clients().await.map_err(operator_error)? {
                println!("{}", client.to_json());
            }
        }
        ClientsCommand::Delete { client_id } => {
            oauth
                .delete_client(&id(&client_id)?)
                .await
                .map_err(operator_error)?;
            println!("deleted {client_id}");
        }
        ClientsCommand::RotateSecret { client_id } => {
            let secret = oauth
                .rotate_secret(&id(&client_id)?)
                .await
                .map_err(operator_error)?;
            println!(
                "{}",
                serde_json::json!({ "client_id": client_id, "client_secret": secret.shown() })
            );
        }
    }
    Ok(())
}

async fn webhooks(hub: &Hub, command: WebhooksCommand) -> anyhow::Result<()> {
    let webhooks = hub.webhooks()?;
    let id = |id: &str| hub_core::EndpointId::parse(id).map_err(operator_error);
    match command {
        WebhooksCommand::Add {
            url,
            events,
            description,
        } => {
            let types = hub_core::EventTypes::parse(&events).map_err(operator_error)?;
            let created = webhooks
                .add(None, &url, types, &description)
                .await
                .map_err(operator_error)?;
            let mut shown = created.endpoint.to_json();
            if let Some(object) = shown.as_object_mut() {
                object.insert("secret".to_owned(), created.secret.shown().into());
            }
            println!("{shown}");
        }
        WebhooksCommand::List => {
            for endpoint in webhooks.list(None).await.map_err(operator_error)? {
                println!("{}", endpoint.to_json());
            }
        }
        WebhooksCommand::Delete { id: endpoint } => {
            webhooks
                .delete(None, id(&endpoint)?)
                .await
                .map_err(operator_error)?;
            println!("deleted {endpoint}");
        }
        WebhooksCommand::RotateSecret { id: endpoint } => {
            let (secret, until) = webhooks
                .rotate_secret(None, id(&endpoint)?)
                .await
                .map_err(operator_error)?;
            let until = until
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            println!(
                "{}",
                serde_json::json!({ "id": endpoint, "secret": secret.shown(), "previous_secret_until": until })
            );
        }
        WebhooksCommand::Replay {
            id: endpoint,
            after,
        } => {
            let queued = webhooks
                .replay(None, id(&endpoint)?, after)
                .await
                .map_err(operator_error)?;
            println!("queued {queued} events again for {endpoint}");
        }
        WebhooksCommand::Enable { id: endpoint } => {
            webhooks
                .enable(None, id(&endpoint)?)
                .await
                .map_err(operator_error)?;
            println!("enabled {endpoint}");
        }
    }
    Ok(())
}

async fn users(hub: &Hub, command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Create {
            username,
            email,
            admin,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']).to_owned();
            let role = if admin { Role::Admin } else { Role::User };
            let user = hub
                .registration()
                .register_with_role(
                    RegisterUser {
                        username,
                        email,
                        password,
                    },
                    role,
                )
                .await
                .map_err(operator_error)?;
            println!(
                "created {} ({}) with role {}",
                user.username, user.id, user.role
            );
        }
        UsersCommand::Import {
            file,
            format,
            dry_run,
            allow_insecure,
        } => hub::import::run(hub, &file, format, dry_run, allow_insecure).await?,
        UsersCommand::GrantAdmin { username } => {
            let user = hub
                .administration()
                .set_role(&username, Role::Admin)
                .await
                .map_err(operator_error)?;
            println!("{} ({}) is now an admin", user.username, user.id);
        }
    }
    Ok(())
}

/// Operators see the stable code, the message and, unlike clients, the
/// cause, with its whole chain.
fn operator_error(e: hub_core::Error) -> anyhow::Error {
    anyhow::Error::new(e)
}

/// Writes `text` to `path` (`mode`), never over a file unless `force`.
fn write_new(path: &std::path::Path, text: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {} (--force replaces it)", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn generate_id_token_key(out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let pem = hub_core::IdTokenKey::generate_pem().map_err(operator_error)?;
    let key = hub_core::IdTokenKey::from_pem(&pem).map_err(operator_error)?;
    write_new(out, &pem, 0o600, force)?;
    println!("kid {}", key.jwk().kid);
    println!("private key {}", out.display());
    Ok(())
}

fn generate_key(out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let key = hub_core::KeySet::generate().map_err(operator_error)?;
    let public = out.with_extension("pub.pem");
    write_new(out, &key.private_pem, 0o600, force)?;
    write_new(&public, &key.public_pem, 0o644, force)?;
    println!("kid {}", key.kid);
    println!("private key {}", out.display());
    println!("public key  {}", public.display());
    Ok(())
}
