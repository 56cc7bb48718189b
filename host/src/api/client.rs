//! A small HTTP/1 client for the admin API, over one kept-alive
//! connection: what `jobbox stats`, `jobbox jobs watch` and `jobbox bench`
//! use to ask a host.

use std::net::SocketAddr;

use anyhow::Context;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;

/// One connection to a host's API.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    authorization: Option<String>,
    sender: SendRequest<Full<Bytes>>,
}

impl Client {
    /// Connects to the API on `addr`, sending `token` (if any) as a bearer
    /// token with every request.
    pub async fn connect(addr: SocketAddr, token: Option<&str>) -> anyhow::Result<Client> {
        let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| {
            format!(
                "cannot reach the host's API at http://{addr} (is `jobbox run` running with this config?)"
            )
        })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("talking to the host's API")?;
        tokio::spawn(conn);
        Ok(Client {
            addr,
            authorization: token.map(|t| format!("Bearer {t}")),
            sender,
        })
    }

    /// Sends a request (`body`, if any, as JSON); returns the response with
    /// its body unread.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string());
        if let Some(auth) = &self.authorization {
            req = req.header(header::AUTHORIZATION, auth);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        self.sender
            .ready()
            .await
            .context("the host's API closed the connection")?;
        self.sender
            .send_request(req.body(Full::new(body.unwrap_or_default()))?)
            .await
            .context("asking the host's API")
    }

    /// Sends a request and reads the whole answer: its status and body.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let res = self.send(method, path, body).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// `GET path`, which must succeed, as JSON. An error answer becomes an
    /// error carrying the API's message.
    pub async fn get_json(&mut self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.call(Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(error_of(status, &body));
        }
        serde_json::from_slice(&body).context("the host's API answered something that is not JSON")
    }
}

/// The error an API answer carries: its `error.message`, or its body.
pub fn error_of(status: StatusCode, body: &[u8]) -> anyhow::Error {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    anyhow::anyhow!("the host's API answered {status}: {message}")
}
