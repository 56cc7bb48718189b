//! A real HTTP/1.1 server on 127.0.0.1 for the tests: it records every
//! request exactly as received and answers as the test's handler says,
//! including never answering (to see the client give up and close).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How to answer a request.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// Never answer; wait for the client to close the connection.
    Hang,
}

type Handler = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

#[derive(Default)]
struct Seen {
    requests: Vec<Recorded>,
    /// When hung connections were closed by the client.
    closed: Vec<Instant>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts a server on a free port. `handler` gets each request and how
    /// many came before it.
    pub async fn start(
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestServer::serve(listener, Arc::new(handler))
    }

    /// Starts a server on `addr` (a port a test reserved earlier).
    pub async fn start_on(
        addr: SocketAddr,
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        TestServer::serve(listener, Arc::new(handler))
    }

    fn serve(listener: TcpListener, handler: Arc<Handler>) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (seen, handler) = (Arc::clone(&seen), Arc::clone(&handler));
                    tokio::spawn(async move { connection(stream, seen, handler).await });
                }
            })
        };
        TestServer { addr, seen, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().requests.clone()
    }

    pub fn closed(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().closed.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connection(mut stream: TcpStream, seen: Arc<Mutex<Seen>>, handler: Arc<Handler>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut start = lines.next().unwrap_or("").split(' ');
        let (method, path) = (
            start.next().unwrap_or("").to_owned(),
            start.next().unwrap_or("").to_owned(),
        );
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let request = Recorded {
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        };
        let reply = {
            let mut seen = seen.lock().unwrap();
            let n = seen.requests.len();
            seen.requests.push(request.clone());
            handler(&request, n)
        };
        match reply {
            Reply::Status(code) => {
                let answer = if code == 204 || code == 304 {
                    format!("HTTP/1.1 {code} Test\r\n\r\n")
                } else {
                    format!("HTTP/1.1 {code} Test\r\ncontent-length: 2\r\n\r\nok")
                };
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
            Reply::Hang => {
                // Wait for the client to give up.
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            seen.lock().unwrap().closed.push(Instant::now());
                            return;
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}
