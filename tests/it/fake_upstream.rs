//! A scripted HTTP server on loopback that speaks the LLM providers' wire formats.
//!
//! Each request the server receives consumes the next `Script`: after `first_delay` it
//! answers `status` with `headers`, then writes each chunk of the body after its own pause
//! (every chunk is flushed on its own, so the client sees separate reads), and ends the
//! body as `end` says: a clean close, an aborted connection, or a stall and then a close.
//! Requests beyond the scripts get a 500. Every request is recorded (method, path and
//! query, lower-case headers, JSON body, arrival time) so tests can assert what was sent and
//! count attempts. Any path is accepted.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use serde_json::Value;

/// How a scripted body ends after its last chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The body ends cleanly (the terminating chunk is written; the connection may be reused).
    Close,
    /// The connection is aborted mid-body: after `Script::GAP` the body stream yields an
    /// `io::Error`, so the server closes the socket without terminating the chunked body.
    Drop,
    /// Nothing more for this long, then a clean close.
    Stall(Duration),
}

/// One scripted response.
#[derive(Debug, Clone)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Before the status line and headers are sent.
    pub first_delay: Duration,
    /// Each chunk of the body with the pause before it.
    pub chunks: Vec<(Duration, Vec<u8>)>,
    pub end: End,
}

impl Script {
    /// The default pause between two chunks of a body.
    pub const GAP: Duration = Duration::from_millis(10);

    /// A `text/event-stream` body, one frame per chunk (each frame byte-exact as given,
    /// separators included), `GAP` apart; the first chunk goes right after the headers.
    pub fn sse<S: AsRef<str>>(status: u16, frames: &[S]) -> Script {
        Script {
            status,
            headers: vec![(
                "content-type".to_owned(),
                "text/event-stream; charset=utf-8".to_owned(),
            )],
            first_delay: Duration::ZERO,
            chunks: frames
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let pause = if i == 0 { Duration::ZERO } else { Self::GAP };
                    (pause, f.as_ref().as_bytes().to_vec())
                })
                .collect(),
            end: End::Close,
        }
    }

    /// An error answer with a JSON body (sent byte-exact as given).
    pub fn error(status: u16, body_json: &str) -> Script {
        Script {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            first_delay: Duration::ZERO,
            chunks: vec![(Duration::ZERO, body_json.as_bytes().to_vec())],
            end: End::Close,
        }
    }

    /// Adds (or replaces) a response header.
    pub fn header(mut self, name: &str, value: &str) -> Script {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_owned()));
        self
    }

    /// Waits this long before sending the status line and headers.
    pub fn first_delay(mut self, delay: Duration) -> Script {
        self.first_delay = delay;
        self
    }

    /// Sets the pause before every chunk but the first.
    pub fn gap(mut self, gap: Duration) -> Script {
        for (pause, _) in self.chunks.iter_mut().skip(1) {
            *pause = gap;
        }
        self
    }

    /// Sets the pause before chunk `index`.
    pub fn delay_chunk(mut self, index: usize, delay: Duration) -> Script {
        self.chunks[index].0 = delay;
        self
    }

    /// Splits chunk `index` in two at byte `at` (which may fall inside a UTF-8 character);
    /// the second half follows after `GAP`.
    pub fn split_at(mut self, index: usize, at: usize) -> Script {
        let (pause, mut bytes) = self.chunks.remove(index);
        assert!(
            0 < at && at < bytes.len(),
            "split at {at} of a {}-byte chunk",
            bytes.len()
        );
        let tail = bytes.split_off(at);
        self.chunks.insert(index, (Self::GAP, tail));
        self.chunks.insert(index, (pause, bytes));
        self
    }

    /// Splits the first chunk that contains `needle`, `offset` bytes into it (`offset` 1 in
    /// "é" cuts the character in half).
    pub fn split_inside(self, needle: &str, offset: usize) -> Script {
        let (index, at) = self
            .chunks
            .iter()
            .enumerate()
            .find_map(|(i, (_, bytes))| find(bytes, needle.as_bytes()).map(|at| (i, at)))
            .unwrap_or_else(|| panic!("no chunk contains {needle:?}"));
        self.split_at(index, at + offset)
    }

    /// Sets how the body ends.
    pub fn end(mut self, end: End) -> Script {
        self.end = end;
        self
    }

    /// The index of the first chunk that contains `needle`.
    pub fn chunk_index(&self, needle: &str) -> usize {
        self.chunks
            .iter()
            .position(|(_, bytes)| find(bytes, needle.as_bytes()).is_some())
            .unwrap_or_else(|| panic!("no chunk contains {needle:?}"))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path_and_query: String,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: HashMap<String, String>,
    /// The body as JSON (`Value::Null` when empty, a string when not JSON).
    pub body: Value,
    pub received_at: Instant,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    scripts: Mutex<VecDeque<Script>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Bodies whose stream was dropped before it ended (the client went away).
    abandoned: AtomicUsize,
}

/// The scripted server; stops when dropped.
pub struct FakeUpstream {
    /// `http://127.0.0.1:{port}`, no trailing slash.
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start(scripts: Vec<Script>) -> FakeUpstream {
        let shared = Arc::new(Shared {
            scripts: Mutex::new(scripts.into()),
            ..Shared::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake upstream");
        let addr = listener.local_addr().expect("local address");
        // No Nagle: every chunk leaves in its own segment, right away.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeUpstream {
            base_url: format!("http://{addr}"),
            shared,
            server,
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().expect("requests").clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().expect("requests").len()
    }

    /// Scripts not consumed yet.
    pub fn scripts_left(&self) -> usize {
        self.shared.scripts.lock().expect("scripts").len()
    }

    /// Response bodies dropped before their script ended (the client closed the connection).
    pub fn abandoned(&self) -> usize {
        self.shared.abandoned.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let received_at = Instant::now();
    let (parts, body) = request.into_parts();
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    shared
        .requests
        .lock()
        .expect("requests")
        .push(RecordedRequest {
            method: parts.method.to_string(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            headers,
            body,
            received_at,
        });

    let script = shared.scripts.lock().expect("scripts").pop_front();
    let Some(script) = script else {
        let mut response = Response::new(Body::from(
            r#"{"error":{"message":"fake upstream: no script left for this request"}}"#,
        ));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return response;
    };
    tokio::time::sleep(script.first_delay).await;

    let chunks = stream::iter(script.chunks).then(|(pause, bytes)| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, io::Error>(Bytes::from(bytes))
    });
    let end: BoxStream<'static, io::Result<Bytes>> = match script.end {
        End::Close => stream::empty().boxed(),
        // Hyper drops what it has buffered but not written when the body fails, so the
        // last chunk gets its time on the wire first.
        End::Drop => stream::once(async {
            tokio::time::sleep(Script::GAP).await;
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "fake upstream: connection dropped by script",
            ))
        })
        .boxed(),
        End::Stall(pause) => stream::once(async move {
            tokio::time::sleep(pause).await;
        })
        .filter_map(|()| async { None })
        .boxed(),
    };
    let body = Tracked {
        inner: chunks.chain(end).boxed(),
        ended: false,
        shared,
    };

    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() =
        StatusCode::from_u16(script.status).expect("a valid status in the script");
    for (name, value) in &script.headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    response
}

/// A body that counts itself abandoned when dropped before its end.
struct Tracked {
    inner: BoxStream<'static, io::Result<Bytes>>,
    ended: bool,
    shared: Arc<Shared>,
}

impl Stream for Tracked {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            self.ended = true;
        }
        next
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}
