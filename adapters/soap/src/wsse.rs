//! Reading a `wsse:Security` header (OASIS Web Services Security 1.1,
//! UsernameToken Profile 1.1): its Timestamp, its UsernameToken or its
//! BinarySecurityToken, as typed values. What they are worth (a password,
//! a bearer token, a clock) is [`crate::security`]'s business.
//!
//! The block is read again from the message the envelope reader already
//! checked (size, depth, no DOCTYPE), namespace-aware, so prefixes declared
//! on the Envelope resolve as they do there. Anything in the header polyhub
//! does not process (a Signature, an encrypted key, a SAML assertion) is
//! refused, never skipped: a sender who signed a message must not be told
//! it was accepted when the signature was not checked.

use base64::Engine;
use quick_xml::XmlVersion;
use quick_xml::escape::{resolve_predefined_entity, unescape};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::envelope::{OperationCall, message_reader};
use crate::header::{HeaderBlock, QName};

/// WS-Security 1.0's secext namespace, which 1.1 keeps for `Security`.
pub const WSSE_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// WS-Security's utility namespace: `Timestamp`, `Created`, `Expires`.
pub const WSU_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
/// The header block this module reads.
pub const SECURITY: QName = QName::new(WSSE_NS, "Security");

/// The BinarySecurityToken value types that carry a bearer access token
/// (RFC 8693's token type URIs).
pub const BEARER_VALUE_TYPES: [&str; 2] = [
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:access_token",
];

/// WS-Security's own fault codes (WSS 1.1, section 12): the fault code in
/// SOAP 1.1, the subcode of `env:Sender` in SOAP 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityFault {
    /// "An unsupported token was provided".
    UnsupportedSecurityToken,
    /// "An error was discovered processing the `<wsse:Security>` header".
    InvalidSecurity,
    /// "An invalid security token was provided".
    InvalidSecurityToken,
    /// "The security token could not be authenticated or authorized".
    FailedAuthentication,
    /// "The message has expired".
    MessageExpired,
}

impl SecurityFault {
    /// The fault code's local name, in [`WSSE_NS`].
    pub const fn local_name(self) -> &'static str {
        match self {
            SecurityFault::UnsupportedSecurityToken => "UnsupportedSecurityToken",
            SecurityFault::InvalidSecurity => "InvalidSecurity",
            SecurityFault::InvalidSecurityToken => "InvalidSecurityToken",
            SecurityFault::FailedAuthentication => "FailedAuthentication",
            SecurityFault::MessageExpired => "MessageExpired",
        }
    }
}

/// Why a header could not be read: the WS-Security fault, and a reason a
/// client developer can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub fault: SecurityFault,
    pub reason: String,
}

pub(crate) fn invalid(reason: impl Into<String>) -> Refusal {
    Refusal {
        fault: SecurityFault::InvalidSecurity,
        reason: reason.into(),
    }
}

pub(crate) fn unsupported(reason: impl Into<String>) -> Refusal {
    Refusal {
        fault: SecurityFault::UnsupportedSecurityToken,
        reason: reason.into(),
    }
}

/// `wsu:Timestamp`: when the message was made, and until when it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub created: Option<OffsetDateTime>,
    pub expires: Option<OffsetDateTime>,
}

/// A UsernameToken with its password in clear (`PasswordText`).
#[derive(Clone, PartialEq, Eq)]
pub struct UsernameToken {
    pub username: String,
    pub password: String,
    /// The Nonce's bytes, decoded.
    pub nonce: Option<Vec<u8>>,
    pub created: Option<OffsetDateTime>,
}

/// Without the password.
impl std::fmt::Debug for UsernameToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsernameToken")
            .field("username", &self.username)
            .field("nonce", &self.nonce.as_ref().map(Vec::len))
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// What the header authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum Token {
    Username(UsernameToken),
    /// A BinarySecurityToken carrying a bearer access token.
    Bearer(String),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Username(token) => token.fmt(f),
            Token::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// A `wsse:Security` header, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeader {
    pub timestamp: Option<Timestamp>,
    pub token: Option<Token>,
}

/// An element of the block: its name, attributes (namespace, local name,
/// value), text and children.
#[derive(Default)]
struct Element {
    namespace: String,
    local: String,
    attributes: Vec<(String, String, String)>,
    text: String,
    children: Vec<Element>,
}

/// Without text or attribute values: a Password's text is the password.
impl std::fmt::Debug for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Element")
            .field("namespace", &self.namespace)
            .field("local", &self.local)
            .field("children", &self.children)
            .finish_non_exhaustive()
    }
}

impl Element {
    fn is(&self, namespace: &str, local: &str) -> bool {
        self.namespace == namespace && self.local == local
    }

    /// An unqualified attribute (as WS-Security's `Type`, `ValueType`,
    /// `EncodingType` are), or one in `namespace`.
    fn attribute(&self, namespace: &str, local: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(ns, name, _)| ns == namespace && name == local)
            .map(|(_, _, value)| value.as_str())
    }

    fn name(&self) -> String {
        QName::owned(self.namespace.clone(), self.local.clone()).to_string()
    }
}

fn namespace_of(resolved: ResolveResult<'_>) -> Result<String, Refusal> {
    match resolved {
        ResolveResult::Bound(ns) => unescape(ns.0)
            .map(|ns| ns.into_owned())
            .map_err(|e| invalid(format!("a bad namespace name: {e}"))),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(_) => Err(invalid("an undeclared prefix in the Security header")),
    }
}

/// The block at `block`'s span, read as a tree with every name resolved.
fn element_of(call: &OperationCall, block: &HeaderBlock) -> Result<Element, Refusal> {
    let message =
        std::str::from_utf8(call.message()).map_err(|_| invalid("the message is not UTF-8"))?;
    let start = block.span().start;
    let (base, mut reader) = message_reader(message);
    let bad_xml = |e: quick_xml::Error| invalid(format!("the Security header is not XML: {e}"));
    // The elements open inside the block, innermost last.
    let mut open: Vec<Element> = Vec::new();
    loop {
        let before =
            base.saturating_add(usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX));
        let event = reader.read_event().map_err(bad_xml)?;
        match event {
            Event::Start(tag) if !open.is_empty() || before == start => {
                let (ns, local) = reader.resolver().resolve_element(tag.name());
                let mut element = Element {
                    namespace: namespace_of(ns)?,
                    local: local.as_ref().to_owned(),
                    ..Element::default()
                };
                for attr in tag.attributes() {
                    let attr = attr.map_err(|e| invalid(format!("a bad attribute: {e}")))?;
                    let (ns, local) = reader.resolver().resolve_attribute(attr.key);
                    let value = attr
                        .normalized_value(XmlVersion::Implicit1_0)
                        .map_err(|e| invalid(format!("a bad attribute value: {e}")))?;
                    element.attributes.push((
                        namespace_of(ns)?,
                        local.as_ref().to_owned(),
                        value.into_owned(),
                    ));
                }
                open.push(element);
            }
            Event::End(_) if !open.is_empty() => {
                let Some(done) = open.pop() else { continue };
                match open.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::Text(t) => {
                if let Some(current) = open.last_mut() {
                    current.text.push_str(t.as_ref());
                }
            }
            Event::CData(c) => {
                if let Some(current) = open.last_mut() {
                    current.text.push_str(&c.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                if let Some(current) = open.last_mut() {
                    let resolved = if r.is_char_ref() {
                        r.resolve_char_ref().ok().flatten().map(String::from)
                    } else {
                        resolve_predefined_entity(r.as_ref()).map(str::to_owned)
                    };
                    current
                        .text
                        .push_str(&resolved.ok_or_else(|| invalid("an unknown entity"))?);
                }
            }
            Event::Eof => return Err(invalid("the Security header was not found again")),
            _ => {}
        }
    }
}

/// An `xs:dateTime` as WS-Security sends it: UTC, `Z` or an offset; one
/// without a zone is read as UTC.
fn date_time(element: &Element) -> Result<OffsetDateTime, Refusal> {
    let text = element.text.trim();
    OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339))
        .map_err(|_| {
            invalid(format!(
                "{} must be an xs:dateTime such as 2026-12-06T10:00:00Z, not {text:?}",
                element.name()
            ))
        })
}

fn once<'a>(
    seen: &mut Option<&'a Element>,
    element: &'a Element,
    what: &str,
) -> Result<(), Refusal> {
    if seen.replace(element).is_some() {
        return Err(invalid(format!("the header has more than one {what}")));
    }
    Ok(())
}

fn timestamp(element: &Element) -> Result<Timestamp, Refusal> {
    let (mut created, mut expires) = (None, None);
    for child in &element.children {
        if child.is(WSU_NS, "Created") {
            once(&mut created, child, "Timestamp/Created")?;
        } else if child.is(WSU_NS, "Expires") {
            once(&mut expires, child, "Timestamp/Expires")?;
        } else {
            return Err(invalid(format!(
                "a Timestamp holds Created and Expires, not {}",
                child.name()
            )));
        }
    }
    Ok(Timestamp {
        created: created.map(date_time).transpose()?,
        expires: expires.map(date_time).transpose()?,
    })
}

fn username_token(element: &Element) -> Result<UsernameToken, Refusal> {
    let (mut username, mut password, mut nonce, mut created) = (None, None, None, None);
    for child in &element.children {
        if child.is(WSSE_NS, "Username") {
            once(&mut username, child, "Username")?;
        } else if child.is(WSSE_NS, "Password") {
            once(&mut password, child, "Password")?;
        } else if child.is(WSSE_NS, "Nonce") {
            once(&mut nonce, child, "Nonce")?;
        } else if child.is(WSU_NS, "Created") || child.is(WSSE_NS, "Created") {
            once(&mut created, child, "UsernameToken/Created")?;
        } else {
            return Err(unsupported(format!(
                "polyhub takes a UsernameToken of Username, Password (PasswordText), Nonce and Created; {} is not supported",
                child.name()
            )));
        }
    }
    let username = username
        .map(|u| u.text.trim().to_owned())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid("the UsernameToken has no Username"))?;
    let password = password.ok_or_else(|| {
        unsupported("a UsernameToken without a Password is not supported: send the password as PasswordText")
    })?;
    // WSS: a Password without Type is PasswordText.
    let kind = password
        .attribute("", "Type")
        .unwrap_or("#PasswordText")
        .trim();
    match kind.rsplit_once('#').map_or(kind, |(_, fragment)| fragment) {
        "PasswordText" => {}
        "PasswordDigest" => {
            return Err(unsupported(
                "PasswordDigest is not supported: it is checked against the clear password, which polyhub never keeps (it stores only a salted hash); send PasswordText over TLS",
            ));
        }
        _ => {
            return Err(unsupported(format!(
                "the Password Type {kind:?} is not supported"
            )));
        }
    }
    let nonce = match nonce {
        None => None,
        Some(nonce) => {
            let encoding = nonce
                .attribute("", "EncodingType")
                .unwrap_or("#Base64Binary");
            if !encoding.ends_with("#Base64Binary") {
                return Err(unsupported(format!(
                    "a Nonce's EncodingType must be Base64Binary, not {encoding:?}"
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(nonce.text.trim())
                .map_err(|_| invalid("the Nonce is not base64"))?;
            if bytes.is_empty() || bytes.len() > 256 {
                return Err(invalid("a Nonce must be 1 to 256 bytes"));
            }
            Some(bytes)
        }
    };
    let created = created.map(date_time).transpose()?;
    if nonce.is_some() && created.is_none() {
        return Err(invalid(
            "a UsernameToken with a Nonce needs a Created: the nonce is remembered only for the window Created opens",
        ));
    }
    Ok(UsernameToken {
        username,
        password: password.text.clone(),
        nonce,
        created,
    })
}

fn bearer_token(element: &Element) -> Result<String, Refusal> {
    let value_type = element.attribute("", "ValueType").unwrap_or("").trim();
    if !BEARER_VALUE_TYPES.contains(&value_type) {
        return Err(unsupported(format!(
            "a BinarySecurityToken of ValueType {value_type:?} is not supported: polyhub takes a bearer access token as {}",
            BEARER_VALUE_TYPES[0]
        )));
    }
    let content = element.text.trim();
    // The token as sent: base64 (WS-Security's default encoding) of the
    // token's ASCII, or the token itself (a JWT has dots, base64 none).
    if content.contains('.') {
        return Ok(content.to_owned());
    }
    let encoding = element
        .attribute("", "EncodingType")
        .unwrap_or("#Base64Binary");
    if !encoding.ends_with("#Base64Binary") {
        return Err(unsupported(format!(
            "a BinarySecurityToken's EncodingType must be Base64Binary, not {encoding:?}"
        )));
    }
    base64::engine::general_purpose::STANDARD
        .decode(content)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Refusal {
            fault: SecurityFault::InvalidSecurityToken,
            reason: "the BinarySecurityToken is not base64 of an access token".into(),
        })
}

/// Reads the `wsse:Security` block `block` of `call`.
pub fn read_security(call: &OperationCall, block: &HeaderBlock) -> Result<SecurityHeader, Refusal> {
    let security = element_of(call, block)?;
    let (mut stamp, mut username, mut binary) = (None, None, None);
    for child in &security.children {
        if child.is(WSU_NS, "Timestamp") {
            once(&mut stamp, child, "Timestamp")?;
        } else if child.is(WSSE_NS, "UsernameToken") {
            once(&mut username, child, "UsernameToken")?;
        } else if child.is(WSSE_NS, "BinarySecurityToken") {
            once(&mut binary, child, "BinarySecurityToken")?;
        } else {
            return Err(unsupported(format!(
                "polyhub processes a Timestamp, a UsernameToken and a BinarySecurityToken; {} is not supported (no part of the message was accepted unchecked)",
                child.name()
            )));
        }
    }
    let token = match (username, binary) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "send one token: a UsernameToken or a BinarySecurityToken, not both",
            ));
        }
        (Some(token), None) => Some(Token::Username(username_token(token)?)),
        (None, Some(token)) => Some(Token::Bearer(bearer_token(token)?)),
        (None, None) => None,
    };
    Ok(SecurityHeader {
        timestamp: stamp.map(timestamp).transpose()?,
        token,
    })
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;

    use super::*;
    use crate::SoapVersion;
    use crate::envelope::{Limits, read_call};

    const V11: &str = "http://schemas.xmlsoap.org/soap/envelope/";

    /// The Security header of a LookupUser envelope whose prefixes for
    /// wsse and wsu are declared on the Envelope, not in the block.
    fn read(security: &str) -> Result<SecurityHeader, Refusal> {
        let xml = format!(
            "<s:Envelope xmlns:s=\"{V11}\" xmlns:wsse=\"{WSSE_NS}\" xmlns:wsu=\"{WSU_NS}\">\
             <s:Header>{security}</s:Header><s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\">\
             <u:username>alice</u:username></u:LookupUser></s:Body></s:Envelope>"
        );
        let call = read_call(SoapVersion::V11, Bytes::from(xml), &Limits::default()).unwrap();
        let block = call.headers.iter().find(|b| *b.name() == SECURITY).unwrap();
        read_security(&call, block)
    }

    fn refusal(security: &str) -> Refusal {
        read(security).unwrap_err()
    }

    #[test]
    fn a_username_token_with_nonce_and_timestamp_is_read_with_prefixes_from_the_envelope() {
        let header = read(
            "<wsse:Security s:mustUnderstand=\"1\"><wsu:Timestamp wsu:Id=\"TS-1\">\
             <wsu:Created>2026-12-06T10:00:00Z</wsu:Created><wsu:Expires>2026-12-06T10:05:00.123Z</wsu:Expires>\
             </wsu:Timestamp><wsse:UsernameToken><wsse:Username> alice </wsse:Username>\
             <wsse:Password Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText\">p&amp;ss &#x263A; </wsse:Password>\
             <wsse:Nonce EncodingType=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary\">AAEC</wsse:Nonce>\
             <wsu:Created>2026-12-06T10:00:00+00:00</wsu:Created></wsse:UsernameToken></wsse:Security>",
        )
        .unwrap();
        let stamp = header.timestamp.unwrap();
        assert_eq!(stamp.created.unwrap().unix_timestamp(), 1_796_551_200);
        assert!(stamp.expires.unwrap() > stamp.created.unwrap());
        let Some(Token::Username(token)) = header.token else {
            panic!("no UsernameToken");
        };
        assert_eq!(token.username, "alice");
        assert_eq!(
            token.password, "p&ss \u{263A} ",
            "the password exactly as sent"
        );
        assert_eq!(token.nonce.as_deref(), Some(&[0u8, 1, 2][..]));
        assert!(token.created.is_some());
        assert!(
            !format!("{token:?}").contains("p&ss"),
            "Debug hides the password"
        );
    }

    #[test]
    fn a_password_without_type_is_text_and_a_digest_is_refused_saying_why() {
        let header = read(
            "<x:Security xmlns:x=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\">\
             <x:UsernameToken><x:Username>alice</x:Username><x:Password>pw</x:Password></x:UsernameToken></x:Security>",
        )
        .unwrap();
        assert!(matches!(header.token, Some(Token::Username(t)) if t.password == "pw"));
        let digest = refusal(
            "<wsse:Security><wsse:UsernameToken><wsse:Username>alice</wsse:Username>\
             <wsse:Password Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest\">x</wsse:Password>\
             </wsse:UsernameToken></wsse:Security>",
        );
        assert_eq!(digest.fault, SecurityFault::UnsupportedSecurityToken);
        assert!(
            digest.reason.contains("PasswordDigest"),
            "{}",
            digest.reason
        );
        assert!(digest.reason.contains("PasswordText"), "{}", digest.reason);
    }

    #[test]
    fn a_bearer_token_is_taken_as_sent_or_in_base64() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln";
        let raw = read(&format!(
            "<wsse:Security><wsse:BinarySecurityToken ValueType=\"urn:ietf:params:oauth:token-type:jwt\">{jwt}</wsse:BinarySecurityToken></wsse:Security>"
        ))
        .unwrap();
        assert_eq!(raw.token, Some(Token::Bearer(jwt.into())));
        let encoded = base64::engine::general_purpose::STANDARD.encode(jwt);
        let based = read(&format!(
            "<wsse:Security><wsse:BinarySecurityToken ValueType=\"urn:ietf:params:oauth:token-type:access_token\" \
             EncodingType=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary\">\n{encoded}\n</wsse:BinarySecurityToken></wsse:Security>"
        ))
        .unwrap();
        assert_eq!(based.token, Some(Token::Bearer(jwt.into())));
        let x509 = refusal(
            "<wsse:Security><wsse:BinarySecurityToken ValueType=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3\">MIIB</wsse:BinarySecurityToken></wsse:Security>",
        );
        assert_eq!(x509.fault, SecurityFault::UnsupportedSecurityToken);
    }

    #[test]
    fn what_polyhub_does_not_check_is_refused_never_skipped() {
        let cases = [
            (
                "<wsse:Security><ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"/></wsse:Security>",
                SecurityFault::UnsupportedSecurityToken,
            ),
            (
                "<wsse:Security><wsse:UsernameToken><wsse:Username>a</wsse:Username><wsse:Password>p</wsse:Password></wsse:UsernameToken>\
                 <wsse:BinarySecurityToken ValueType=\"urn:ietf:params:oauth:token-type:jwt\">a.b.c</wsse:BinarySecurityToken></wsse:Security>",
                SecurityFault::InvalidSecurity,
            ),
            (
                "<wsse:Security><wsse:UsernameToken><wsse:Username>a</wsse:Username><wsse:Password>p</wsse:Password>\
                 <wsse:Nonce>AAEC</wsse:Nonce></wsse:UsernameToken></wsse:Security>",
                SecurityFault::InvalidSecurity,
            ),
            (
                "<wsse:Security><wsse:UsernameToken><wsse:Username></wsse:Username><wsse:Password>p</wsse:Password></wsse:UsernameToken></wsse:Security>",
                SecurityFault::InvalidSecurity,
            ),
            (
                "<wsse:Security><wsu:Timestamp><wsu:Created>yesterday</wsu:Created></wsu:Timestamp></wsse:Security>",
                SecurityFault::InvalidSecurity,
            ),
            (
                "<wsse:Security><wsu:Timestamp/><wsu:Timestamp/></wsse:Security>",
                SecurityFault::InvalidSecurity,
            ),
            (
                "<wsse:Security><wsse:UsernameToken><wsse:Username>a</wsse:Username></wsse:UsernameToken></wsse:Security>",
                SecurityFault::UnsupportedSecurityToken,
            ),
        ];
        for (security, fault) in cases {
            assert_eq!(refusal(security).fault, fault, "{security}");
        }
    }
}
