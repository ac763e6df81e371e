//! The client's address behind a gateway: `X-Forwarded-For`, believed only
//! from the proxies named in `http.trusted_proxies`.
//!
//! Behind a gateway every request comes from the gateway's address, so the
//! per-client budgets (logins, registrations, hashing shares) would spend
//! one budget for everyone, and sessions would record the gateway as each
//! user's client. When the connection's peer is a trusted proxy, the
//! request's client is read from `X-Forwarded-For` instead: walking it from
//! the right (the entry the nearest proxy added) past further trusted
//! proxies, the first other address is the client. Entries to its left are
//! whatever the client sent and never believed. A header from any other peer
//! is ignored, so a client cannot choose its own address by sending one.
//! With no trusted proxies (the default) nothing changes.
//!
//! The per-client cap (`http.max_connections_per_client`) follows the
//! client too. A trusted proxy's connections count only against the
//! listener's cap (a connection is accepted before its first header is
//! read, so it cannot be charged to a client then), and each request on
//! them takes one of its forwarded client's places, given back once its
//! answer is sent: a client behind the gateway holds at most that many
//! requests in flight on a port, and the rest of the gateway's clients keep
//! theirs. Past it the request is refused as `TOO_MANY_ATTEMPTS` (429 with
//! `Retry-After`, gRPC `RESOURCE_EXHAUSTED`).
//!
//! A gateway that authenticates at the edge (nginx's `auth_request` against
//! `/api/sessions/verify`) passes the identity it verified upstream in
//! [`IDENTITY_HEADERS`]. polyhub still verifies every token itself; it only
//! checks that the two agree. From a trusted proxy, a request carrying
//! these headers must carry a bearer token that claims the same user and
//! session, or it is refused as `INVALID_TOKEN`: a gateway that let a
//! client's own header through is found on the first request, not trusted.
//! From any other peer the headers are removed unread.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, header};
use axum::response::{IntoResponse, Response};
use hub_core::{Error, ErrorCode};
use ipnet::IpNet;

use crate::connections::ForwardedClients;
use serde::Deserialize;

/// The identity an authenticating gateway passes upstream: the user id,
/// session id and role `/api/sessions/verify` answered with (it sends them
/// as response headers of the same names for `auth_request_set`).
pub const IDENTITY_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-polyhub-user-id"),
    HeaderName::from_static("x-polyhub-session-id"),
    HeaderName::from_static("x-polyhub-role"),
];

/// One trusted proxy: an address (`10.0.0.5`) or a network (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyNet(IpNet);

impl ProxyNet {
    /// The network itself.
    pub const fn network(self) -> IpNet {
        self.0
    }
}

impl FromStr for ProxyNet {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        raw.parse::<IpNet>()
            .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
            .map(Self)
            .map_err(|_| format!("{raw:?} is neither an IP address nor a network (10.0.0.0/8)"))
    }
}

impl TryFrom<String> for ProxyNet {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        raw.parse()
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<Vec<ProxyNet>>);

impl TrustedProxies {
    pub fn new(proxies: &[ProxyNet]) -> Self {
        Self(Arc::new(proxies.to_vec()))
    }

    /// Whether `ip` is one of the trusted proxies (an IPv4-mapped IPv6
    /// address as its IPv4).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        self.0.iter().any(|net| net.0.contains(&ip))
    }

    /// The client of a request whose connection came from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for entry in entries.iter().rev() {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                // Unreadable from here on: the last address believed stands.
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// Why a gateway's identity headers and the request's token disagree, or
/// `None` when they agree (or there are none).
fn identity_mismatch(headers: &HeaderMap) -> Option<&'static str> {
    let [user, session, _] = &IDENTITY_HEADERS;
    if !IDENTITY_HEADERS.iter().any(|h| headers.contains_key(h)) {
        return None;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = token else {
        return Some("the gateway's identity headers came without a bearer token");
    };
    let Some((claimed_user, claimed_session)) = hub_core::claimed_identity(token) else {
        return Some("the gateway's identity headers came with an unreadable token");
    };
    let header_is = |name: &HeaderName, claimed: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(claimed))
    };
    if header_is(user, &claimed_user) && header_is(session, &claimed_session) {
        None
    } else {
        Some("the gateway's identity headers do not match the bearer token")
    }
}

/// Replaces the request's `ConnectInfo` with its forwarded client, so every
/// later reader (budgets, hashing shares, session client info) sees it, and
/// checks a trusted gateway's identity headers against the token (or drops
/// an untrusted peer's).
pub(crate) async fn forwarded_client<Run: std::future::Future<Output = Response>>(
    proxies: &TrustedProxies,
    mut request: Request,
    next: impl FnOnce(Request) -> Run,
) -> Response {
    if let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    {
        if proxies.trusts(peer.ip()) {
            if let Some(why) = identity_mismatch(request.headers()) {
                tracing::warn!(
                    peer = %peer.ip(),
                    path = request.uri().path(),
                    "{why}: refused (is the gateway removing clients' X-Polyhub-* headers?)"
                );
                let error = Error::with_message(ErrorCode::InvalidToken, why);
                return if crate::pacing::is_grpc(&request) {
                    crate::grpc::status(&error).into_http()
                } else {
                    crate::HttpError::from(error).into_response()
                };
            }
        } else {
            for name in &IDENTITY_HEADERS {
                request.headers_mut().remove(name);
            }
        }
        let client = proxies.client(peer.ip(), request.headers());
        // Only a trusted proxy's connections carry the cap (connections.rs).
        let in_flight = match request.extensions().get::<ForwardedClients>() {
            Some(clients) => match clients.enter(client) {
                Some(in_flight) => Some(in_flight),
                None => {
                    tracing::info!(
                        peer = %peer.ip(),
                        %client,
                        "request refused: its client has too many in flight"
                    );
                    return too_many_in_flight(&request);
                }
            },
            None => None,
        };
        if client != peer.ip() {
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(client, 0)));
        }
        if let Some(in_flight) = in_flight {
            return in_flight.until_sent(next(request).await);
        }
    }
    next(request).await
}

/// The answer to a forwarded client past its cap of requests in flight.
fn too_many_in_flight(request: &Request) -> Response {
    let error = Error::with_message(
        ErrorCode::TooManyAttempts,
        "this client has too many requests in flight on this port; retry when one ends",
    );
    if crate::pacing::is_grpc(request) {
        crate::grpc::status(&error).into_http()
    } else {
        crate::HttpError::from(error)
            .retry_after(std::time::Duration::from_secs(1))
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(&list.iter().map(|p| p.parse().unwrap()).collect::<Vec<_>>())
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_is_believed() {
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), &headers),
            ip("127.0.0.1"),
            "no proxies configured: the peer"
        );
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(trusted.client(ip("192.0.2.1"), &headers), ip("192.0.2.1"));
        assert_eq!(trusted.client(ip("10.1.2.3"), &headers), ip("203.0.113.9"));
        assert_eq!(
            trusted.client(ip("::ffff:10.1.2.3"), &headers),
            ip("203.0.113.9"),
            "an IPv4 peer on a dual-stack socket"
        );
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let trusted = proxies(&["10.0.0.1", "10.0.0.2"]);
        // The client forged the first entry; the gateways appended the rest.
        let headers = forwarded(&["198.51.100.7, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("203.0.113.9"));
        // All trusted: the leftmost of them.
        let headers = forwarded(&["10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.2"));
        // No header: the peer.
        assert_eq!(
            trusted.client(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // Garbage to the left of a believed entry stops the walk there.
        let headers = forwarded(&["not-an-ip, 203.0.113.9"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("203.0.113.9"));
        let headers = forwarded(&["203.0.113.9, junk"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
    }

    #[test]
    fn identity_headers_must_match_the_token() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = |sub: &str, sid: &str| {
            let claims = format!(r#"{{"sub":"{sub}","sid":"{sid}"}}"#);
            format!("e30.{}.sig", b64.encode(claims))
        };
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let bearer = format!("Bearer {}", token("u1", "s1"));
        assert_eq!(
            identity_mismatch(&headers(&[("authorization", &bearer)])),
            None
        );
        let agreeing = headers(&[
            ("authorization", &bearer),
            ("x-polyhub-user-id", "U1"),
            ("x-polyhub-session-id", "s1"),
            ("x-polyhub-role", "user"),
        ]);
        assert_eq!(identity_mismatch(&agreeing), None);
        for forged in [
            headers(&[("x-polyhub-user-id", "u1")]),
            headers(&[("x-polyhub-role", "admin")]),
            headers(&[
                ("authorization", &bearer),
                ("x-polyhub-session-id", "s2"),
                ("x-polyhub-user-id", "u1"),
            ]),
            headers(&[("authorization", &bearer), ("x-polyhub-user-id", "u1")]),
            headers(&[
                ("authorization", "Bearer junk"),
                ("x-polyhub-user-id", "u1"),
            ]),
        ] {
            assert!(identity_mismatch(&forged).is_some(), "{forged:?}");
        }
    }

    #[test]
    fn a_misspelt_proxy_is_refused() {
        assert!("10.0.0.0/33".parse::<ProxyNet>().is_err());
        assert!("gateway".parse::<ProxyNet>().is_err());
        assert!("::1".parse::<ProxyNet>().is_ok());
    }
}
