//! Outbound HTTP for plugins (`wasi:http/outgoing-handler`), deny by
//! default.
//!
//! Every request passes [`HttpPolicy`] before anything touches the network:
//! its scheme, host, port and method must match one of the plugin's
//! `http_allow` rules, and the destination address must not be link-local,
//! unspecified, multicast or a cloud metadata address, whatever the name
//! resolves to. A plain-HTTP request is then sent to the very address that
//! was checked (no second lookup). Each request carries an `Idempotency-Key`:
//! the job's key and the request's sequence number within the attempt, so a
//! retry of the job repeats the same keys in the same order. The response
//! body is capped, and when the attempt ends (deadline included) its store
//! is dropped, which aborts every request still in flight.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::grants::Grants;
use super::inputs::{Blob, CannedResponse, Capture, DENIED, HttpExchange, HttpResponder};

/// The header carrying the per-request idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The per-attempt HTTP policy, as wasmtime-wasi-http hooks.
pub(crate) struct HttpPolicy {
    plugin: Arc<str>,
    grants: Arc<Grants>,
    job_key: String,
    /// Requests made so far in this attempt.
    seq: u32,
    /// Where requests and responses are recorded.
    capture: Arc<Capture>,
    /// Scripted: answers requests instead of the network (`None` inside
    /// `Some`: deny them all).
    scripted: Option<Option<Arc<dyn HttpResponder>>>,
}

impl HttpPolicy {
    pub(crate) fn new(
        plugin: Arc<str>,
        grants: Arc<Grants>,
        job_key: String,
        capture: Arc<Capture>,
        scripted: Option<Option<Arc<dyn HttpResponder>>>,
    ) -> HttpPolicy {
        HttpPolicy {
            plugin,
            grants,
            job_key,
            seq: 0,
            capture,
            scripted,
        }
    }

    /// Why `req` is refused, if it is.
    fn refusal(&self, req: &http::Request<WasiBody>) -> Option<String> {
        let uri = req.uri();
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let method = req.method().as_str();
        let allowed = self
            .grants
            .http
            .iter()
            .any(|rule| rule.allows(&scheme, &host, port, method));
        (!allowed).then(|| format!("{method} {scheme}://{host}:{port} is not in http_allow"))
    }
}

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        let exchange = HttpExchange {
            method: request.method().to_string(),
            url: request.uri().to_string(),
            ..HttpExchange::default()
        };
        if let Some(why) = self.refusal(&request) {
            tracing::warn!(plugin = %self.plugin, "HTTP request denied: {why}");
            if let Some(i) = self.capture.http_request(exchange) {
                self.capture.http_error(i, format!("{DENIED}{why}"));
            }
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        self.seq += 1;
        let key = format!("{}:http:{}", self.job_key, self.seq);
        let value = http::HeaderValue::from_str(&key)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        request.headers_mut().insert(IDEMPOTENCY_KEY, value);
        let exchange = HttpExchange {
            idempotency_key: key,
            ..exchange
        };
        let capture = Arc::clone(&self.capture);
        let max_response = self.grants.http_max_response;
        if let Some(responder) = &self.scripted {
            let responder = responder.clone();
            let seq = self.seq;
            return Box::new(async move {
                respond_scripted(request, exchange, responder, seq, capture, max_response).await
            });
        }
        let index = capture.http_request(exchange);
        let plugin = Arc::clone(&self.plugin);
        Box::new(async move {
            // A plugin's rules name its destinations: internal ones too.
            let request = pin_to_vetted_address(request, &plugin, true).await?;
            let mut options = options.unwrap_or_default();
            options.connect_timeout.get_or_insert(CONNECT_TIMEOUT);
            let sent = wasmtime_wasi_http::default_send_request(request, Some(options)).await;
            let (response, io) = match sent {
                Ok(r) => r,
                Err(e) => {
                    if let Some(i) = index {
                        capture.http_error(i, guest_error_name(&e));
                    }
                    return Err(e);
                }
            };
            if let Some(i) = index {
                capture.http_response(
                    i,
                    response.status().as_u16(),
                    header_pairs(response.headers()),
                );
            }
            if let Some(len) = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                && len > max_response as u64
            {
                return Err(Error::HttpResponseBodySize(Some(len)));
            }
            let response = response.map(|body| {
                Capped {
                    inner: body.boxed_unsync(),
                    left: max_response,
                    tee: index.map(|i| (capture, i)),
                }
                .boxed_unsync()
            });
            Ok((
                response,
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

/// Resolves the request's host, refuses forbidden addresses, and for plain
/// HTTP rewrites the request to the checked address (the `Host` header
/// keeps the name). HTTPS keeps the name for certificate checks; its
/// connection resolves again.
pub(crate) async fn pin_to_vetted_address(
    mut request: http::Request<WasiBody>,
    plugin: &str,
    allow_internal: bool,
) -> Result<http::Request<WasiBody>, Error> {
    let uri = request.uri().clone();
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|_| Error::DnsError {
            rcode: None,
            info_code: None,
        })?
        .collect();
    let Some(addr) = addrs.first().copied() else {
        return Err(Error::DestinationNotFound);
    };
    if let Some(bad) = addrs.iter().find(|a| forbidden(a.ip())) {
        tracing::warn!(plugin, host, address = %bad.ip(), "HTTP request denied: forbidden destination address");
        return Err(Error::DestinationIpProhibited);
    }
    if !allow_internal && let Some(bad) = addrs.iter().find(|a| internal_address(a.ip())) {
        tracing::warn!(plugin, host, address = %bad.ip(), "HTTP request denied: internal destination address");
        return Err(Error::DestinationIpProhibited);
    }
    if !https {
        let authority = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let mut parts = uri.into_parts();
        parts.authority = Some(
            authority
                .parse()
                .map_err(|_| Error::HttpRequestUriInvalid)?,
        );
        *request.uri_mut() =
            http::Uri::from_parts(parts).map_err(|_| Error::HttpRequestUriInvalid)?;
    }
    Ok(request)
}

/// Addresses inside the host's own network: loopback, private (RFC 1918,
/// unique local), link-local, shared (100.64/10) and unspecified. A
/// completion callback goes there only where `outbox.callback_allow` says.
pub fn internal_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_address(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Addresses a plugin may never reach: link-local (which includes the
/// 169.254.169.254 metadata service), unspecified, broadcast, multicast,
/// and the IPv6 metadata address some clouds use.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xffc0) == 0xfe80
                || seg == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
        }
    }
}

/// Answers a scripted request from `responder`, never the network,
/// recording the request in full (headers and body) and the answer.
async fn respond_scripted(
    request: http::Request<WasiBody>,
    mut exchange: HttpExchange,
    responder: Option<Arc<dyn HttpResponder>>,
    seq: u32,
    capture: Arc<Capture>,
    max_response: usize,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
> {
    let (parts, body) = request.into_parts();
    exchange.request_headers = header_pairs(&parts.headers);
    let body = body.collect().await?.to_bytes();
    exchange.request_body = (!body.is_empty()).then(|| Blob(body.to_vec()));
    let answer = match responder {
        Some(r) => r.respond(seq, &exchange),
        None => Err("no HTTP responses in this run".to_owned()),
    };
    let index = capture.http_request(exchange);
    let canned: CannedResponse = match answer {
        Ok(c) => c,
        Err(why) => {
            if let Some(i) = index {
                capture.http_error(i, why);
            }
            return Err(Error::HttpRequestDenied);
        }
    };
    if let Some(name) = canned.fail {
        if let Some(i) = index {
            capture.http_error(i, name.clone());
        }
        return Err(error_named(&name));
    }
    if canned.body.len() > max_response {
        if let Some(i) = index {
            capture.http_error(i, "response body over http_max_response".into());
        }
        return Err(Error::HttpResponseBodySize(Some(canned.body.len() as u64)));
    }
    let mut response = http::Response::builder().status(canned.status);
    for (name, value) in &canned.headers {
        response = response.header(name, value);
    }
    let response = response
        .body(
            http_body_util::Full::new(Bytes::from(canned.body.clone()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|e| Error::InternalError(Some(format!("canned response: {e}"))))?;
    if let Some(i) = index {
        capture.http_response(i, canned.status, canned.headers);
        capture.http_body(i, &canned.body);
    }
    Ok((
        response,
        Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), Error>> + Send>,
    ))
}

/// The `wasi:http` error code the guest sees for `e`, by name (as
/// wasmtime-wasi-http's default hooks map the errors that carry I/O
/// detail).
fn guest_error_name(e: &Error) -> String {
    match e {
        Error::Connect(io) if io.kind() == std::io::ErrorKind::AddrNotAvailable => {
            "DnsError".to_owned()
        }
        Error::Connect(_) => "ConnectionRefused".to_owned(),
        Error::Tls(_) => "TlsProtocolError".to_owned(),
        Error::Hyper(_) => "HttpProtocolError".to_owned(),
        other => format!("{other:?}"),
    }
}

/// The error a failed request was recorded with (its `Debug` text, e.g.
/// `ConnectionRefused`), for a replay to fail the same way.
fn error_named(recorded: &str) -> Error {
    let name = recorded
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("");
    match name {
        "DnsTimeout" => Error::DnsTimeout,
        "DnsError" => Error::DnsError {
            rcode: None,
            info_code: None,
        },
        "DestinationNotFound" => Error::DestinationNotFound,
        "DestinationUnavailable" => Error::DestinationUnavailable,
        "DestinationIpProhibited" => Error::DestinationIpProhibited,
        "DestinationIpUnroutable" => Error::DestinationIpUnroutable,
        "ConnectionRefused" => Error::ConnectionRefused,
        "ConnectionTerminated" => Error::ConnectionTerminated,
        "ConnectionTimeout" => Error::ConnectionTimeout,
        "ConnectionReadTimeout" => Error::ConnectionReadTimeout,
        "ConnectionWriteTimeout" => Error::ConnectionWriteTimeout,
        "ConnectionLimitReached" => Error::ConnectionLimitReached,
        "TlsProtocolError" => Error::TlsProtocolError,
        "TlsCertificateError" => Error::TlsCertificateError,
        "HttpRequestDenied" => Error::HttpRequestDenied,
        "HttpResponseIncomplete" => Error::HttpResponseIncomplete,
        "HttpResponseTimeout" => Error::HttpResponseTimeout,
        "HttpProtocolError" => Error::HttpProtocolError,
        "HttpResponseBodySize" => Error::HttpResponseBodySize(None),
        _ => Error::InternalError(Some(recorded.to_owned())),
    }
}

/// Headers as (name, value) pairs; values that are not text are lossy.
fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A response body that fails once more than `left` bytes arrive, and
/// copies what passes into the attempt's capture.
struct Capped {
    inner: WasiBody,
    left: usize,
    tee: Option<(Arc<Capture>, usize)>,
}

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > self.left {
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(None))));
                    }
                    self.left -= data.len();
                    if let Some((capture, i)) = &self.tee {
                        capture.http_body(*i, data);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::forbidden;

    #[test]
    fn metadata_and_link_local_addresses_are_forbidden() {
        for bad in [
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "::",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(forbidden(bad.parse().unwrap()), "{bad}");
        }
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "93.184.216.34",
            "::1",
            "2001:db8::1",
        ] {
            assert!(!forbidden(ok.parse().unwrap()), "{ok}");
        }
    }
}
