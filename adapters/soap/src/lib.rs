//! hub-soap: SOAP 1.1 and 1.2 for polyhub's SOAP services.
//!
//! Reading is hardened: any DOCTYPE is refused (so no entity of any kind is
//! ever expanded), size, nesting depth and element count are bounded, and bad
//! UTF-8 or a truncated document is a fault, never a panic. Elements are
//! matched by namespace URI, never by prefix. The envelope, the SOAP version
//! and the operation element are checked by a namespace-aware streaming
//! reader first; only the operation's payload is handed on, re-emitted
//! without namespaces, for the services to deserialize. The Header's blocks
//! (name, `mustUnderstand`, actor or role, bytes as sent) and the Body's
//! bytes are kept for what needs them as signed: WS-Security, later.
//!
//! Both SOAP services are a [`Dispatcher`] each, given their operations: the
//! request handling around an operation (method, WSDL, reading, headers,
//! faults) is written once, here, and not exported piecemeal.

mod dispatch;
mod envelope;
mod fault;
mod header;
mod http;
mod security;
mod write;
pub mod wsse;

pub use dispatch::{Answer, Call, Dispatcher};
pub use envelope::{Limits, OperationCall, read_call, version_of};
pub use fault::{Fault, FaultCode};
pub use header::{HeaderBlock, MAX_HEADER_BLOCKS, MAX_HEADER_BYTES, QName, Role};
pub use hub_runtime::config::SecurityPolicy;
pub use security::{Caller, Proof, SecuritySettings, UNKNOWN_CLIENT, WsSecurity};
pub use write::escape_text;

/// The namespace of polyhub's user services, their messages and fault detail.
pub const USERS_NS: &str = "urn:polyhub:users:v1";

/// Which SOAP a message speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    V11,
    V12,
}

impl SoapVersion {
    pub const fn envelope_ns(self) -> &'static str {
        match self {
            SoapVersion::V11 => "http://schemas.xmlsoap.org/soap/envelope/",
            SoapVersion::V12 => "http://www.w3.org/2003/05/soap-envelope",
        }
    }

    pub const fn content_type(self) -> &'static str {
        match self {
            SoapVersion::V11 => "text/xml; charset=utf-8",
            SoapVersion::V12 => "application/soap+xml; charset=utf-8",
        }
    }

    fn from_envelope_ns(ns: &str) -> Option<Self> {
        [SoapVersion::V11, SoapVersion::V12]
            .into_iter()
            .find(|v| v.envelope_ns() == ns)
    }
}

/// wsdl/users.wsdl, compiled in: what the services serve is the file in the
/// repository, with the two endpoints' addresses filled in.
pub const USERS_WSDL: &str = include_str!("../../../wsdl/users.wsdl");

/// The WS-SecurityPolicy 1.3 policy a binding references when its
/// operation's policy is `required`: a UsernameToken (PasswordText) or a
/// bearer token in a BinarySecurityToken, with a Timestamp, over TLS.
const SECURITY_POLICY: &str = r#"<wsp:Policy wsu:Id="PolyhubWsSecurity"
      xmlns:wsp="http://www.w3.org/ns/ws-policy"
      xmlns:sp="http://docs.oasis-open.org/ws-sx/ws-securitypolicy/200702"
      xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">
    <wsp:ExactlyOne>
      <wsp:All>
        <sp:SupportingTokens>
          <wsp:Policy>
            <sp:UsernameToken sp:IncludeToken="http://docs.oasis-open.org/ws-sx/ws-securitypolicy/200702/IncludeToken/AlwaysToRecipient">
              <wsp:Policy><sp:WssUsernameToken11/></wsp:Policy>
            </sp:UsernameToken>
          </wsp:Policy>
        </sp:SupportingTokens>
        <sp:Wss11><wsp:Policy/></sp:Wss11>
      </wsp:All>
      <wsp:All>
        <sp:SupportingTokens>
          <wsp:Policy>
            <sp:IssuedToken sp:IncludeToken="http://docs.oasis-open.org/ws-sx/ws-securitypolicy/200702/IncludeToken/AlwaysToRecipient">
              <sp:RequestSecurityTokenTemplate>
                <wst:TokenType xmlns:wst="http://docs.oasis-open.org/ws-sx/ws-trust/200512">urn:ietf:params:oauth:token-type:jwt</wst:TokenType>
              </sp:RequestSecurityTokenTemplate>
              <wsp:Policy/>
            </sp:IssuedToken>
          </wsp:Policy>
        </sp:SupportingTokens>
        <sp:Wss11><wsp:Policy/></sp:Wss11>
      </wsp:All>
    </wsp:ExactlyOne>
  </wsp:Policy>"#;

/// A binding's reference to [`SECURITY_POLICY`].
const POLICY_REFERENCE: &str = r##"<wsp:PolicyReference xmlns:wsp="http://www.w3.org/ns/ws-policy" URI="#PolyhubWsSecurity"/>"##;

/// The WSDL with the services' external addresses and, for each operation
/// whose policy is `required`, the WS-SecurityPolicy its bindings must meet.
pub fn users_wsdl(
    register_url: &str,
    lookup_url: &str,
    register: SecurityPolicy,
    lookup: SecurityPolicy,
) -> String {
    let reference = |policy: SecurityPolicy| {
        if policy == SecurityPolicy::Required {
            POLICY_REFERENCE
        } else {
            ""
        }
    };
    let any_required = [register, lookup].contains(&SecurityPolicy::Required);
    USERS_WSDL
        .replace("{{REGISTER_URL}}", &escape_text(register_url))
        .replace("{{LOOKUP_URL}}", &escape_text(lookup_url))
        .replace("{{REGISTER_POLICY}}", reference(register))
        .replace("{{LOOKUP_POLICY}}", reference(lookup))
        .replace(
            "{{POLICIES}}",
            if any_required { SECURITY_POLICY } else { "" },
        )
}
