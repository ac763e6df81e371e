//! The `hub` command: every polyhub service in one process, and the admin
//! subcommands operators need.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hub::Hub;
use hub_core::{RegisterUser, Role, Username};
use hub_runtime::{Config, Shutdown, telemetry};

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
    /// Run every service, each on its configured port, until SIGTERM or SIGINT.
    Serve,
    /// Manage users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "hub failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    telemetry::init(&config.log);
    let hub = Hub::build(config)?;
    match cli.command {
        Command::Migrate => {
            hub.migrate().await?;
            tracing::info!("database schema is up to date");
        }
        Command::Serve => {
            let (listeners, running) = hub.start(Shutdown::on_signal()).await?;
            for l in &listeners {
                println!("{:<14} {}", l.service, l.external_url);
            }
            running.await.context("the services' supervisor failed")??;
            tracing::info!("all services stopped");
        }
        Command::Users { command } => users(&hub, command).await?,
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
        UsersCommand::GrantAdmin { username } => {
            let username = Username::parse(&username).map_err(operator_error)?;
            let users = hub.users();
            let user = users
                .find_by_username(&username)
                .await
                .map_err(operator_error)?
                .ok_or_else(|| anyhow::anyhow!("USER_NOT_FOUND: no user named {username}"))?;
            users
                .set_role(user.id, Role::Admin)
                .await
                .map_err(operator_error)?;
            println!("{} ({}) is now an admin", user.username, user.id);
        }
    }
    Ok(())
}

/// Operators see the stable code, the message and, unlike clients, the cause.
fn operator_error(e: hub_core::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}
