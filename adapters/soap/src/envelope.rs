//! Reading a request: content type to SOAP version, then one streaming,
//! namespace-aware pass over the document under hard limits.

use std::ops::Range;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use quick_xml::XmlVersion;
use quick_xml::escape::{escape, resolve_predefined_entity, unescape};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{NamespaceResolver, ResolveResult};
use quick_xml::reader::NsReader;

use crate::fault::{Fault, FaultCode};
use crate::header::{
    HeaderBlock, MAX_HEADER_BLOCKS, MAX_HEADER_BYTES, QName, Role, parse_must_understand,
};
use crate::{SoapVersion, USERS_NS};

/// Bounds on what one request may cost to read. The Header has its own
/// fixed caps besides ([`MAX_HEADER_BLOCKS`], [`MAX_HEADER_BYTES`]).
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

/// One operation called in a request's Body, with the request's Header
/// blocks and where its Body lies, over the request's bytes as received.
#[derive(Clone, PartialEq, Eq)]
pub struct OperationCall {
    pub version: SoapVersion,
    /// The operation element's local name, e.g. `RegisterUser`.
    pub operation: String,
    /// The operation element and its content, without namespaces or prefixes,
    /// ready for a plain deserializer: `<RegisterUser><username>..`.
    pub payload: String,
    /// Every immediate child of the Header, in document order.
    pub headers: Vec<HeaderBlock>,
    message: Bytes,
    body: Range<usize>,
}

/// Without the payload or the message: both carry passwords (and, later,
/// security tokens).
impl std::fmt::Debug for OperationCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationCall")
            .field("version", &self.version)
            .field("operation", &self.operation)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl OperationCall {
    /// The whole request as received (shared, not copied).
    pub fn message(&self) -> &Bytes {
        &self.message
    }

    /// The Body element exactly as sent, its tags included: a signature over
    /// the Body (WS-Security references it by the `wsu:Id` on its start tag)
    /// digests the element, attributes and all, not just its content.
    pub fn body(&self) -> &[u8] {
        self.message.get(self.body.clone()).unwrap_or_default()
    }

    /// Where [`Self::body`] lies in [`Self::message`].
    pub fn body_span(&self) -> Range<usize> {
        self.body.clone()
    }

    /// The `MustUnderstand` fault naming every header block that is meant
    /// for us, marked `mustUnderstand`, and not in `understood`; `Ok` when
    /// there is none. Run before the operation: SOAP processes no part of a
    /// message it cannot fully honour.
    pub fn ensure_understood(&self, understood: &[QName]) -> Result<(), Fault> {
        crate::header::ensure_understood(self.version, &self.headers, understood)
    }
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

/// A header block read up to its start tag, waiting for its end.
struct OpenBlock {
    name: QName,
    must_understand: bool,
    role: Role,
    start: usize,
    depth: usize,
}

/// A namespace-aware reader of a whole message, and where its positions
/// start in the message's bytes. quick-xml skips a byte order mark without
/// counting it in its positions: it is skipped here instead, and counted,
/// so spans index the message. Text is never trimmed: it arrives in pieces
/// around references, and trimming a piece would change a password.
pub(crate) fn message_reader(text: &str) -> (usize, NsReader<&[u8]>) {
    let (base, text) = match text.strip_prefix('\u{feff}') {
        Some(rest) => ('\u{feff}'.len_utf8(), rest),
        None => (0, text),
    };
    let mut reader = NsReader::from_str(text);
    let config = reader.config_mut();
    config.trim_text(false);
    config.expand_empty_elements = true;
    config.check_end_names = true;
    (base, reader)
}

/// Reads the envelope of a request whose content type said `version`.
/// `message` is kept, not copied: header blocks and the Body are spans of it.
pub fn read_call(
    version: SoapVersion,
    message: Bytes,
    limits: &Limits,
) -> Result<OperationCall, Fault> {
    let bad = |reason: String| Fault::client(version, reason);
    if message.len() > limits.max_bytes {
        return Err(bad(format!(
            "the message is larger than {} bytes",
            limits.max_bytes
        ))
        .with_status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    let text = std::str::from_utf8(&message)
        .map_err(|e| bad(format!("the message is not valid UTF-8: {e}")))?;

    let (base, mut reader) = message_reader(text);

    let env_ns = version.envelope_ns();
    let mut place = Place::Prolog;
    let mut depth = 0usize;
    let mut elements = 0usize;
    let mut seen_header = false;
    let mut seen_body = false;
    let mut operation: Option<String> = None;
    // The operation's fields seen so far: each may come once, as a JSON key
    // may (the last of two would silently win otherwise).
    let mut fields: Vec<String> = Vec::new();
    let mut payload = String::new();
    let mut headers: Vec<HeaderBlock> = Vec::new();
    // The header block being read (its content is skipped, kept as bytes).
    let mut open_block: Option<OpenBlock> = None;
    let mut header_start = 0usize;
    let mut body_span = 0..0;

    loop {
        // Offsets in `message`: where this event starts and where it ends.
        // Text is never trimmed, so an element's event starts at its `<`.
        let before = base.saturating_add(offset(reader.buffer_position()));
        let event = reader
            .read_event()
            .map_err(|e| bad(format!("the message is not well-formed XML: {e}")))?;
        let after = base.saturating_add(offset(reader.buffer_position()));
        if place == Place::InHeader && after.saturating_sub(header_start) > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "the Header is larger than {MAX_HEADER_BYTES} bytes"
            )));
        }
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
                if open_block.is_some() {
                    continue;
                }
                let (ns, local) = reader.resolver().resolve_element(start.name());
                let local = local.as_ref().to_owned();
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
                        // One Header: a second could hide blocks (or a second
                        // wsse:Security) from whoever reads only the first.
                        if seen_header {
                            return Err(bad("the Envelope has more than one Header".into()));
                        }
                        seen_header = true;
                        header_start = before;
                        place = Place::InHeader;
                    }
                    Place::InEnvelope if in_env_ns && local == "Body" && !seen_body => {
                        body_span.start = before;
                        seen_body = true;
                        place = Place::InBody;
                    }
                    Place::InEnvelope => {
                        return Err(bad(format!("unexpected element {local} in the Envelope")));
                    }
                    Place::InHeader => {
                        if headers.len() >= MAX_HEADER_BLOCKS {
                            return Err(bad(format!(
                                "the Header has more than {MAX_HEADER_BLOCKS} blocks"
                            )));
                        }
                        let namespace = match ns {
                            ResolveResult::Bound(n) => unescape(n.0)
                                .map_err(|e| {
                                    bad(format!("the namespace of header block {local}: {e}"))
                                })?
                                .into_owned(),
                            ResolveResult::Unbound => String::new(),
                            ResolveResult::Unknown(_) => {
                                return Err(bad(format!(
                                    "the header block {local} has an undeclared prefix"
                                )));
                            }
                        };
                        let (must_understand, role) =
                            block_attributes(version, reader.resolver(), &start).map_err(bad)?;
                        open_block = Some(OpenBlock {
                            name: QName::owned(namespace, local),
                            must_understand,
                            role,
                            start: before,
                            depth,
                        });
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
                match open_block.take() {
                    Some(block) if block.depth == depth => {
                        let span = block.start..after;
                        let raw = slice(&message, &span)
                            .ok_or_else(|| bad("the message is not well-formed XML".to_owned()))?;
                        headers.push(HeaderBlock::new(
                            block.name,
                            block.must_understand,
                            block.role,
                            raw,
                            span,
                        ));
                    }
                    Some(block) => open_block = Some(block),
                    None => match place {
                        Place::InOperation => {
                            payload.push_str("</");
                            payload.push_str(end.local_name().as_ref());
                            payload.push('>');
                            if depth == 3 {
                                place = Place::InBody;
                            }
                        }
                        Place::InBody => {
                            body_span.end = after;
                            place = Place::InEnvelope;
                        }
                        Place::InHeader => place = Place::InEnvelope,
                        Place::InEnvelope => place = Place::AfterEnvelope,
                        Place::Prolog | Place::AfterEnvelope => {}
                    },
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                if place == Place::InOperation {
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
                if place == Place::InOperation {
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
                if place == Place::InOperation {
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
        headers,
        message,
        body: body_span,
    })
}

/// A reader position as an offset in the message (which is no longer than
/// `usize` can count, having been read into memory).
fn offset(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

fn slice(message: &Bytes, span: &Range<usize>) -> Option<Bytes> {
    (span.start <= span.end && span.end <= message.len()).then(|| message.slice(span.clone()))
}

/// A header block's `mustUnderstand` and target, from the attributes in the
/// envelope's namespace: SOAP 1.1's `actor`, SOAP 1.2's `role`. Others (1.2's
/// `relay`, `encodingStyle`, anything foreign) are the block's own business.
fn block_attributes(
    version: SoapVersion,
    resolver: &NamespaceResolver,
    start: &BytesStart<'_>,
) -> Result<(bool, Role), String> {
    let env_ns = version.envelope_ns();
    let target = match version {
        SoapVersion::V11 => "actor",
        SoapVersion::V12 => "role",
    };
    let mut must_understand = false;
    let mut role = Role::UltimateReceiver;
    for attr in start.attributes() {
        let attr = attr.map_err(|e| format!("a bad attribute: {e}"))?;
        let (attr_ns, attr_local) = resolver.resolve_attribute(attr.key);
        if !matches!(attr_ns, ResolveResult::Bound(n) if n.0 == env_ns) {
            continue;
        }
        let name = attr_local.as_ref();
        if name != "mustUnderstand" && name != target {
            continue;
        }
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| format!("a bad attribute value: {e}"))?;
        if name == "mustUnderstand" {
            must_understand = parse_must_understand(&value).ok_or_else(|| {
                format!("mustUnderstand must be true, false, 1 or 0, not {value:?}")
            })?;
        } else {
            role = Role::parse(version, &value);
        }
    }
    Ok((must_understand, role))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
    const V12: &str = "http://www.w3.org/2003/05/soap-envelope";

    fn read(version: SoapVersion, xml: &str) -> Result<OperationCall, Fault> {
        read_call(version, Bytes::from(xml.to_owned()), &Limits::default())
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
                "two headers",
                format!(
                    "<s:Envelope xmlns:s=\"{V11}\"><s:Header/><s:Header/><s:Body>\
                 <u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"/></s:Body></s:Envelope>"
                ),
            ),
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

    const LOOKUP: &str = "<u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>alice</u:username></u:LookupUser>";

    /// The exact text of `part` within `xml`, as a span: what a block's or
    /// the Body's bytes must be.
    fn span_of(xml: &str, part: &str) -> Range<usize> {
        let start = xml.find(part).unwrap();
        assert_eq!(xml.matches(part).count(), 1, "{part} is not unique");
        start..start + part.len()
    }

    #[test]
    fn soap11_header_blocks_keep_their_names_attributes_and_bytes() {
        let security = "<wsse:Security xmlns:wsse=\"urn:wsse\" soap:mustUnderstand=\"1\">\n    \
             <wsse:UsernameToken><wsse:Username>al&amp;ice</wsse:Username><!-- c --></wsse:UsernameToken>\n  \
             </wsse:Security>";
        let next = "<t:Trace xmlns:t=\"urn:trace\" soap:actor=\"http://schemas.xmlsoap.org/soap/actor/next\" \
             soap:mustUnderstand=\"0\"/>";
        let other = "<t:Hop xmlns:t=\"urn:trace\" soap:actor=\"http://example.com/gateway\" \
             soap:mustUnderstand=\"1\"><![CDATA[<x>]]></t:Hop>";
        let unqualified = "<Ping xmlns=\"urn:ping\" id=\"7\">x</Ping>";
        let body =
            format!("<soap:Body wsu:Id=\"b1\" xmlns:wsu=\"urn:wsu\">\n  {LOOKUP}\n</soap:Body>");
        let xml = format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
             <soap:Envelope xmlns:soap=\"{V11}\">\n<soap:Header>\n  {security}\n  {next}<!-- between -->{other}\
             {unqualified}\n</soap:Header>\n{body}\n</soap:Envelope>\n"
        );
        let call = read(SoapVersion::V11, &xml).unwrap();
        let expected = [
            (
                ("urn:wsse", "Security"),
                true,
                Role::UltimateReceiver,
                security,
            ),
            (("urn:trace", "Trace"), false, Role::Next, next),
            (
                ("urn:trace", "Hop"),
                true,
                Role::Other("http://example.com/gateway".into()),
                other,
            ),
            (
                ("urn:ping", "Ping"),
                false,
                Role::UltimateReceiver,
                unqualified,
            ),
        ];
        assert_eq!(call.headers.len(), expected.len());
        for (block, ((ns, local), must, role, text)) in call.headers.iter().zip(expected) {
            assert_eq!(block.name().namespace(), ns);
            assert_eq!(block.name().local(), local);
            assert_eq!(block.must_understand(), must, "{local}");
            assert_eq!(block.role(), &role, "{local}");
            assert_eq!(block.raw().as_ref(), text.as_bytes(), "{local}");
            assert_eq!(block.span(), span_of(&xml, text), "{local}");
            assert_eq!(&call.message()[block.span()], text.as_bytes());
        }
        assert_eq!(call.body(), body.as_bytes());
        assert_eq!(call.body_span(), span_of(&xml, &body));
        assert_eq!(call.operation, "LookupUser");
        assert_eq!(
            call.payload,
            "<LookupUser><username>alice</username></LookupUser>"
        );
    }

    #[test]
    fn soap12_header_blocks_keep_their_names_attributes_and_bytes() {
        let role = |r: &str| format!("http://www.w3.org/2003/05/soap-envelope/role/{r}");
        let blocks = [
            (
                "<a:One xmlns:a=\"urn:a\" env:mustUnderstand=\"true\"/>".to_owned(),
                true,
                Role::UltimateReceiver,
            ),
            (
                format!(
                    "<a:Two xmlns:a=\"urn:a\" env:mustUnderstand=\" 1 \" env:role=\"{}\">2</a:Two>",
                    role("next")
                ),
                true,
                Role::Next,
            ),
            (
                format!(
                    "<a:Three xmlns:a=\"urn:a\" env:mustUnderstand=\"false\" env:role=\"{}\"></a:Three>",
                    role("ultimateReceiver")
                ),
                false,
                Role::UltimateReceiver,
            ),
            (
                format!(
                    "<a:Four xmlns:a=\"urn:a\" env:mustUnderstand=\"1\" env:role=\"{}\" env:relay=\"true\"/>",
                    role("none")
                ),
                true,
                Role::Nobody,
            ),
            (
                "<a:Five xmlns:a=\"urn:a\" env:mustUnderstand=\"0\" env:role=\"urn:gateway\"/>"
                    .into(),
                false,
                Role::Other("urn:gateway".into()),
            ),
            // SOAP 1.1's attributes mean nothing in a 1.2 envelope.
            (
                format!(
                    "<a:Six xmlns:a=\"urn:a\" xmlns:s11=\"{V11}\" s11:mustUnderstand=\"1\" s11:actor=\"urn:x\"/>"
                ),
                false,
                Role::UltimateReceiver,
            ),
        ];
        let header: String = blocks.iter().map(|(b, _, _)| b.as_str()).collect();
        let body = format!("<env:Body>{LOOKUP}</env:Body>");
        let xml = format!(
            "<env:Envelope xmlns:env=\"{V12}\"><env:Header>{header}</env:Header>{body}</env:Envelope>"
        );
        let call = read(SoapVersion::V12, &xml).unwrap();
        assert_eq!(call.headers.len(), blocks.len());
        for (block, (text, must, role)) in call.headers.iter().zip(&blocks) {
            assert_eq!(block.name().namespace(), "urn:a");
            assert_eq!(block.must_understand(), *must, "{text}");
            assert_eq!(block.role(), role, "{text}");
            assert_eq!(block.raw().as_ref(), text.as_bytes());
            assert_eq!(block.span(), span_of(&xml, text));
        }
        assert_eq!(call.body(), body.as_bytes());
        assert_eq!(call.body_span(), span_of(&xml, &body));
    }

    #[test]
    fn no_header_keeps_no_block_and_the_body_still_has_its_span() {
        let xml = format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Header/><s:Body>{LOOKUP}</s:Body></s:Envelope>"
        );
        let call = read(SoapVersion::V11, &xml).unwrap();
        assert!(call.headers.is_empty());
        assert_eq!(call.body(), format!("<s:Body>{LOOKUP}</s:Body>").as_bytes());
    }

    #[test]
    fn bad_header_blocks_are_client_faults() {
        let with = |block: &str| {
            format!(
                "<s:Envelope xmlns:s=\"{V11}\"><s:Header>{block}</s:Header><s:Body>{LOOKUP}</s:Body></s:Envelope>"
            )
        };
        for (what, block) in [
            (
                "mustUnderstand yes",
                "<a:X xmlns:a=\"urn:a\" s:mustUnderstand=\"yes\"/>",
            ),
            ("undeclared prefix", "<nope:X s:mustUnderstand=\"1\"/>"),
            (
                "an undefined entity in the role",
                "<a:X xmlns:a=\"urn:a\" s:actor=\"&x;\"/>",
            ),
        ] {
            let fault = read(SoapVersion::V11, &with(block)).unwrap_err();
            assert_eq!(fault.code(), FaultCode::Client, "{what}");
            assert_eq!(
                fault.error_code(),
                hub_core::ErrorCode::InvalidRequest,
                "{what}"
            );
        }
    }

    #[test]
    fn the_header_is_bounded_in_blocks_and_bytes() {
        let envelope = |ns: &str, prefix: &str, header: &str| {
            format!(
                "<{prefix}:Envelope xmlns:{prefix}=\"{ns}\"><{prefix}:Header>{header}</{prefix}:Header>\
                 <{prefix}:Body>{LOOKUP}</{prefix}:Body></{prefix}:Envelope>"
            )
        };
        let blocks = |n: usize| "<t:Hop xmlns:t=\"urn:t\"/>".repeat(n);
        for (version, ns, prefix, fault_code) in [
            (
                SoapVersion::V11,
                V11,
                "soap",
                "<faultcode>soap:Client</faultcode>",
            ),
            (
                SoapVersion::V12,
                V12,
                "env",
                "<env:Value>env:Sender</env:Value>",
            ),
        ] {
            let call = read(version, &envelope(ns, prefix, &blocks(MAX_HEADER_BLOCKS))).unwrap();
            assert_eq!(call.headers.len(), MAX_HEADER_BLOCKS);
            let fault = read(
                version,
                &envelope(ns, prefix, &blocks(MAX_HEADER_BLOCKS + 1)),
            )
            .unwrap_err();
            assert!(fault.reason().contains("blocks"), "{}", fault.reason());
            assert!(fault.to_xml(None).contains(fault_code));
            assert_eq!(fault.error_code(), hub_core::ErrorCode::InvalidRequest);
            assert_eq!(fault.status(), Fault::client(version, "").status());

            // One block with a long text, just within and just past the cap:
            // the Header's bytes are counted from `<Header` to `</Header>`.
            let open = format!("<{prefix}:Header>");
            let close = format!("</{prefix}:Header>");
            let block =
                |len: usize| format!("<t:Big xmlns:t=\"urn:t\">{}</t:Big>", "a".repeat(len));
            let frame = open.len() + close.len() + block(0).len();
            let fits = envelope(ns, prefix, &block(MAX_HEADER_BYTES - frame));
            assert_eq!(read(version, &fits).unwrap().headers.len(), 1);
            let over = envelope(ns, prefix, &block(MAX_HEADER_BYTES - frame + 1));
            let fault = read(version, &over).unwrap_err();
            assert!(fault.reason().contains("bytes"), "{}", fault.reason());
            assert!(fault.to_xml(None).contains(fault_code));
        }
    }

    #[test]
    fn mandatory_blocks_for_us_that_no_one_understands_are_a_must_understand_fault() {
        let wsse = QName::new("urn:wsse", "Security");
        let with = |version: SoapVersion, attributes: &str| {
            let (ns, p) = match version {
                SoapVersion::V11 => (V11, "s"),
                SoapVersion::V12 => (V12, "e"),
            };
            let attributes = attributes.replace("P:", &format!("{p}:"));
            format!(
                "<{p}:Envelope xmlns:{p}=\"{ns}\"><{p}:Header>\
                 <w:Security xmlns:w=\"urn:wsse\" {attributes}/></{p}:Header>\
                 <{p}:Body>{LOOKUP}</{p}:Body></{p}:Envelope>"
            )
        };
        let cases = [
            (SoapVersion::V11, "P:mustUnderstand=\"1\"", true),
            (SoapVersion::V11, "P:mustUnderstand=\"true\"", true),
            (
                SoapVersion::V11,
                "P:mustUnderstand=\"1\" P:actor=\"http://schemas.xmlsoap.org/soap/actor/next\"",
                true,
            ),
            (
                SoapVersion::V11,
                "P:mustUnderstand=\"1\" P:actor=\"\"",
                true,
            ),
            (SoapVersion::V11, "P:mustUnderstand=\"0\"", false),
            (SoapVersion::V11, "", false),
            (
                SoapVersion::V11,
                "P:mustUnderstand=\"1\" P:actor=\"urn:gateway\"",
                false,
            ),
            (
                SoapVersion::V11,
                "xmlns:x=\"urn:x\" x:mustUnderstand=\"1\"",
                false,
            ),
            (SoapVersion::V12, "P:mustUnderstand=\"true\"", true),
            (SoapVersion::V12, "P:mustUnderstand=\"1\"", true),
            (
                SoapVersion::V12,
                "P:mustUnderstand=\"true\" \
                 P:role=\"http://www.w3.org/2003/05/soap-envelope/role/next\"",
                true,
            ),
            (
                SoapVersion::V12,
                "P:mustUnderstand=\"true\" \
                 P:role=\"http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver\"",
                true,
            ),
            (SoapVersion::V12, "P:mustUnderstand=\"false\"", false),
            (
                SoapVersion::V12,
                "P:mustUnderstand=\"true\" \
                 P:role=\"http://www.w3.org/2003/05/soap-envelope/role/none\"",
                false,
            ),
            (
                SoapVersion::V12,
                "P:mustUnderstand=\"true\" P:role=\"urn:gateway\"",
                false,
            ),
            // 1.1's actor names no target in 1.2.
            (
                SoapVersion::V12,
                "P:mustUnderstand=\"true\" P:actor=\"urn:gateway\"",
                true,
            ),
        ];
        for (version, attributes, refused) in cases {
            let call = read(version, &with(version, attributes)).unwrap();
            let outcome = call.ensure_understood(&[]);
            assert_eq!(outcome.is_err(), refused, "{version:?} {attributes}");
            if let Err(fault) = outcome {
                assert_eq!(fault.code(), FaultCode::MustUnderstand);
                assert_eq!(fault.not_understood(), std::slice::from_ref(&wsse));
                assert_eq!(fault.error_code(), hub_core::ErrorCode::InvalidRequest);
            }
            // Declared understood, the same block is no fault.
            assert!(call.ensure_understood(std::slice::from_ref(&wsse)).is_ok());
        }
    }

    #[test]
    fn a_must_understand_fault_names_every_block_not_understood() {
        let blocks = "<a:One xmlns:a=\"urn:a\" P:mustUnderstand=\"1\"/>\
             <a:Two xmlns:a=\"urn:a\" P:mustUnderstand=\"1\"/>\
             <Bare xmlns=\"\" P:mustUnderstand=\"1\"/>\
             <b:Three xmlns:b=\"urn:b&amp;c\" P:mustUnderstand=\"1\"/>";
        let v12 = format!(
            "<P:Envelope xmlns:P=\"{V12}\"><P:Header>{blocks}</P:Header><P:Body>{LOOKUP}</P:Body></P:Envelope>"
        );
        let call = read(SoapVersion::V12, &v12).unwrap();
        let fault = call
            .ensure_understood(&[QName::new("urn:a", "Two")])
            .unwrap_err();
        assert_eq!(fault.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let xml = fault.to_xml(Some("req-1"));
        assert!(
            xml.contains(
                "<env:Header><env:NotUnderstood qname=\"ns1:One\" xmlns:ns1=\"urn:a\"/>\
                 <env:NotUnderstood qname=\"Bare\"/>\
                 <env:NotUnderstood qname=\"ns3:Three\" xmlns:ns3=\"urn:b&amp;c\"/></env:Header>"
            ),
            "{xml}"
        );
        assert!(
            xml.contains("<env:Value>env:MustUnderstand</env:Value>"),
            "{xml}"
        );
        assert!(
            xml.contains("{urn:a}One, Bare, {urn:b&amp;c}Three"),
            "{xml}"
        );
        assert!(
            xml.contains("<tns:ErrorCode>INVALID_REQUEST</tns:ErrorCode>"),
            "{xml}"
        );
        // The fault is itself a SOAP 1.2 message our reader can read.
        assert!(xml.starts_with("<?xml"));

        let v11 = v12.replace(V12, V11);
        let fault = read(SoapVersion::V11, &v11)
            .unwrap()
            .ensure_understood(&[])
            .unwrap_err();
        assert_eq!(fault.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let xml = fault.to_xml(None);
        assert!(
            xml.contains("<faultcode>soap:MustUnderstand</faultcode>"),
            "{xml}"
        );
        assert!(
            !xml.contains("Header"),
            "SOAP 1.1 has no NotUnderstood: {xml}"
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
            let fault = read_call(SoapVersion::V11, Bytes::from(xml), &limits).unwrap_err();
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
            read_call(SoapVersion::V11, Bytes::from(bad_utf8), &Limits::default())
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
