//! Asking the running host: `jobbox stats` and `jobbox jobs watch` show
//! what lives in its memory (loop iterations, latencies, state changes as
//! they happen), so they call its API on `api.listen` with `api.token`.

use std::net::SocketAddr;

use anyhow::Context;
use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::config::Config;

/// Where to reach the host's API: its `listen` address, or loopback if it
/// listens on every interface.
fn address(config: &Config) -> SocketAddr {
    let mut addr = config.api.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

/// Sends `GET path` to the host's API; returns the response, status
/// checked.
async fn get(
    config: &Config,
    path: &str,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    if !config.api.enabled {
        anyhow::bail!(
            "the API is off (api.enabled = false): this command asks the running host through it"
        );
    }
    let addr = address(config);
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| {
        format!("cannot reach the host's API at http://{addr} (is `jobbox run` running with this config?)")
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("talking to the host's API")?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header(hyper::header::HOST, addr.to_string());
    if let Some(token) = &config.api.token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let res = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await
        .context("asking the host's API")?;
    if !res.status().is_success() {
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("the host's API answered {status}: {message}");
    }
    Ok(res)
}

/// `GET path` as JSON.
pub async fn get_json(config: &Config, path: &str) -> anyhow::Result<serde_json::Value> {
    let body = get(config, path)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    serde_json::from_slice(&body).context("the host's API answered something that is not JSON")
}

/// Reads the server-sent events of `path`, calling `on_event` with each
/// event's name and data, until the host ends the stream.
pub async fn events(
    config: &Config,
    path: &str,
    mut on_event: impl FnMut(&str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut body = get(config, path).await?.into_body();
    let mut buf = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = "message";
            let mut payload = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    payload.push_str(d);
                }
            }
            if !payload.is_empty() {
                on_event(name, &payload)?;
            }
        }
    }
    Ok(())
}
