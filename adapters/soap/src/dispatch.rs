//! One dispatcher for every SOAP endpoint: the HTTP method, the WSDL, the
//! envelope, `mustUnderstand`, the operation's name and payload, and every
//! failure as a fault in the request's version. A service gives it its
//! operations, each a function from a typed request to a response body.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{Method, Uri};
use axum::response::Response;
use axum::routing::any;
use yaserde::YaDeserialize;

use hub_runtime::config::SecurityPolicy;

use crate::SoapVersion;
use crate::envelope::{Limits, OperationCall};
use crate::fault::Fault;
use crate::header::QName;
use crate::http::{method_not_allowed, read_request, request_id, wants_wsdl};
use crate::security::{Caller, WsSecurity};
use crate::write::{envelope_response, wsdl_response};
use crate::wsse::SECURITY;

/// What an operation answers: the content of the response's Body (XML), or
/// a fault.
pub type Answer = Result<String, Fault>;

type BoxedAnswer = Pin<Box<dyn Future<Output = Answer> + Send>>;
type OperationFn<S> = Box<
    dyn Fn(Arc<S>, OperationCall, Option<SocketAddr>, Option<Caller>) -> BoxedAnswer + Send + Sync,
>;
type GetFn<S> = Box<dyn Fn(Arc<S>, Uri, Option<SocketAddr>) -> BoxedAnswer + Send + Sync>;

/// One call of an operation, as its function receives it.
#[derive(Debug)]
pub struct Call<R> {
    /// The operation's payload, deserialized.
    pub request: R,
    /// The client's address, when the server was started with it.
    pub client: Option<SocketAddr>,
    /// The envelope as read: version, header blocks, the Body's bytes.
    pub envelope: OperationCall,
    /// Who called, when the operation takes WS-Security and the message
    /// carried a valid header; `None` for an anonymous call.
    pub caller: Option<Caller>,
}

impl<R> Call<R> {
    /// The request's SOAP version, the one its faults are written in.
    pub fn version(&self) -> SoapVersion {
        self.envelope.version
    }
}

struct Operation<S> {
    name: &'static str,
    policy: SecurityPolicy,
    run: OperationFn<S>,
}

/// A SOAP endpoint: `POST` runs one of its operations, `GET ?wsdl` serves
/// the WSDL, another `GET` is the service's own (soap-lookup's legacy
/// lookup) or refused, as is any other method.
pub struct Dispatcher<S> {
    state: Arc<S>,
    wsdl: Arc<str>,
    limits: Limits,
    understood: Vec<QName>,
    operations: Vec<Operation<S>>,
    get: Option<GetFn<S>>,
    security: Option<Arc<WsSecurity>>,
}

impl<S> fmt::Debug for Dispatcher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("limits", &self.limits)
            .field("understood", &self.understood)
            .field(
                "operations",
                &self.operations.iter().map(|o| o.name).collect::<Vec<_>>(),
            )
            .field("get", &self.get.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static> Dispatcher<S> {
    /// An endpoint with no operation yet, that understands no header block.
    pub fn new(state: S, wsdl: Arc<str>, limits: Limits) -> Self {
        Self {
            state: Arc::new(state),
            wsdl,
            limits,
            understood: Vec::new(),
            operations: Vec::new(),
            get: None,
            security: None,
        }
    }

    /// Checks `wsse:Security` headers with `security`, for the operations
    /// whose policy is not `none`. Without it an operation whose policy is
    /// `optional` serves everyone anonymously, and one whose policy is
    /// `required` no one (a Server fault: it fails closed).
    pub fn with_security(mut self, security: Option<Arc<WsSecurity>>) -> Self {
        self.security = security;
        self
    }

    /// Adds the operation whose Body element is `name` (in
    /// [`crate::USERS_NS`]), with its WS-Security `policy`: its header is
    /// checked before the payload is read, its payload is deserialized into
    /// `R`, a payload that does not fit is a Client/Sender fault, and what
    /// `run` answers is put in an envelope of the request's version.
    pub fn operation<R, F, Fut>(
        mut self,
        name: &'static str,
        policy: SecurityPolicy,
        run: F,
    ) -> Self
    where
        R: YaDeserialize + Send + 'static,
        F: Fn(Arc<S>, Call<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let run: OperationFn<S> = Box::new(move |state, envelope, client, caller| {
            match yaserde::de::from_str::<R>(&envelope.payload) {
                Ok(request) => Box::pin(run(
                    state,
                    Call {
                        request,
                        client,
                        envelope,
                        caller,
                    },
                )),
                Err(e) => {
                    let fault =
                        Fault::client(envelope.version, format!("{name} is malformed: {e}"));
                    Box::pin(std::future::ready(Err(fault)))
                }
            }
        });
        self.operations.push(Operation { name, policy, run });
        self
    }

    /// Declares the header blocks named `name` understood: one marked
    /// `mustUnderstand` is then no fault, and the operation finds it in
    /// [`Call::envelope`] to process.
    pub fn understands(mut self, name: QName) -> Self {
        self.understood.push(name);
        self
    }

    /// Answers a `GET` that does not ask for the WSDL, in SOAP 1.1 (without
    /// one, such a `GET` is refused with 405), given the client's address.
    pub fn get<F, Fut>(mut self, run: F) -> Self
    where
        F: Fn(Arc<S>, Uri, Option<SocketAddr>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        self.get = Some(Box::new(move |state, uri, client| {
            Box::pin(run(state, uri, client))
        }));
        self
    }

    /// The endpoint at `path`, every method routed to the dispatcher, which
    /// owns the answer to each (a fault, never a framework default).
    pub fn into_router(self, path: &str) -> Router {
        let dispatcher = Arc::new(self);
        Router::new().route(
            path,
            any(move |request: Request| {
                let dispatcher = Arc::clone(&dispatcher);
                async move { dispatcher.dispatch(request).await }
            }),
        )
    }

    async fn dispatch(&self, request: Request) -> Response {
        let request_id = request_id(request.headers());
        let outcome = match *request.method() {
            Method::GET if wants_wsdl(request.uri()) => Ok(wsdl_response(&self.wsdl)),
            Method::GET => match &self.get {
                Some(get) => get(
                    Arc::clone(&self.state),
                    request.uri().clone(),
                    client_of(&request),
                )
                .await
                .map(|body| envelope_response(SoapVersion::V11, &body)),
                None => Err(method_not_allowed()),
            },
            Method::POST => self.post(request).await,
            _ => Err(method_not_allowed()),
        };
        outcome.unwrap_or_else(|fault| fault.into_response_for(request_id.as_deref()))
    }

    async fn post(&self, request: Request) -> Result<Response, Fault> {
        let client = client_of(&request);
        let (parts, body) = request.into_parts();
        let envelope = read_request(&parts.headers, body, &self.limits).await?;
        let version = envelope.version;
        let operation = self
            .operations
            .iter()
            .find(|o| o.name == envelope.operation);
        // The operation's policy decides whether wsse:Security is understood.
        let security = match (&self.security, operation) {
            (Some(security), Some(operation)) if operation.policy != SecurityPolicy::None => {
                Some((security, operation.policy))
            }
            _ => None,
        };
        // Before anything of the Body runs: SOAP processes no part of a
        // message whose mandatory headers it cannot honour.
        if security.is_some() {
            let mut understood = self.understood.clone();
            understood.push(SECURITY);
            envelope.ensure_understood(&understood)?;
        } else {
            envelope.ensure_understood(&self.understood)?;
        }
        let Some(operation) = operation else {
            let offered = self
                .operations
                .iter()
                .map(|o| o.name)
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(Fault::client(
                version,
                format!("this endpoint offers {offered}, not {}", envelope.operation),
            ));
        };
        let caller = match security {
            Some((security, policy)) => {
                security
                    .check(&envelope, policy, client.map(|c| c.ip()))
                    .await?
            }
            // Fail closed: an operation that requires a header is never
            // served anonymously for want of a processor.
            None if operation.policy == SecurityPolicy::Required => {
                return Err(Fault::from_error(
                    version,
                    &hub_core::Error::internal(format!(
                        "{} requires WS-Security and the endpoint has no processor",
                        operation.name
                    )),
                ));
            }
            None => None,
        };
        let body = (operation.run)(Arc::clone(&self.state), envelope, client, caller).await?;
        Ok(envelope_response(version, &body))
    }
}

/// The client's address (the forwarded client behind a trusted gateway),
/// when the server was started with it.
fn client_of(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::http::{StatusCode, header};
    use tower::ServiceExt;

    use super::*;

    const V11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
    const V12: &str = "http://www.w3.org/2003/05/soap-envelope";
    const WSSE: &str =
        "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";

    #[derive(Debug, Default, YaDeserialize)]
    #[yaserde(rename = "LookupUser")]
    struct Lookup {
        username: String,
    }

    /// How many times the operation ran.
    #[derive(Debug, Default)]
    struct Runs(AtomicUsize);

    fn endpoint() -> Router {
        Dispatcher::new(Runs::default(), "<wsdl/>".into(), Limits::default())
            .understands(QName::new(WSSE, "Security"))
            .operation(
                "LookupUser",
                SecurityPolicy::None,
                |runs: Arc<Runs>, call: Call<Lookup>| async move {
                    runs.0.fetch_add(1, Ordering::SeqCst);
                    let blocks: Vec<String> = call
                        .envelope
                        .headers
                        .iter()
                        .map(|b| format!("{}={}", b.name().local(), b.raw().len()))
                        .collect();
                    Ok(format!(
                        "<r>{} {} {}</r>",
                        call.request.username,
                        blocks.join(","),
                        call.envelope.body().len(),
                    ))
                },
            )
            .into_router("/soap")
    }

    async fn send(router: &Router, request: axum::http::Request<Body>) -> (StatusCode, String) {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn post(content_type: &str, xml: &str) -> axum::http::Request<Body> {
        axum::http::Request::post("/soap")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(xml.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn a_declared_header_reaches_the_operation_and_an_unknown_one_stops_it() {
        let router = endpoint();
        let security = format!(
            "<wsse:Security xmlns:wsse=\"{WSSE}\" s:mustUnderstand=\"1\">tok</wsse:Security>"
        );
        let body = "<s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>alice</u:username></u:LookupUser></s:Body>";
        let xml = format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Header>{security}</s:Header>{body}</s:Envelope>"
        );
        let (status, answer) = send(&router, post("text/xml", &xml)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(
            answer.contains(&format!(
                "<r>alice Security={} {}</r>",
                security.len(),
                body.len()
            )),
            "{answer}"
        );

        let unknown = xml.replace(V11, V12).replace(
            "</s:Header>",
            "<x:Audit xmlns:x=\"urn:audit\" s:mustUnderstand=\"true\"/></s:Header>",
        );
        let (status, answer) = send(&router, post("application/soap+xml", &unknown)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
        assert!(
            answer.contains("<env:Value>env:MustUnderstand</env:Value>"),
            "{answer}"
        );
        assert!(
            answer.contains("<env:NotUnderstood qname=\"ns1:Audit\" xmlns:ns1=\"urn:audit\"/>"),
            "{answer}"
        );
        assert!(
            !answer.contains("ns2:"),
            "Security was understood: {answer}"
        );
    }

    #[tokio::test]
    async fn the_operation_never_runs_for_a_message_it_cannot_honour() {
        let runs = Arc::new(Runs::default());
        let counted = Arc::clone(&runs);
        let router = Dispatcher::new((), "<wsdl/>".into(), Limits::default())
            .operation(
                "LookupUser",
                SecurityPolicy::None,
                move |_: Arc<()>, _: Call<Lookup>| {
                    counted.0.fetch_add(1, Ordering::SeqCst);
                    async { Ok(String::new()) }
                },
            )
            .into_router("/soap");
        let xml = format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Header><x:A xmlns:x=\"urn:x\" s:mustUnderstand=\"1\"/></s:Header>\
             <s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>a</u:username>\
             </u:LookupUser></s:Body></s:Envelope>"
        );
        let (status, answer) = send(&router, post("text/xml", &xml)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            answer.contains("<faultcode>soap:MustUnderstand</faultcode>"),
            "{answer}"
        );
        assert_eq!(runs.0.load(Ordering::SeqCst), 0);
        let served = xml.replace("s:mustUnderstand=\"1\"", "s:mustUnderstand=\"0\"");
        let (status, answer) = send(&router, post("text/xml", &served)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(runs.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_required_policy_without_a_processor_fails_closed() {
        let runs = Arc::new(Runs::default());
        let counted = Arc::clone(&runs);
        let router = Dispatcher::new((), "<wsdl/>".into(), Limits::default())
            .with_security(None)
            .operation(
                "LookupUser",
                SecurityPolicy::Required,
                move |_: Arc<()>, _: Call<Lookup>| {
                    counted.0.fetch_add(1, Ordering::SeqCst);
                    async { Ok(String::new()) }
                },
            )
            .into_router("/soap");
        let xml = format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Body><u:LookupUser xmlns:u=\"urn:polyhub:users:v1\">\
             <u:username>a</u:username></u:LookupUser></s:Body></s:Envelope>"
        );
        let (status, answer) = send(&router, post("text/xml", &xml)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
        assert!(
            answer.contains("<faultcode>soap:Server</faultcode>"),
            "{answer}"
        );
        assert_eq!(runs.0.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn every_other_request_gets_a_soap_answer() {
        let router = endpoint();
        let get = |uri: &str| axum::http::Request::get(uri).body(Body::empty()).unwrap();
        let (status, wsdl) = send(&router, get("/soap?WSDL")).await;
        assert_eq!((status, wsdl.as_str()), (StatusCode::OK, "<wsdl/>"));
        let (status, answer) = send(&router, get("/soap?username=alice")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "no GET given");
        assert!(answer.contains("soap:Fault"), "{answer}");
        let (status, answer) = send(
            &router,
            post(
                "text/xml",
                &format!(
                    "<s:Envelope xmlns:s=\"{V11}\"><s:Body><u:DeleteUser xmlns:u=\"urn:polyhub:users:v1\"/></s:Body></s:Envelope>"
                ),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            answer.contains("this endpoint offers LookupUser, not DeleteUser"),
            "{answer}"
        );

        let with_get = Dispatcher::new((), "<wsdl/>".into(), Limits::default())
            .get(|_: Arc<()>, uri: Uri, _: Option<SocketAddr>| async move {
                Ok(format!("<r>{}</r>", uri.query().unwrap_or("")))
            })
            .into_router("/soap");
        let (status, answer) = send(&with_get, get("/soap?username=alice")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            answer.contains(&format!(
                "<soap:Envelope xmlns:soap=\"{V11}\"><soap:Body><r>username=alice</r>"
            )),
            "{answer}"
        );
    }
}
