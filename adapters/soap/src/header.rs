//! SOAP Header blocks as the envelope reader keeps them: each block's name,
//! its `mustUnderstand` and its target, and its bytes exactly as sent, so a
//! later processor (WS-Security's `wsse:Security`) reads what was signed.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use axum::body::Bytes;

use crate::SoapVersion;
use crate::fault::Fault;

/// At most this many blocks in a Header; a 33rd is a Client/Sender fault.
/// WS-Security with WS-Addressing needs about ten.
pub const MAX_HEADER_BLOCKS: usize = 32;

/// At most this many bytes from `<Header` to `</Header>`: a WS-Security
/// header with an X.509 token, a signature and a SAML assertion is well
/// under 32 KiB. The body limit (`soap.max_body_bytes`) bounds the rest.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// SOAP 1.1's actor for "the next node", which is always us.
const ACTOR_NEXT_11: &str = "http://schemas.xmlsoap.org/soap/actor/next";
const ROLE_NEXT_12: &str = "http://www.w3.org/2003/05/soap-envelope/role/next";
const ROLE_NONE_12: &str = "http://www.w3.org/2003/05/soap-envelope/role/none";
const ROLE_ULTIMATE_RECEIVER_12: &str =
    "http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver";

/// An element's qualified name: namespace URI (empty for none) and local
/// name. Compared by URI, never by prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QName {
    namespace: Cow<'static, str>,
    local: Cow<'static, str>,
}

impl QName {
    /// A name a service declares, e.g. WS-Security's
    /// `QName::new("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd", "Security")`.
    pub const fn new(namespace: &'static str, local: &'static str) -> Self {
        Self {
            namespace: Cow::Borrowed(namespace),
            local: Cow::Borrowed(local),
        }
    }

    pub(crate) fn owned(namespace: String, local: String) -> Self {
        Self {
            namespace: Cow::Owned(namespace),
            local: Cow::Owned(local),
        }
    }

    /// The namespace URI, empty when the element has none.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn local(&self) -> &str {
        &self.local
    }
}

/// Clark notation, `{urn:x}Security`, as in fault reasons.
impl fmt::Display for QName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.local)
        } else {
            write!(f, "{{{}}}{}", self.namespace, self.local)
        }
    }
}

/// Whom a header block is for: SOAP 1.1's `actor`, SOAP 1.2's `role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// No actor or role (or an empty one), or 1.2's `role/ultimateReceiver`:
    /// the service itself.
    UltimateReceiver,
    /// 1.1's `actor/next`, 1.2's `role/next`: whichever node reads it, us
    /// included.
    Next,
    /// 1.2's `role/none`: no node processes it.
    Nobody,
    /// Any other URI: an intermediary we do not act as.
    Other(String),
}

impl Role {
    /// The role a block's attribute names in `version`. An empty value counts
    /// as none given: a block in doubt is ours, so its `mustUnderstand` holds.
    pub(crate) fn parse(version: SoapVersion, value: &str) -> Self {
        let value = value.trim();
        match (version, value) {
            (_, "") => Role::UltimateReceiver,
            (SoapVersion::V11, ACTOR_NEXT_11) => Role::Next,
            (SoapVersion::V12, ROLE_NEXT_12) => Role::Next,
            (SoapVersion::V12, ROLE_NONE_12) => Role::Nobody,
            (SoapVersion::V12, ROLE_ULTIMATE_RECEIVER_12) => Role::UltimateReceiver,
            (_, other) => Role::Other(other.to_owned()),
        }
    }

    /// Whether we, the ultimate receiver, are the block's target.
    pub fn targets_us(&self) -> bool {
        matches!(self, Role::UltimateReceiver | Role::Next)
    }
}

/// `mustUnderstand`'s value: xs:boolean in both versions (SOAP 1.1 names
/// only `1` and `0`; toolkits send `true` too). Anything else is a fault,
/// never read as "optional".
pub(crate) fn parse_must_understand(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// One immediate child of the SOAP Header, as sent.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderBlock {
    name: QName,
    must_understand: bool,
    role: Role,
    raw: Bytes,
    span: Range<usize>,
}

/// Without the bytes: a `wsse:Security` block carries a password or a token.
impl fmt::Debug for HeaderBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderBlock")
            .field("name", &self.name)
            .field("must_understand", &self.must_understand)
            .field("role", &self.role)
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl HeaderBlock {
    pub(crate) fn new(
        name: QName,
        must_understand: bool,
        role: Role,
        raw: Bytes,
        span: Range<usize>,
    ) -> Self {
        Self {
            name,
            must_understand,
            role,
            raw,
            span,
        }
    }

    pub fn name(&self) -> &QName {
        &self.name
    }

    /// The envelope namespace's `mustUnderstand` attribute, false when absent.
    pub fn must_understand(&self) -> bool {
        self.must_understand
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The block exactly as sent, from `<` of its start tag to `>` of its end
    /// tag, shared with the request's bytes (not copied). Prefixes in it may be
    /// declared on the Envelope or Header: [`Self::span`] places it in the
    /// whole message for a reader that needs them.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Where [`Self::raw`] lies in the whole message.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// Whether this block obliges us and we do not understand it: meant for
    /// us, `mustUnderstand` true, and not among `understood`.
    pub fn is_misunderstood_by(&self, understood: &[QName]) -> bool {
        self.must_understand && self.role.targets_us() && !understood.contains(&self.name)
    }
}

/// The `MustUnderstand` fault for every block of `headers` that obliges us
/// and that no one understands, or `Ok` when there is none.
pub(crate) fn ensure_understood(
    version: SoapVersion,
    headers: &[HeaderBlock],
    understood: &[QName],
) -> Result<(), Fault> {
    let missing: Vec<QName> = headers
        .iter()
        .filter(|block| block.is_misunderstood_by(understood))
        .map(|block| block.name.clone())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Fault::must_understand(version, missing))
    }
}
