//! A small blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! Available with the SDK's `http` feature. A plugin built with it imports
//! `wasi:http/outgoing-handler@0.2.4` and `wasi:http/types@0.2.4` (and the
//! `wasi:io` interfaces they use); the host denies every request that the
//! plugin's `http_allow` config does not allow, which shows here as an
//! [`HttpError`] whose [`code`](HttpError::code) is `HttpRequestDenied`.
//!
//! Each call sends one request and waits for the whole response, body
//! included, in memory. Redirects are not followed. Timeouts are the host's.
//!
//! ```no_run
//! use jobbox_sdk::{JobError, http};
//!
//! fn notify(url: &str, json: &str) -> Result<u16, JobError> {
//!     let response = http::request(
//!         "POST",
//!         url,
//!         &[("content-type", "application/json")],
//!         json.as_bytes(),
//!     )
//!     .map_err(|e| JobError::retryable(format!("POST {url}: {e}")))?;
//!     Ok(response.status)
//! }
//! ```

use std::fmt;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, IoError, Method,
    OutgoingBody, OutgoingRequest, Scheme, http_error_code,
};
use wasip2::io::streams::StreamError;

/// The most bytes handed to one blocking write: the limit that
/// `blocking-write-and-flush` puts on its argument.
const WRITE_CHUNK: usize = 4096;

/// The most bytes asked for in one blocking read.
const READ_CHUNK: u64 = 64 * 1024;

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, such as 200.
    pub status: u16,
    /// The header fields in the order received; names are lowercase as the
    /// host reports them, values are raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the first header field called `name` (compared
    /// ignoring ASCII case), if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request produced no response.
///
/// Its [`code`](Self::code) is the name of the `wasi:http` `error-code`
/// case the host reported, such as `HttpRequestDenied` (the plugin's
/// `http_allow` config does not allow the request), `ConnectionRefused`,
/// `ConnectionTimeout`, `DnsError` or `HttpRequestUriInvalid`; a header the
/// host refuses (syntax, or a forbidden name such as `host`) is
/// `HttpRequestHeaderInvalid`, which is not an `error-code` case. The
/// [`detail`](Self::detail) holds the case's payload, if any, and `Display`
/// shows both: `DnsError: DnsErrorPayload { rcode: ..., info_code: ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    code: String,
    detail: Option<String>,
}

impl HttpError {
    fn new(code: &str, detail: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            detail: Some(detail.into()),
        }
    }

    /// The name of the error, such as `HttpRequestDenied`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// More about the error, if the host or the SDK said more.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

impl From<ErrorCode> for HttpError {
    fn from(error: ErrorCode) -> Self {
        if let ErrorCode::InternalError(message) = &error {
            return Self {
                code: "InternalError".to_owned(),
                detail: message.clone(),
            };
        }
        // The generated `Debug` is `ErrorCode::Case` or
        // `ErrorCode::Case(payload)`.
        let debug = format!("{error:?}");
        let debug = debug.strip_prefix("ErrorCode::").unwrap_or(&debug);
        match debug.split_once('(') {
            Some((code, payload)) => Self {
                code: code.to_owned(),
                detail: Some(payload.strip_suffix(')').unwrap_or(payload).to_owned()),
            },
            None => Self {
                code: debug.to_owned(),
                detail: None,
            },
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.code),
            None => f.write_str(&self.code),
        }
    }
}

impl std::error::Error for HttpError {}

/// Sends a `GET` request for `url` with no extra headers.
pub fn get(url: &str) -> Result<Response, HttpError> {
    request("GET", url, &[], &[])
}

/// Sends one request and waits for the complete response.
///
/// `method` is case-sensitive, as in HTTP (`"GET"`, `"POST"`, ...). `url`
/// must be absolute, `http://` or `https://`, without user information; its
/// fragment is ignored. Each of `headers` is sent as given. A non-empty
/// `body` gets a `content-length` header unless `headers` has one.
///
/// Any status, 4xx and 5xx included, is a [`Response`]; an error means that
/// no response arrived.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let target = Target::parse(url)?;

    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| HttpError::new("HttpRequestHeaderInvalid", format!("`{name}`: {e:?}")))?;
    }
    let has_length = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
    if !body.is_empty() && !has_length {
        fields
            .append("content-length", body.len().to_string().as_bytes())
            .map_err(|e| HttpError::new("HttpRequestHeaderInvalid", format!("{e:?}")))?;
    }

    let request = OutgoingRequest::new(fields);
    request
        .set_method(&parse_method(method))
        .map_err(|()| HttpError::new("HttpRequestMethodInvalid", format!("{method:?}")))?;
    request
        .set_scheme(Some(&target.scheme))
        .map_err(|()| HttpError::new("HttpRequestUriInvalid", format!("scheme of {url:?}")))?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|()| HttpError::new("HttpRequestUriInvalid", format!("authority of {url:?}")))?;
    request
        .set_path_with_query(Some(&target.path_with_query))
        .map_err(|()| HttpError::new("HttpRequestUriInvalid", format!("path of {url:?}")))?;

    let outgoing_body = request
        .body()
        .map_err(|()| HttpError::new("InternalError", "the request body was already taken"))?;
    // Send first, then write the body: the host only drains the body stream
    // once the request is under way.
    let future = outgoing_handler::handle(request, None)?;
    let sent = write_body(outgoing_body, body);

    // A failed write usually means that the request failed; the response
    // says why better than the stream does.
    let result = match (wait_for(&future), sent) {
        (Err(error), _) | (Ok(_), Err(error)) => Err(error),
        (Ok(response), Ok(())) => read_response(response),
    };
    // Dropped only now, in case the host made the response its child.
    drop(future);
    result
}

/// The parts of an absolute `http(s)` URL that a request is made of.
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    authority: String,
    path_with_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let invalid =
            |why: &str| HttpError::new("HttpRequestUriInvalid", format!("{url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected an absolute URL such as http://host/path"))?;
        let scheme = if scheme.eq_ignore_ascii_case("http") {
            Scheme::Http
        } else if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            return Err(invalid("the scheme must be http or https"));
        };
        // The fragment is never sent.
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        if authority.contains('@') {
            return Err(invalid("user information is not supported"));
        }
        let path_with_query = if path.is_empty() {
            "/".to_owned()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Self {
            scheme,
            authority: authority.to_owned(),
            path_with_query,
        })
    }
}

/// The `wasi:http` method for `method`.
fn parse_method(method: &str) -> Method {
    match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    }
}

/// The error that an I/O error on a body stream stands for.
fn stream_error(error: &IoError) -> HttpError {
    match http_error_code(error) {
        Some(code) => code.into(),
        None => HttpError::new("InternalError", error.to_debug_string()),
    }
}

/// Writes all of `bytes` into the request body and finishes it.
fn write_body(outgoing: OutgoingBody, bytes: &[u8]) -> Result<(), HttpError> {
    {
        let stream = outgoing
            .write()
            .map_err(|()| HttpError::new("InternalError", "the request body stream was taken"))?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| match e {
                    StreamError::LastOperationFailed(error) => stream_error(&error),
                    StreamError::Closed => {
                        HttpError::new("HttpProtocolError", "the request body stream closed")
                    }
                })?;
        }
        // The stream is a child of the body: it must go first.
    }
    OutgoingBody::finish(outgoing, None)?;
    Ok(())
}

/// Blocks until the response head arrives, or the request fails.
fn wait_for(future: &FutureIncomingResponse) -> Result<IncomingResponse, HttpError> {
    loop {
        match future.get() {
            Some(Ok(result)) => return result.map_err(HttpError::from),
            Some(Err(())) => {
                return Err(HttpError::new(
                    "InternalError",
                    "the response was already taken",
                ));
            }
            None => future.subscribe().block(),
        }
    }
}

/// Reads the status, headers and whole body of `response`.
fn read_response(response: IncomingResponse) -> Result<Response, HttpError> {
    let status = response.status();
    let headers = {
        // A child of the response, which must be dropped before it.
        let fields = response.headers();
        fields.entries()
    };
    let incoming = response
        .consume()
        .map_err(|()| HttpError::new("InternalError", "the response body was already taken"))?;
    let body = read_body(&incoming)?;
    // The trailers, if any, are of no interest; the future is dropped unread.
    drop(IncomingBody::finish(incoming));
    drop(response);
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Reads `incoming` to its end.
fn read_body(incoming: &IncomingBody) -> Result<Vec<u8>, HttpError> {
    let stream = incoming
        .stream()
        .map_err(|()| HttpError::new("InternalError", "the response body stream was taken"))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(StreamError::Closed) => return Ok(body),
            Err(StreamError::LastOperationFailed(error)) => return Err(stream_error(&error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, String, String) {
        let target = Target::parse(url).unwrap();
        let scheme = match target.scheme {
            Scheme::Http => "http".to_owned(),
            Scheme::Https => "https".to_owned(),
            Scheme::Other(other) => other,
        };
        (scheme, target.authority, target.path_with_query)
    }

    #[test]
    fn parses_urls_into_request_parts() {
        let own = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            parts("http://127.0.0.1:8080/hook?a=1#frag"),
            own("http", "127.0.0.1:8080", "/hook?a=1")
        );
        assert_eq!(
            parts("HTTPS://example.test"),
            own("https", "example.test", "/")
        );
        assert_eq!(
            parts("http://example.test?q"),
            own("http", "example.test", "/?q")
        );
    }

    #[test]
    fn rejects_urls_it_cannot_send() {
        for url in [
            "example.test/x",
            "ftp://x/",
            "http:///path",
            "http://u:p@host/",
        ] {
            let error = Target::parse(url).unwrap_err();
            assert_eq!(error.code(), "HttpRequestUriInvalid", "{url}");
        }
    }

    #[test]
    fn renders_error_codes_by_name() {
        let denied = HttpError::from(ErrorCode::HttpRequestDenied);
        assert_eq!(denied.code(), "HttpRequestDenied");
        assert_eq!(denied.to_string(), "HttpRequestDenied");
        let internal = HttpError::from(ErrorCode::InternalError(Some("boom".to_owned())));
        assert_eq!(internal.to_string(), "InternalError: boom");
        let status = HttpError::from(ErrorCode::HttpResponseIncomplete);
        assert_eq!(status.code(), "HttpResponseIncomplete");
    }
}
