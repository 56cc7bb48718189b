//! Asking the running host: `jobbox stats` and `jobbox jobs watch` show
//! what lives in its memory (loop iterations, latencies, state changes as
//! they happen), so they call its API on `api.listen` with `api.token`.

use std::net::SocketAddr;

use http_body_util::BodyExt;

use crate::api::client::Client;

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

/// A connection to the host's API, as configured.
async fn connect(config: &Config) -> anyhow::Result<Client> {
    if !config.api.enabled {
        anyhow::bail!(
            "the API is off (api.enabled = false): this command asks the running host through it"
        );
    }
    Client::connect(address(config), config.api.token.as_deref()).await
}

/// `GET path` as JSON.
pub async fn get_json(config: &Config, path: &str) -> anyhow::Result<serde_json::Value> {
    connect(config).await?.get_json(path).await
}

/// Reads the server-sent events of `path`, calling `on_event` with each
/// event's name and data, until the host ends the stream.
pub async fn events(
    config: &Config,
    path: &str,
    mut on_event: impl FnMut(&str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let res = connect(config)
        .await?
        .send(hyper::Method::GET, path, None)
        .await?;
    if !res.status().is_success() {
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        return Err(crate::api::client::error_of(status, &body));
    }
    let mut body = res.into_body();
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
