//! A stand-in schema registry for unit tests: an HTTP server on 127.0.0.1 that answers each
//! connection with the next canned answer and records what it was asked.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// One request as the fake registry received it.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// `POST /subjects/t-value/versions HTTP/1.1`
    pub line: String,
    /// The headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// A fake registry's address and what it was asked.
pub(crate) struct Fake {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// Requests so far, in arrival order.
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    /// The requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Serves `answers` (status, JSON body) one connection each, in order; after the last, keeps
/// answering with it.
pub(crate) async fn serve(answers: Vec<(u16, &'static str)>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        for i in 0.. {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (status, body) = answers[i.min(answers.len() - 1)];
            let request = read_request(&mut socket).await;
            seen.lock().unwrap().push(request);
            let reply = format!(
                "HTTP/1.1 {status} Canned\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    Fake { url, requests }
}

/// A server that accepts connections and never answers.
pub(crate) async fn silent() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// A loopback URL where nothing listens: the port was bound, then released.
pub(crate) fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Request {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the client closed the connection mid-request");
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    while data.len() < head_end + length {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the client closed the connection mid-body");
        data.extend_from_slice(&buf[..n]);
    }
    Request {
        line,
        headers,
        body: String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned(),
    }
}
