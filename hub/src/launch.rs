//! What every polyhub executable does before and after its own work: build
//! the async runtime, load configuration, start logging, and run services
//! until a signal. The `hub` command and each single-service binary
//! (`cargo run --bin rest-auth`) start through here, so they behave alike.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hub_runtime::{Config, Service, Shutdown, telemetry};

use crate::Hub;

/// Runs `work` on a multi-threaded runtime; a failure is logged and printed
/// with its causes, and the process exits non-zero.
pub fn main_with<F>(work: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "polyhub failed");
            telemetry::flush();
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // The log's last lines are still queued for its writer thread.
    telemetry::flush();
    code
}

/// Loads the configuration (`file`, then `POLYHUB_*` variables) and starts
/// logging as it says.
pub fn load_config(file: Option<&Path>) -> anyhow::Result<Config> {
    let config = Config::load(file).context("loading configuration")?;
    telemetry::init(&config.log);
    Ok(config)
}

/// Serves `names` until SIGTERM or SIGINT, printing each listener's address
/// once bound, then waits for in-flight requests to drain.
pub async fn serve(hub: &Hub, services: &[Service]) -> anyhow::Result<()> {
    hub_runtime::connections::raise_file_limit();
    let (listeners, running) = hub.start_services(services, Shutdown::on_signal()).await?;
    for l in &listeners {
        println!("{:<15} {}", l.service.name(), l.external_url);
    }
    running.await.context("the services' supervisor failed")??;
    tracing::info!("all services stopped");
    Ok(())
}

/// The command line of a single-service binary.
#[derive(Debug, Parser)]
struct ServiceCli {
    /// A TOML config file; `POLYHUB_*` environment variables override it.
    #[arg(long, env = hub_runtime::config::CONFIG_FILE_VAR)]
    config: Option<PathBuf>,
}

/// The whole `main` of a binary that runs one service alone, on its
/// configured port, with the same configuration `hub serve` reads.
pub fn service_main(service: Service) -> ExitCode {
    let cli = ServiceCli::parse();
    main_with(async move {
        let hub = Hub::build(load_config(cli.config.as_deref())?)?;
        serve(&hub, &[service]).await
    })
}
