//! The kiosk's screen: an HTTP server (axum on a one-thread tokio runtime of its own) that `tolk
//! run` starts beside the pipeline (`[display]`, loopback by default).
//!
//! | Route | What |
//! |---|---|
//! | `GET /` | the visitor's subtitle page (full-screen kiosk browser, portrait or landscape) |
//! | `GET /operator` | the operator's status page |
//! | `GET /assets/*` | the pages' script, style and flags, embedded in the binary |
//! | `GET /events` | Server-Sent Events: a `snapshot` first, then every pipeline event (`tolk`) as the JSON line `--events` prints |
//! | `GET /api/snapshot`, `GET /api/status` | the page state, the operator document |
//! | `POST /api/direction` | `{"direction": "fr-en"}`: the visitor's direction switch |
//! | `POST /api/operator/direction`, `POST /api/operator/listening` | operator actions: `Authorization: Bearer <token>` (`display.operator_token_file`) |
//!
//! Every response carries a strict Content-Security-Policy (scripts, styles and connections
//! from this origin only, no inline code, no framing); request bodies are capped at
//! [`MAX_BODY_BYTES`]; at most `max_clients` live streams and `max_clients + 16` connections are
//! served at once, further connections are closed at accept. The pipeline never waits for a
//! browser: events reach the pages through the bounded broadcast of [`DisplayHub`].

pub mod hub;
mod listener;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

pub use hub::{ClientSlot, DisplayHub, Exchange, KioskState, Snapshot};
pub use status::{ModelInfo, ModelOrigin, OperatorStatus, StatusSource};

use crate::pipeline::{ControlError, Requester};

/// Largest request body accepted (the control documents are a few dozen bytes).
pub const MAX_BODY_BYTES: usize = 1024;

/// The policy every page is served under: nothing from elsewhere, nothing inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("display.bind {bind:?}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
    #[error("display.operator_token_file {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("display server: {0}")]
    Runtime(std::io::Error),
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct DisplayOptions {
    pub bind: String,
    /// Requests carrying `Authorization: Bearer <token>` may act; `None`: read-only.
    pub operator_token: Option<String>,
    /// Connections served at once (live streams are limited by the hub).
    pub max_connections: usize,
}

impl DisplayOptions {
    /// From `[display]`; the token file must hold one non-empty line.
    pub fn from_config(d: &tolk_config::DisplaySection) -> Result<Self, DisplayError> {
        let operator_token = match &d.operator_token_file {
            None => None,
            Some(p) => {
                let err = |reason: String| DisplayError::Token {
                    path: p.display().to_string(),
                    reason,
                };
                let text = std::fs::read_to_string(p).map_err(|e| err(e.to_string()))?;
                let token = text.trim().to_string();
                if token.len() < 16 || token.contains(char::is_whitespace) {
                    return Err(err(
                        "the token must be one line of at least 16 characters without spaces"
                            .into(),
                    ));
                }
                Some(token)
            }
        };
        Ok(Self {
            bind: d.bind.clone(),
            operator_token,
            max_connections: d.max_clients as usize + 16,
        })
    }
}

struct AppState {
    hub: Arc<DisplayHub>,
    status: StatusSource,
    token: Option<String>,
}

/// The running server; dropping it stops it (open streams are cut, browsers reconnect to the
/// next one).
pub struct DisplayServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DisplayServer {
    pub fn start(
        opts: DisplayOptions,
        hub: Arc<DisplayHub>,
        status: StatusSource,
    ) -> Result<Self, DisplayError> {
        let bind_err = |source| DisplayError::Bind {
            bind: opts.bind.clone(),
            source,
        };
        let std_listener = std::net::TcpListener::bind(&opts.bind).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = std_listener.local_addr().map_err(bind_err)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DisplayError::Runtime)?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(DisplayError::Runtime)?
        };
        let state = Arc::new(AppState {
            hub,
            status,
            token: opts.operator_token,
        });
        let app = router(state);
        let limited = listener::Limited::new(listener, opts.max_connections.max(2));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tolk-display".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        r = axum::serve(limited, app) => {
                            if let Err(e) = r {
                                tracing::error!("display server stopped: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
                // Dropping the runtime cancels the connections still open.
            })
            .map_err(DisplayError::Runtime)?;
        tracing::info!(
            "display: subtitles on http://{addr}/, operator page on http://{addr}/operator"
        );
        Ok(Self {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DisplayServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { page(assets::SUBTITLES_HTML) }))
        .route("/operator", get(|| async { page(assets::OPERATOR_HTML) }))
        .route("/assets/{name}", get(asset))
        .route("/events", get(events))
        .route("/api/snapshot", get(snapshot))
        .route("/api/status", get(operator_status))
        .route("/api/direction", post(visitor_direction))
        .route("/api/operator/direction", post(operator_direction))
        .route("/api/operator/listening", post(operator_listening))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

async fn secure_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

fn page(html: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn asset(UrlPath(name): UrlPath<String>) -> Response {
    match assets::get(&name) {
        Some((mime, body)) => ([(header::CONTENT_TYPE, mime)], body).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such asset"),
    }
}

fn snapshot_event(hub: &DisplayHub) -> SseEvent {
    let json = serde_json::to_string(&hub.snapshot()).expect("the snapshot serialises");
    SseEvent::default()
        .event("snapshot")
        .retry(Duration::from_secs(1))
        .data(json)
}

/// One browser's live stream: the snapshot, then the events; a lag sends a new snapshot.
struct LiveStream {
    first: Option<SseEvent>,
    inner: BroadcastStream<Arc<str>>,
    hub: Arc<DisplayHub>,
    _slot: ClientSlot,
}

impl Stream for LiveStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(line))) => {
                Poll::Ready(Some(Ok(SseEvent::default().event("tolk").data(&*line))))
            }
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                tracing::debug!("a display client fell {n} events behind: resynchronised");
                Poll::Ready(Some(Ok(snapshot_event(&self.hub))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

async fn events(State(s): State<Arc<AppState>>) -> Response {
    let Some(slot) = s.hub.admit() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live clients (display.max_clients)",
        );
    };
    // Subscribe before the snapshot: an event in between reaches the page twice, never zero
    // times (the page ignores what it already has).
    let rx = s.hub.subscribe();
    let stream = LiveStream {
        first: Some(snapshot_event(&s.hub)),
        inner: BroadcastStream::new(rx),
        hub: s.hub.clone(),
        _slot: slot,
    };
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

async fn snapshot(State(s): State<Arc<AppState>>) -> Response {
    Json(s.hub.snapshot()).into_response()
}

async fn operator_status(State(s): State<Arc<AppState>>) -> Response {
    Json(s.status.report(&s.hub)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectionRequest {
    direction: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListeningRequest {
    listening: bool,
}

fn bad_body(e: JsonRejection) -> Response {
    error(e.status(), format!("invalid request: {}", e.body_text()))
}

fn switch(s: &AppState, requested: &str, by: Requester) -> Response {
    match s.hub.control().set_direction(requested, by) {
        Ok(d) => Json(serde_json::json!({ "direction": d.as_str() })).into_response(),
        Err(e @ ControlError::Unknown(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ ControlError::NotOffered { .. }) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn visitor_direction(
    State(s): State<Arc<AppState>>,
    body: Result<Json<DirectionRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(r)) => switch(&s, &r.direction, Requester::Visitor),
        Err(e) => bad_body(e),
    }
}

/// Equal-time comparison of the presented token with the configured one.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// `None` when the request may act as the operator, else the refusal.
fn refuse_operator(s: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &s.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "read-only: no operator token is configured (display.operator_token_file)",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if token_matches(p.as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "wrong operator token")),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "operator token required (Authorization: Bearer <token>)",
        )),
    }
}

async fn operator_direction(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<DirectionRequest>, JsonRejection>,
) -> Response {
    if let Some(r) = refuse_operator(&s, &headers) {
        return r;
    }
    match body {
        Ok(Json(r)) => switch(&s, &r.direction, Requester::Operator),
        Err(e) => bad_body(e),
    }
}

async fn operator_listening(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<ListeningRequest>, JsonRejection>,
) -> Response {
    if let Some(r) = refuse_operator(&s, &headers) {
        return r;
    }
    match body {
        Ok(Json(r)) => {
            s.hub
                .control()
                .set_listening(r.listening, Requester::Operator);
            Json(serde_json::json!({ "listening": r.listening })).into_response()
        }
        Err(e) => bad_body(e),
    }
}

/// The pages, embedded in the binary (the kiosk is offline; nothing is fetched elsewhere).
mod assets {
    pub const SUBTITLES_HTML: &str = include_str!("assets/subtitles.html");
    pub const OPERATOR_HTML: &str = include_str!("assets/operator.html");

    pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
        Some(match name {
            "kiosk.css" => ("text/css; charset=utf-8", include_str!("assets/kiosk.css")),
            "subtitles.js" => (
                "text/javascript; charset=utf-8",
                include_str!("assets/subtitles.js"),
            ),
            "operator.js" => (
                "text/javascript; charset=utf-8",
                include_str!("assets/operator.js"),
            ),
            "flag-en.svg" => ("image/svg+xml", include_str!("assets/flag-en.svg")),
            "flag-fr.svg" => ("image/svg+xml", include_str!("assets/flag-fr.svg")),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn token_comparison_needs_the_whole_token() {
        assert!(token_matches(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!token_matches(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!token_matches(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!token_matches(b"", b"0123456789abcdef"));
    }
}
