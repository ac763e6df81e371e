//! Webhook deliveries over HTTP: hub-core's [`WebhookTransport`], with the
//! guard against server-side request forgery.
//!
//! - **Where a URL may point:** absolute `http` or `https`, no user info.
//!   Its host is resolved once per connection; an address that is loopback,
//!   private, link-local (cloud metadata included), shared, multicast,
//!   reserved or unspecified is refused unless it is in
//!   `webhooks.allowed_networks`, and the connection goes to the address
//!   that was checked (no second lookup a rebinding name could change).
//! - **What one delivery may cost:** a connect timeout, a total timeout for
//!   the exchange, at most `max_response_bytes` of the answer read, no
//!   redirect followed (a 3xx is a failure, reported as such).
//! - Connections are kept for the next delivery to the same origin (at most
//!   `max_idle_per_origin` each), so a busy endpoint is not a handshake per
//!   event.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hub_core::webhooks::{Delivery, WebhookTransport};
use hub_core::{Error, ErrorCode};
use hyper::client::conn::http1::SendRequest;
use hyper::http::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;

/// What a delivery may cost, and where it may go.
#[derive(Debug, Clone)]
pub struct WebhookHttpSettings {
    pub connect_timeout: Duration,
    /// The whole exchange: request sent, answer read.
    pub timeout: Duration,
    /// The most of an answer's body read (the rest is dropped, with the
    /// connection).
    pub max_response_bytes: usize,
    /// Networks webhooks may reach although they are not public.
    pub allowed_networks: Vec<IpNet>,
    pub max_idle_per_origin: usize,
}

impl Default for WebhookHttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            max_response_bytes: 4096,
            allowed_networks: Vec::new(),
            max_idle_per_origin: 16,
        }
    }
}

/// The parts of a webhook URL a delivery uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        let refuse = |why: &str| {
            Error::with_message(
                ErrorCode::InvalidRequest,
                format!("the webhook URL {why}: give an absolute http:// or https:// URL"),
            )
        };
        if url.contains('#') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse("has a fragment, a space or a control character"));
        }
        let uri: Uri = url.parse().map_err(|_| refuse("is not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(refuse("is not http or https")),
        };
        let authority = uri.authority().ok_or_else(|| refuse("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(refuse("carries a user name or password"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(refuse("has no host"));
        }
        Ok(Self {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            // `http://h?x=1` has no path: the request line needs `/?x=1`.
            path: match uri.path_and_query().map(|p| p.as_str()) {
                Some(p) if p.starts_with('/') => p.to_owned(),
                Some(p) => format!("/{p}"),
                None => "/".to_owned(),
            },
        })
    }

    fn origin(&self) -> String {
        format!(
            "{}://{}:{}",
            if self.https { "https" } else { "http" },
            self.host,
            self.port
        )
    }

    /// The `Host` header.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.https, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

/// Whether `ip` is an address anyone on the internet could reach: not
/// loopback, private, link-local, shared (CGNAT), multicast, reserved,
/// documentation, benchmarking or unspecified. IPv6 forms of an IPv4
/// address (mapped, NAT64) are judged as that IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) and SIIT (::ffff:0:0:0/96) carry an
            // IPv4 address.
            let embedded = (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0])
                || (s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0);
            if embedded {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 too)
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64, 64:ff9b:1::/48
                || (s[0] == 0x2002) // 6to4 hides an IPv4 address
                || (s[0] == 0x2001 && s[1] == 0) // Teredo
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, deprecated
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local() // 169.254/16: cloud metadata
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64) // shared address space, 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18/15
        || a >= 240) // reserved
}

type Sender = SendRequest<Full<Bytes>>;

/// Webhook deliveries over HTTP/1.1, with TLS for `https`.
pub struct HttpWebhooks {
    settings: WebhookHttpSettings,
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<HashMap<String, Vec<(Sender, Instant)>>>,
}

/// How long a kept connection waits for the next delivery.
const KEEP_IDLE: Duration = Duration::from_secs(30);

impl std::fmt::Debug for HttpWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpWebhooks")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A failure before or during the exchange, as operators read it.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Refused(Error),
    #[error("{0}")]
    Network(String),
}

impl HttpWebhooks {
    pub fn new(settings: WebhookHttpSettings) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("webhook TLS set-up: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            settings,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            idle: Mutex::new(HashMap::new()),
        })
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        is_public(ip)
            || self
                .settings
                .allowed_networks
                .iter()
                .any(|n| n.contains(&ip))
    }

    /// The address to connect to: the host's first address webhooks may
    /// reach; refused when it has none.
    async fn resolve(&self, target: &Target) -> Result<SocketAddr, Error> {
        let addresses: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, target.port)],
            Err(_) => tokio::time::timeout(
                self.settings.connect_timeout,
                tokio::net::lookup_host((target.host.as_str(), target.port)),
            )
            .await
            .map_err(|_| Error::unavailable(format!("resolving {} timed out", target.host)))?
            .map_err(|e| Error::unavailable(format!("resolving {}: {e}", target.host)))?
            .collect(),
        };
        addresses
            .iter()
            .copied()
            .find(|a| self.allowed(a.ip()))
            .ok_or_else(|| {
                let shown: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
                Error::with_message(
                    ErrorCode::WebhookTargetRefused,
                    format!(
                        "{} resolves to {}: loopback, private, link-local or otherwise not public, and not in webhooks.allowed_networks",
                        target.host,
                        if shown.is_empty() { "no address".to_owned() } else { shown.join(", ") }
                    ),
                )
            })
    }

    async fn connect(&self, target: &Target) -> Result<Sender, Failure> {
        let address = self.resolve(target).await.map_err(Failure::Refused)?;
        let tcp = tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| Failure::Network(format!("connecting to {address} timed out")))?
            .map_err(|e| Failure::Network(format!("connecting to {address}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| Failure::Network(format!("{} is no TLS name: {e}", target.host)))?;
            let tls =
                tokio::time::timeout(self.settings.connect_timeout, self.tls.connect(name, tcp))
                    .await
                    .map_err(|_| Failure::Network(format!("TLS with {address} timed out")))?
                    .map_err(|e| Failure::Network(format!("TLS with {address}: {e}")))?;
            handshake(TokioIo::new(tls)).await
        } else {
            handshake(TokioIo::new(tcp)).await
        }
    }

    fn idle_sender(&self, origin: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let senders = idle.get_mut(origin)?;
        while let Some((sender, since)) = senders.pop() {
            if !sender.is_closed() && since.elapsed() < KEEP_IDLE {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next delivery to `origin`; connections idle
    /// past [`KEEP_IDLE`] (of any origin, a deleted endpoint's too) go.
    fn keep(&self, origin: String, sender: Sender) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|_, senders| {
                senders.retain(|(s, since)| !s.is_closed() && since.elapsed() < KEEP_IDLE);
                !senders.is_empty()
            });
            let senders = idle.entry(origin).or_default();
            if senders.len() < self.settings.max_idle_per_origin {
                senders.push((sender, Instant::now()));
            }
        }
    }

    /// One POST: on a kept connection if there is one (once more on a
    /// fresh one if the receiver had closed it), else on a new one.
    async fn exchange(
        &self,
        target: &Target,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> Result<Delivery, Failure> {
        let origin = target.origin();
        if let Some(sender) = self.idle_sender(&origin) {
            match self
                .send_on(sender, target, origin.clone(), headers, body)
                .await
            {
                Err(Failure::Network(why)) => {
                    tracing::debug!(reason = %why, "a kept webhook connection failed; trying a new one");
                }
                other => return other,
            }
        }
        let sender = self.connect(target).await?;
        self.send_on(sender, target, origin, headers, body).await
    }

    async fn send_on(
        &self,
        mut sender: Sender,
        target: &Target,
        origin: String,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> Result<Delivery, Failure> {
        sender
            .ready()
            .await
            .map_err(|e| Failure::Network(format!("connection lost: {e}")))?;
        let mut request = Request::post(target.path.as_str())
            .header(header::HOST, target.authority())
            .header(header::USER_AGENT, "polyhub-webhooks")
            .header(header::CONTENT_LENGTH, body.len());
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| Failure::Network(format!("building the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Network(format!("sending: {e}")))?;
        let status = response.status();
        let mut body = response.into_body();
        let mut read = Vec::new();
        let mut whole = true;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Network(format!("reading the answer: {e}")))?;
            if let Ok(data) = frame.into_data() {
                let room = self.settings.max_response_bytes.saturating_sub(read.len());
                read.extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    whole = false;
                    break;
                }
            }
        }
        // A connection whose answer was read to its end serves the next
        // delivery; one cut short is dropped.
        if whole {
            self.keep(origin, sender);
        }
        Ok(if status.is_success() {
            Delivery::Accepted
        } else if status == hyper::StatusCode::GONE {
            Delivery::Gone
        } else if status.is_redirection() {
            Delivery::Failed(format!(
                "HTTP {status}: redirects are not followed; point the endpoint at the final URL"
            ))
        } else {
            // The receiver's words, shown to admins and logged: no control
            // character passes (no forged log lines).
            let text: String = String::from_utf8_lossy(&read)
                .chars()
                .take(200)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Delivery::Failed(format!("HTTP {status}: {}", text.trim()))
        })
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Result<Sender, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Network(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "webhook connection ended");
        }
    });
    Ok(sender)
}

#[async_trait]
impl WebhookTransport for HttpWebhooks {
    async fn check_target(&self, url: &str) -> Result<(), Error> {
        let target = Target::parse(url)?;
        match self.resolve(&target).await {
            // A name that does not resolve now may later; one that resolves
            // only to forbidden addresses is refused.
            Err(e) if e.code() == ErrorCode::Unavailable => Err(Error::with_message(
                ErrorCode::InvalidRequest,
                format!("the webhook host {} does not resolve", target.host),
            )),
            other => other.map(|_| ()),
        }
    }

    async fn post(&self, url: &str, headers: &[(&'static str, String)], body: &[u8]) -> Delivery {
        let target = match Target::parse(url) {
            Ok(target) => target,
            Err(e) => return Delivery::Failed(e.message().to_owned()),
        };
        match tokio::time::timeout(self.settings.timeout, self.exchange(&target, headers, body))
            .await
        {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(Failure::Refused(e))) => Delivery::Failed(e.message().to_owned()),
            Ok(Err(Failure::Network(why))) => Delivery::Failed(why),
            Err(_) => Delivery::Failed(format!(
                "no answer within {} ms",
                self.settings.timeout.as_millis()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "::ffff:0:a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_absolute_http_without_credentials() {
        let t = Target::parse("https://Hooks.Example.com/in?x=1").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.com", 443, "/in?x=1")
        );
        assert_eq!(Target::parse("http://[::1]:8080").unwrap().host, "::1");
        assert_eq!(
            Target::parse("https://h.example?token=x").unwrap().path,
            "/?token=x"
        );
        assert_eq!(
            Target::parse("http://[::1]:8080").unwrap().authority(),
            "[::1]:8080"
        );
        for bad in [
            "ftp://example.com/",
            "/relative",
            "http://user:pw@example.com/",
            "http://example.com/#frag",
            "http://exa mple.com/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
