//! Graceful shutdown: one signal (SIGTERM or SIGINT) stops every listener of
//! the process; each stops accepting and lets in-flight requests finish.

use tokio::sync::watch;

/// A cloneable handle that resolves once shutdown has begun.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Starts a shutdown by hand (tests, or a fatal error in one service).
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// A handle and the trigger that fires it.
    pub fn new() -> (Self, ShutdownTrigger) {
        let (tx, rx) = watch::channel(false);
        (
            Self { rx },
            ShutdownTrigger {
                tx: std::sync::Arc::new(tx),
            },
        )
    }

    /// A handle fired by SIGTERM or SIGINT.
    pub fn on_signal() -> Self {
        let (shutdown, trigger) = Self::new();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received, draining in-flight requests");
            trigger.trigger();
        });
        shutdown
    }

    /// Resolves once shutdown has begun.
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|stopping| *stopping).await;
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
