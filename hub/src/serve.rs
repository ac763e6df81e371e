//! Serving: bind every listener first, build each service's router, then run
//! them (with the session cache's listener and the relay) until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hub_runtime::connections::{self, ConnectionStats};
use hub_runtime::{Service, Shutdown};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::Hub;
use crate::services::Assembly;

/// One listener of a running hub.
#[derive(Debug, Clone)]
pub struct Listener {
    pub service: Service,
    pub local_addr: SocketAddr,
    pub external_url: String,
}

/// The services of a start, running until their shutdown fires; awaiting it
/// ends when every one has drained.
pub type Running = tokio::task::JoinHandle<anyhow::Result<()>>;

impl Hub {
    /// Binds every service's port and serves until `shutdown` fires; returns
    /// the listeners as soon as they are bound.
    pub async fn start(&self, shutdown: Shutdown) -> anyhow::Result<(Vec<Listener>, Running)> {
        self.start_services(&Service::ALL, shutdown).await
    }

    /// As [`Self::start`], for the named services only (`hub serve --only`,
    /// one service's binary, the test kit). The sessions service brings the
    /// relay; every service shares this hub's pools and clients.
    pub async fn start_services(
        &self,
        services: &[Service],
        shutdown: Shutdown,
    ) -> anyhow::Result<(Vec<Listener>, Running)> {
        // What can be checked without the network is checked before a port is taken.
        if services.iter().any(|s| s.needs_tokens()) {
            self.tokens()?;
        }
        // Every port is bound first, so each service knows every public
        // address before it is built.
        let mut bound = Vec::new();
        for service in Service::ALL {
            if services.contains(&service) {
                bound.push(self.bind(service).await?);
            }
        }
        let addresses = Service::ALL
            .into_iter()
            .map(|service| {
                let url = match bound.iter().find(|(_, l)| l.service == service) {
                    Some((_, listener)) => listener.external_url.clone(),
                    None => self.configured_address(service),
                };
                (service, url)
            })
            .collect();
        let probes = Service::ALL
            .into_iter()
            .map(|service| {
                let url = match bound.iter().find(|(_, l)| l.service == service) {
                    Some((_, listener)) => local_url(listener.local_addr),
                    None => match self.config.console.probe_url(service) {
                        Some(url) => url.to_owned(),
                        None => self.configured_address(service),
                    },
                };
                (service, url)
            })
            .collect();
        self.prepare_stores(services, shutdown.clone()).await?;
        let relay = if !services.contains(&Service::Sessions) {
            None
        } else if self.config.relay.enabled {
            Some(self.relay().await?)
        } else {
            tracing::info!("relay disabled here: another instance delivers the outbox");
            None
        };
        // Webhooks are delivered beside the relay, in the background of
        // the requests whose events they carry.
        let dispatcher = if services.contains(&Service::Sessions) && self.config.webhooks.enabled {
            Some(self.dispatcher()?)
        } else {
            None
        };
        // Mail goes out where rest-auth (whose pages the links open) runs.
        let mailer = if services.contains(&Service::RestAuth) {
            self.mailer().await?
        } else {
            None
        };
        let assembly = Assembly {
            addresses,
            probes,
            relay: relay.as_ref().map(hub_core::Relay::status),
            webhooks: dispatcher.as_ref().map(hub_core::Dispatcher::status),
        };
        let mut routers = Vec::new();
        for (_, listener) in &bound {
            let stats = Arc::new(ConnectionStats::new(listener.service.name()));
            let router = self
                .router(listener.service, &assembly, Arc::clone(&stats))
                .await?;
            routers.push((router, stats));
        }

        let mut tasks = JoinSet::new();
        if let Some(cache) = &self.session_cache {
            let (cache, shutdown) = (Arc::clone(cache), shutdown.clone());
            tasks.spawn(async move {
                cache.listen(shutdown.wait()).await;
                Ok(())
            });
        }
        if let Some(cache) = &self.directory_cache {
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
        if let Some(dispatcher) = dispatcher {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                dispatcher.run(shutdown.wait()).await;
                Ok(())
            });
        }
        if let Some(mailer) = mailer {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                mailer.run(shutdown.wait()).await;
                Ok(())
            });
        }
        let mut listeners = Vec::new();
        for ((socket, listener), (router, stats)) in bound.into_iter().zip(routers) {
            listeners.push(listener);
            let (shutdown, http) = (shutdown.clone(), self.config.http.clone());
            tasks.spawn(async move {
                connections::serve(socket, router, &http, stats, shutdown).await;
                Ok(())
            });
        }
        let grace = std::time::Duration::from_secs(self.config.http.shutdown_grace_secs);
        Ok((listeners, tokio::spawn(supervise(tasks, shutdown, grace))))
    }

    /// A service's public address when another process runs it: where its
    /// configuration says it is.
    fn configured_address(&self, service: Service) -> String {
        let listen = service.listen(&self.config.services);
        listen
            .external_url
            .unwrap_or_else(|| {
                format!(
                    "http://{}:{}",
                    self.config.services.bind_address, listen.port
                )
            })
            .trim_end_matches('/')
            .to_owned()
    }

    async fn bind(&self, service: Service) -> anyhow::Result<(TcpListener, Listener)> {
        let listen = service.listen(&self.config.services);
        let addr = SocketAddr::new(self.config.services.bind_address, listen.port);
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {service} to {addr}"))?;
        let local_addr = socket.local_addr()?;
        let external_url = listen
            .external_url
            .unwrap_or_else(|| format!("http://{local_addr}"))
            .trim_end_matches('/')
            .to_owned();
        tracing::info!(%service, %local_addr, %external_url, "listening");
        Ok((
            socket,
            Listener {
                service,
                local_addr,
                external_url,
            },
        ))
    }
}

/// Waits for every task; draining starts with the signal, and past the grace
/// period the services stop anyway.
async fn supervise(
    mut tasks: JoinSet<anyhow::Result<()>>,
    shutdown: Shutdown,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    let drained = async {
        while let Some(done) = tasks.join_next().await {
            done.context("a service task failed")??;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        result = drained => result,
        () = async { shutdown.wait().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "in-flight requests did not finish in time");
            Ok(())
        }
    }
}

/// A listener's own address as a URL this process can call: a wildcard
/// bind is reached on loopback.
fn local_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}
