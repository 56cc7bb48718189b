//! The admin API's settings (`[api]`), apart from the API itself so that
//! `config` can compose them without depending on the host.

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the admin API (`[api]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Whether `jobbox run` serves it.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The bearer token; `None` means no token (loopback only).
    pub token: Option<String>,
    /// Refuse every mutating route (403).
    pub read_only: bool,
    /// Serve the web dashboard at `/`.
    pub dashboard: bool,
    /// The largest request body.
    pub max_body: usize,
    /// How long a request may take (a `?wait` and the event stream excepted).
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            token: None,
            read_only: false,
            dashboard: true,
            max_body: 8 << 20,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
        }
    }
}
