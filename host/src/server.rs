//! `qa-host serve`: the service over local HTTP, speaking the API Gateway sample's body
//! (`docs/openapi.yaml`). `POST /` answers; `GET /` is the playground page; `GET /health` lists
//! the models; `GET /metrics` is Prometheus's. Every request `POST /` gets, answered or refused,
//! is reported by the telemetry layer, as under Lambda.
//!
//! What a client can make the server hold is bounded ([`ServeLimits`]): connections (further
//! ones wait in the kernel's backlog), time to send the headers (hyper) and the whole request
//! (tower's timeout, 408 `request_timeout`), and requests in progress (tower's concurrency
//! limit with load shedding, 503 `overloaded` with `Retry-After`). A request whose client goes
//! away is dropped with its connection, and with it the guest call it was waiting on.

use crate::api::{ApiError, QaRequest, limits};
use crate::config::ServeLimits;
use crate::service::QaService;
use crate::service::answering;
use crate::telemetry::layer::{Answering, Call, TelemetryLayer};
use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt};

/// Seconds a client refused with `overloaded` is asked to wait.
const RETRY_AFTER_SECS: u32 = 1;

/// What the routes share.
#[derive(Clone)]
struct App {
    service: Arc<QaService>,
    /// The service's answers behind the telemetry layer.
    answering: Answering,
}

pub fn router(service: Arc<QaService>, limits: &ServeLimits) -> Router {
    // Prometheus series and log lines; no EMF lines outside Lambda.
    let telemetry = TelemetryLayer::new(service.catalog().clone(), service.prom().clone(), None);
    let app = App { answering: answering(service.clone(), telemetry.clone()), service };
    let request_timeout = limits.request_timeout;
    let refusal = move |error: tower::BoxError| refused(telemetry.clone(), request_timeout, error);
    let root = post(answer)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(refusal))
                .load_shed()
                .concurrency_limit(limits.max_requests.max(1))
                .timeout(request_timeout),
        )
        .get(playground);
    Router::new().route("/", root).route("/health", get(health)).route("/metrics", get(metrics)).with_state(app)
}

/// The answer route's refusals: over the concurrency limit, or past the request timeout.
async fn refused(telemetry: TelemetryLayer, request_timeout: Duration, error: tower::BoxError) -> Response {
    let request_id = next_request_id();
    let (error, took) = if error.is::<tower::timeout::error::Elapsed>() {
        (ApiError::RequestTimeout, request_timeout)
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        (ApiError::Overloaded, Duration::ZERO)
    } else {
        (ApiError::Internal(error.to_string()), Duration::ZERO)
    };
    telemetry.refused(&request_id, &error, took);
    error_response(&error, &request_id)
}

/// Serves until the process is stopped.
pub async fn serve(service: Arc<QaService>, addr: std::net::SocketAddr, limits: ServeLimits) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, ?limits, "serving POST /");
    eprintln!("qa-host: listening on http://{}", listener.local_addr()?);
    let app = router(service, &limits);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else { return Ok(()) };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait for connections to close.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn next_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("local-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Bodies over the limit are still read (and dropped) up to this size, so clients that send
/// the whole body before reading the response get the 413 instead of a broken pipe.
const DRAIN_LIMIT: usize = 64 << 20;

/// The body, or `body_too_large` with its real size once it passes the limit.
async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let (mut kept, mut total) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadJson(format!("reading the request body: {e}")))?;
        total += chunk.len();
        if total <= limits::MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    if total > limits::MAX_BODY_BYTES {
        return Err(ApiError::BodyTooLarge { len: total, limit: limits::MAX_BODY_BYTES });
    }
    Ok(kept)
}

/// Logs a request dropped before it was answered: its client went away, or its time ran out.
struct Unanswered<'a> {
    request_id: &'a str,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            tracing::warn!(
                request_id = self.request_id,
                "request dropped before its answer (client gone or request timeout); its guest call is cancelled"
            );
        }
    }
}

async fn answer(State(app): State<App>, body: Body) -> Response {
    let request_id = next_request_id();
    let mut unanswered = Unanswered { request_id: &request_id, answered: false };
    let request = match read_body(body).await {
        Ok(bytes) => QaRequest::from_json(&bytes),
        Err(error) => Err(error),
    };
    let call = Call { request_id: request_id.clone(), request, budget: None };
    let Ok(outcome) = app.answering.oneshot(call).await;
    unanswered.answered = true;
    match outcome {
        Ok(reply) => json_response(StatusCode::OK, &reply),
        Err(error) => error_response(&error, &request_id),
    }
}

/// The error's status and JSON body; `overloaded` (the route full, or every guest instance
/// busy) also says when to retry.
fn error_response(error: &ApiError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &error.body(request_id));
    if matches!(error.kind(), ApiError::Overloaded) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

async fn health(State(App { service, .. }): State<App>) -> Response {
    let models: Vec<&str> = service.catalog().names().collect();
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "models": models,
            "default_model": service.default_model(),
            "guest_version": service.guest_version(),
            "rollout": service.rollout_status(),
        }),
    )
}

async fn metrics(State(App { service, .. }): State<App>) -> Response {
    match service.prom_text() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::telemetry::prom::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "the Prometheus metrics could not be written");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("the metrics could not be written: {error}")).into_response()
        }
    }
}

/// The playground: one page, compiled in, that only talks to this server (its own
/// `Content-Security-Policy` says so to the browser).
const PLAYGROUND: &str = include_str!("playground.html");

async fn playground() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, playground_policy()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, PLAYGROUND).into_response()
}

/// The page's policy: nothing but this server's own routes, and no script or style but the
/// page's own (by hash, so nothing injected into the page could run).
fn playground_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = |tag: &str| {
            use base64::Engine as _;
            use sha2::Digest as _;
            let inline = element_text(PLAYGROUND, tag);
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(inline.as_bytes())))
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("script"),
            hash("style")
        )
    })
}

/// The text of the first `<tag>` element of `html` (empty if there is none).
fn element_text<'a>(html: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    html.split_once(&open).and_then(|(_, rest)| rest.split_once(&close)).map_or("", |(text, _)| text)
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
