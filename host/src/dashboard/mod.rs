//! The web dashboard: a single-page app served by `jobbox run` at `/` on
//! the API's listener, from assets embedded in the binary (building jobbox
//! needs cargo alone; the page needs no CDN).
//!
//! The pages carry no data: everything they show comes from the admin API,
//! with the token in an `Authorization` header that the page keeps for the
//! tab's session. No cookie is ever set, so another site cannot make a
//! browser act on the API (no CSRF), and the pages are served with a
//! content security policy that allows only their own scripts and styles.
//!
//! `JOBBOX_DASHBOARD_DIR` serves the assets from a folder instead, read at
//! each request: for working on the dashboard without rebuilding jobbox.

use std::borrow::Cow;
use std::path::PathBuf;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/index.html"),
};

/// What `/assets/{name}` serves.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("assets/favicon.svg"),
    },
];

/// The paths of the app's pages: each serves `index.html`, and the page's
/// script draws the page the path names (so links are shareable).
pub const PAGES: &[&str] = &[
    "/",
    "/jobs",
    "/jobs/{id}",
    "/schedules",
    "/schedules/{id}",
    "/plugins",
    "/queues",
    "/outbox",
    "/hosts",
];

/// The dashboard's routes, to be merged into the API's router (outside its
/// token check: the pages hold no data).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new();
    for page in PAGES {
        r = r.route(page, get(index));
    }
    r.route("/assets/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => serve(a, &headers),
        // The API's error shape, without depending on the API.
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": { "code": "not_found", "message": format!("no asset {name:?}") }
            })),
        )
            .into_response(),
    }
}

/// The asset's body and ETag: from `JOBBOX_DASHBOARD_DIR` if set (hashed
/// at each request, as the file may change), else embedded (hashed once).
fn body(asset: &'static Asset) -> (Cow<'static, str>, String) {
    if let Some(dir) = std::env::var_os("JOBBOX_DASHBOARD_DIR")
        && let Ok(s) = std::fs::read_to_string(PathBuf::from(dir).join(asset.name))
    {
        let etag = etag_of(&s);
        return (Cow::Owned(s), etag);
    }
    static EMBEDDED: std::sync::LazyLock<Vec<(&'static str, String)>> =
        std::sync::LazyLock::new(|| {
            std::iter::once(&INDEX)
                .chain(ASSETS)
                .map(|a| (a.name, etag_of(a.body)))
                .collect()
        });
    let etag = EMBEDDED
        .iter()
        .find(|(name, _)| *name == asset.name)
        .map(|(_, e)| e.clone())
        .unwrap_or_else(|| etag_of(asset.body));
    (Cow::Borrowed(asset.body), etag)
}

/// A strong ETag: the first 8 bytes of the body's SHA-256, in hex.
fn etag_of(body: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The content security policy of every page: its own scripts, styles and
/// API only; never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Serves an asset, revalidated on every load by its hash (so a new build
/// is never served stale, and an unchanged one costs a 304).
fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let (body, etag) = body(asset);
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            body.into_owned(),
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
