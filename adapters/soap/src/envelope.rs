//! Reading a request: content type to SOAP version, then one streaming,
//! namespace-aware pass over the document under hard limits.

use axum::http::{HeaderMap, StatusCode, header};
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use crate::fault::{Fault, FaultCode};
use crate::{SoapVersion, USERS_NS};

/// Bounds on what one request may cost to read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024,
            max_depth: 32,
            max_elements: 1_000,
        }
    }
}

/// One operation called in a request's Body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationCall {
    pub version: SoapVersion,
    /// The operation element's local name, e.g. `RegisterUser`.
    pub operation: String,
    /// The operation element and its content, without namespaces or prefixes,
    /// ready for a plain deserializer: `<RegisterUser><username>..`.
    pub payload: String,
}

/// The SOAP version a request's content type declares: `text/xml` is 1.1,
/// `application/soap+xml` is 1.2; anything else is a 415 fault.
pub fn version_of(headers: &HeaderMap) -> Result<SoapVersion, Fault> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "text/xml" => Ok(SoapVersion::V11),
        "application/soap+xml" => Ok(SoapVersion::V12),
        _ => Err(Fault::client(
            SoapVersion::V11,
            format!(
                "unsupported content type {raw:?}: use text/xml (SOAP 1.1) or application/soap+xml (SOAP 1.2)"
            ),
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Prolog,
    InEnvelope,
    InHeader,
    InBody,
    InOperation,
    AfterEnvelope,
}

/// Reads the envelope of a request whose content type said `version`.
pub fn read_call(
    version: SoapVersion,
    body: &[u8],
    limits: &Limits,
) -> Result<OperationCall, Fault> {
    let bad = |reason: String| Fault::client(version, reason);
    if body.len() > limits.max_bytes {
        return Err(bad(format!(
            "the message is larger than {} bytes",
            limits.max_bytes
        ))
        .with_status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| bad(format!("the message is not valid UTF-8: {e}")))?;

    let mut reader = NsReader::from_str(text);
    let config = reader.config_mut();
    // Never trim: text arrives in pieces around references, and trimming a
    // piece would change a password. Whitespace between elements is ignored below.
    config.trim_text(false);
    config.expand_empty_elements = true;
    config.check_end_names = true;

    let env_ns = version.envelope_ns();
    let mut place = Place::Prolog;
    let mut depth = 0usize;
    let mut elements = 0usize;
    let mut seen_body = false;
    let mut operation: Option<String> = None;
    // The operation's fields seen so far: each may come once, as a JSON key
    // may (the last of two would silently win otherwise).
    let mut fields: Vec<String> = Vec::new();
    let mut payload = String::new();
    // Depth at which the element being skipped (a header block) started.
    let mut skipping_from: Option<usize> = None;

    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| bad(format!("the message is not well-formed XML: {e}")))?;
        match event {
            Event::DocType(_) => {
                return Err(bad("a DOCTYPE is not allowed in a SOAP message".into()));
            }
            Event::PI(_) => {
                return Err(bad(
                    "processing instructions are not allowed in a SOAP message".into(),
                ));
            }
            Event::Decl(decl) => match decl.encoding() {
                None => {}
                Some(Ok(encoding)) if encoding.eq_ignore_ascii_case("utf-8") => {}
                Some(_) => return Err(bad("only UTF-8 encoded messages are accepted".into())),
            },
            Event::Comment(_) => {}
            Event::Start(start) => {
                depth += 1;
                elements += 1;
                if depth > limits.max_depth {
                    return Err(bad(format!(
                        "the message nests deeper than {} elements",
                        limits.max_depth
                    )));
                }
                if elements > limits.max_elements {
                    return Err(bad(format!(
                        "the message has more than {} elements",
                        limits.max_elements
                    )));
                }
                if skipping_from.is_some() {
                    continue;
                }
                let local = start.local_name().as_ref().to_owned();
                let in_env_ns = matches!(ns, ResolveResult::Bound(n) if n.0 == env_ns);
                match place {
                    Place::Prolog => {
                        if local != "Envelope" {
                            return Err(bad(format!(
                                "the root element must be a SOAP Envelope, not {local}"
                            )));
                        }
                        if !in_env_ns {
                            let other = match ns {
                                ResolveResult::Bound(n) => SoapVersion::from_envelope_ns(n.0),
                                _ => None,
                            };
                            let reason = match other {
                                Some(other) => format!(
                                    "a SOAP {} envelope was sent as {}",
                                    if other == SoapVersion::V11 {
                                        "1.1"
                                    } else {
                                        "1.2"
                                    },
                                    if version == SoapVersion::V11 {
                                        "text/xml (SOAP 1.1)"
                                    } else {
                                        "application/soap+xml (SOAP 1.2)"
                                    },
                                ),
                                None => {
                                    "the Envelope is not in a SOAP envelope namespace".to_owned()
                                }
                            };
                            return Err(Fault::new(version, FaultCode::VersionMismatch, reason));
                        }
                        place = Place::InEnvelope;
                    }
                    Place::InEnvelope if in_env_ns && local == "Header" && !seen_body => {
                        place = Place::InHeader;
                    }
                    Place::InEnvelope if in_env_ns && local == "Body" && !seen_body => {
                        seen_body = true;
                        place = Place::InBody;
                    }
                    Place::InEnvelope => {
                        return Err(bad(format!("unexpected element {local} in the Envelope")));
                    }
                    Place::InHeader => {
                        for attr in start.attributes() {
                            let attr = attr.map_err(|e| bad(format!("a bad attribute: {e}")))?;
                            let (attr_ns, attr_local) =
                                reader.resolver_mut().resolve_attribute(attr.key);
                            let env_attr =
                                matches!(attr_ns, ResolveResult::Bound(n) if n.0 == env_ns);
                            let value = attr.value.as_ref();
                            if env_attr
                                && attr_local.as_ref() == "mustUnderstand"
                                && (value == "1" || value == "true")
                            {
                                return Err(Fault::new(
                                    version,
                                    FaultCode::MustUnderstand,
                                    format!(
                                        "the header block {local} must be understood and is not"
                                    ),
                                ));
                            }
                        }
                        skipping_from = Some(depth);
                    }
                    Place::InBody => {
                        if operation.is_some() {
                            return Err(bad("the Body holds more than one operation".into()));
                        }
                        let in_users_ns = matches!(ns, ResolveResult::Bound(n) if n.0 == USERS_NS);
                        if !in_users_ns {
                            return Err(bad(format!(
                                "{local} is not an operation of namespace {USERS_NS}"
                            )));
                        }
                        payload.push('<');
                        payload.push_str(&local);
                        payload.push('>');
                        operation = Some(local);
                        place = Place::InOperation;
                    }
                    Place::InOperation => {
                        let allowed = match ns {
                            ResolveResult::Unbound => true,
                            ResolveResult::Bound(n) => n.0 == USERS_NS,
                            ResolveResult::Unknown(_) => false,
                        };
                        if !allowed {
                            return Err(bad(format!(
                                "unexpected element {local} in the operation"
                            )));
                        }
                        if depth == 4 {
                            if fields.contains(&local) {
                                return Err(bad(format!(
                                    "{local} appears more than once in the operation"
                                )));
                            }
                            fields.push(local.clone());
                        }
                        payload.push('<');
                        payload.push_str(&local);
                        payload.push('>');
                    }
                    Place::AfterEnvelope => {
                        return Err(bad("content after the Envelope".into()));
                    }
                }
            }
            Event::End(end) => {
                if skipping_from == Some(depth) {
                    skipping_from = None;
                } else if skipping_from.is_none() {
                    match place {
                        Place::InOperation => {
                            payload.push_str("</");
                            payload.push_str(end.local_name().as_ref());
                            payload.push('>');
                            if depth == 3 {
                                place = Place::InBody;
                            }
                        }
                        Place::InHeader | Place::InBody => place = Place::InEnvelope,
                        Place::InEnvelope => place = Place::AfterEnvelope,
                        Place::Prolog | Place::AfterEnvelope => {}
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                if place == Place::InOperation && skipping_from.is_none() {
                    payload.push_str(&escape(t.as_ref()));
                } else if !t.as_ref().trim().is_empty()
                    && matches!(
                        place,
                        Place::Prolog | Place::AfterEnvelope | Place::InEnvelope | Place::InBody
                    )
                {
                    return Err(bad("text where only elements belong".into()));
                }
            }
            Event::CData(c) => {
                if place == Place::InOperation && skipping_from.is_none() {
                    payload.push_str(&escape(c.into_inner().as_ref()));
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten().map(String::from)
                } else {
                    resolve_predefined_entity(r.as_ref()).map(str::to_owned)
                };
                let Some(text) = resolved else {
                    return Err(bad(
                        "entity references other than XML's five are not allowed".into(),
                    ));
                };
                if place == Place::InOperation && skipping_from.is_none() {
                    payload.push_str(&escape(text.as_str()));
                }
            }
            Event::Empty(_) => {} // expanded into Start and End by the config
            Event::Eof => break,
        }
    }
    if depth != 0 || place == Place::Prolog {
        return Err(bad("the message ends before its Envelope is closed".into()));
    }
    if !seen_body {
        return Err(bad("the Envelope has no Body".into()));
    }
    let operation = operation.ok_or_else(|| bad("the Body names no operation".into()))?;
    Ok(OperationCall {
        version,
        operation,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
    const V12: &str = "http://www.w3.org/2003/05/soap-envelope";

    fn read(version: SoapVersion, xml: &str) -> Result<OperationCall, Fault> {
        read_call(version, xml.as_bytes(), &Limits::default())
    }

    fn register(env_open: &str, env_close: &str, body_open: &str, body_close: &str) -> String {
        format!(
            "{env_open}{body_open}<u:RegisterUser xmlns:u=\"urn:polyhub:users:v1\">\
             <u:username>alice</u:username><u:email>a@example.com</u:email>\
             <u:password>p&amp;ss &#x263A;</u:password></u:RegisterUser>{body_close}{env_close}"
        )
    }

    const PAYLOAD: &str = "<RegisterUser><username>alice</username><email>a@example.com</email><password>p&amp;ss \u{263A}</password></RegisterUser>";

    #[test]
    fn any_prefix_or_a_default_namespace_reads_the_same() {
        let styles = [
            (
                format!("<soapenv:Envelope xmlns:soapenv=\"{V11}\">"),
                "</soapenv:Envelope>",
                "<soapenv:Body>",
                "</soapenv:Body>",
            ),
            (
                format!("<soap-env:Envelope xmlns:soap-env=\"{V11}\">"),
                "</soap-env:Envelope>",
                "<soap-env:Body>",
                "</soap-env:Body>",
            ),
            (
                format!("<s:Envelope xmlns:s=\"{V11}\"><s:Header/>"),
                "</s:Envelope>",
                "<s:Body>",
                "</s:Body>",
            ),
            (
                format!("<Envelope xmlns=\"{V11}\">"),
                "</Envelope>",
                "<Body>",
                "</Body>",
            ),
        ];
        for (open, close, body_open, body_close) in styles {
            let call = read(
                SoapVersion::V11,
                &register(&open, close, body_open, body_close),
            )
            .unwrap();
            assert_eq!(call.operation, "RegisterUser");
            assert_eq!(call.payload, PAYLOAD, "{open}");
        }
    }

    #[test]
    fn soap12_reads_with_its_own_namespace() {
        let xml = register(
            &format!("<env:Envelope xmlns:env=\"{V12}\">"),
            "</env:Envelope>",
            "<env:Body>",
            "</env:Body>",
        );
        assert_eq!(read(SoapVersion::V12, &xml).unwrap().payload, PAYLOAD);
    }

    #[test]
    fn the_wrong_version_for_the_content_type_is_a_version_mismatch() {
        let v12_doc = register(
            &format!("<e:Envelope xmlns:e=\"{V12}\">"),
            "</e:Envelope>",
            "<e:Body>",
            "</e:Body>",
        );
        assert_eq!(
            read(SoapVersion::V11, &v12_doc).unwrap_err().code(),
            FaultCode::VersionMismatch
        );
        let v11_doc = register(
            &format!("<e:Envelope xmlns:e=\"{V11}\">"),
            "</e:Envelope>",
            "<e:Body>",
            "</e:Body>",
        );
        assert_eq!(
            read(SoapVersion::V12, &v11_doc).unwrap_err().code(),
            FaultCode::VersionMismatch
        );
        let foreign = register(
            "<e:Envelope xmlns:e=\"urn:not-soap\">",
            "</e:Envelope>",
            "<e:Body>",
            "</e:Body>",
        );
        assert_eq!(
            read(SoapVersion::V11, &foreign).unwrap_err().code(),
            FaultCode::VersionMismatch
        );
    }

    #[test]
    fn structural_faults() {
        let cases = [
            (
                "no body",
                format!("<s:Envelope xmlns:s=\"{V11}\"></s:Envelope>"),
            ),
            (
                "empty body",
                format!("<s:Envelope xmlns:s=\"{V11}\"><s:Body/></s:Envelope>"),
            ),
            ("not an envelope", "<Foo/>".to_owned()),
            (
                "two operations",
                format!(
                    "<s:Envelope xmlns:s=\"{V11}\"><s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"/>\
                 <u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"/></s:Body></s:Envelope>"
                ),
            ),
            (
                "operation in a foreign namespace",
                format!(
                    "<s:Envelope xmlns:s=\"{V11}\"><s:Body><x:LookupUser xmlns:x=\"urn:other\"/></s:Body></s:Envelope>"
                ),
            ),
            (
                "body in the wrong namespace",
                format!(
                    "<s:Envelope xmlns:s=\"{V11}\"><Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"/></Body></s:Envelope>"
                ),
            ),
            (
                "truncated",
                format!(
                    "<s:Envelope xmlns:s=\"{V11}\"><s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\">"
                ),
            ),
            ("empty", String::new()),
            (
                "a field twice",
                format!(
                    "<s:Envelope xmlns:s=\"{V11}\"><s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\">\
                 <u:username>alice</u:username><u:username>mallory</u:username></u:LookupUser></s:Body></s:Envelope>"
                ),
            ),
        ];
        for (what, xml) in cases {
            let fault = read(SoapVersion::V11, &xml).unwrap_err();
            assert_eq!(fault.code(), FaultCode::Client, "{what}");
        }
    }

    #[test]
    fn a_mandatory_header_we_do_not_know_is_a_must_understand_fault() {
        let xml = format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Header><w:Security xmlns:w=\"urn:x\" s:mustUnderstand=\"1\"/></s:Header>\
             <s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"/></s:Body></s:Envelope>"
        );
        assert_eq!(
            read(SoapVersion::V11, &xml).unwrap_err().code(),
            FaultCode::MustUnderstand
        );
        let optional = xml.replace("s:mustUnderstand=\"1\"", "s:mustUnderstand=\"0\"");
        assert_eq!(
            read(SoapVersion::V11, &optional).unwrap().operation,
            "LookupUser"
        );
    }

    #[test]
    fn hostile_documents_are_refused() {
        let laughs = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>\
             <s:Envelope xmlns:s=\"{V11}\"><s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\">\
             <u:username>&lol2;</u:username></u:LookupUser></s:Body></s:Envelope>"
        );
        let xxe = format!(
            "<!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><s:Envelope xmlns:s=\"{V11}\"><s:Body>\
             <u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>&xxe;</u:username></u:LookupUser></s:Body></s:Envelope>"
        );
        let undeclared = format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\">\
             <u:username>&xxe;</u:username></u:LookupUser></s:Body></s:Envelope>"
        );
        let deep = format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Body>{}",
            "<a>".repeat(100_000)
        );
        let many = format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\">{}</u:LookupUser></s:Body></s:Envelope>",
            "<u:x/>".repeat(5_000)
        );
        for (what, xml) in [
            ("billion laughs", laughs),
            ("external entity", xxe),
            ("undeclared entity", undeclared),
            ("deep", deep),
            ("many", many),
        ] {
            let limits = Limits {
                max_bytes: 10 << 20,
                ..Limits::default()
            };
            let fault = read_call(SoapVersion::V11, xml.as_bytes(), &limits).unwrap_err();
            assert_eq!(fault.code(), FaultCode::Client, "{what}");
            assert!(!fault.reason().contains("root:"), "{what}: no file content");
        }
        let big = vec![b'a'; Limits::default().max_bytes + 1];
        assert_eq!(
            read(SoapVersion::V11, std::str::from_utf8(&big).unwrap())
                .unwrap_err()
                .status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let bad_utf8 = [
            b"<s:Envelope xmlns:s=\"x\">".as_slice(),
            &[0xff, 0xfe],
            b"</s:Envelope>",
        ]
        .concat();
        assert_eq!(
            read_call(SoapVersion::V11, &bad_utf8, &Limits::default())
                .unwrap_err()
                .code(),
            FaultCode::Client
        );
    }

    #[test]
    fn content_types_choose_the_version() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            version_of(&h)
        };
        assert_eq!(with("text/xml; charset=utf-8").unwrap(), SoapVersion::V11);
        assert_eq!(
            with("application/soap+xml; charset=utf-8; action=\"urn:x\"").unwrap(),
            SoapVersion::V12
        );
        assert_eq!(
            with("application/json").unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            version_of(&HeaderMap::new()).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
