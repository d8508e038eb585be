//! `qa-host serve`: the service over local HTTP, speaking the API Gateway sample's body.
//! `POST /` answers; `GET /health` lists the models.

use crate::api::{ApiError, QaRequest, limits};
use crate::service::QaService;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub fn router(service: Arc<QaService>) -> Router {
    Router::new().route("/", post(answer)).route("/health", get(health)).with_state(service)
}

/// Serves until the process is stopped.
pub async fn serve(service: Arc<QaService>, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving POST /");
    eprintln!("qa-host: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(service)).await
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

async fn answer(State(service): State<Arc<QaService>>, body: Body) -> Response {
    let request_id = next_request_id();
    let outcome = async {
        let bytes = read_body(body).await?;
        let request = QaRequest::from_json(&bytes)?;
        service.answer(request).await
    }
    .await;
    match outcome {
        Ok(response) => json_response(StatusCode::OK, &response),
        Err(error) => {
            tracing::warn!(request_id, code = error.code(), %error, "request failed");
            let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_response(status, &error.body(&request_id))
        }
    }
}

async fn health(State(service): State<Arc<QaService>>) -> Response {
    let models: Vec<&str> = service.catalog().names().collect();
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok", "models": models, "default_model": service.default_model()}))
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
