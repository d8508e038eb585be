//! A Lambda Runtime API on a loopback port, for what cargo-lambda's emulator cannot play: its
//! 1.9.2 routes have no `/runtime/restore/next` (SnapStart), and it hands a connected
//! bootstrap one invocation at a time (its `--concurrency` counts processes), while Lambda
//! Managed Instances send one environment several at once. The endpoints are the Runtime
//! API's own (`/2018-06-01/runtime/invocation/next`, `.../{id}/response`, `.../{id}/error`,
//! `/runtime/init/error`, `/runtime/restore/next`, `/runtime/restore/error`), with the headers
//! Lambda sends (request id, deadline in epoch milliseconds, function ARN, trace id), plus a
//! container-credentials endpoint (`/credentials`) like the one SnapStart environments get
//! their AWS credentials from.
//!
//! Every call is recorded with its time, so a test can say what happened in which order.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The base a bootstrap's `AWS_LAMBDA_RUNTIME_API` names, and the token the credentials
/// endpoint expects.
pub const CREDENTIALS_TOKEN: &str = "test-container-token";

/// One invocation waiting for a poller.
struct Queued {
    id: String,
    deadline_ms: u64,
    event: Value,
}

/// What the bootstrap answered one invocation with.
#[derive(Clone, Debug)]
pub struct Answer {
    pub request_id: String,
    /// `/response` (true) or `/error` (false).
    pub ok: bool,
    pub body: Value,
    pub at: Instant,
    /// The invocation's deadline, as an instant of this process's clock.
    pub deadline: Instant,
    /// Invocations handed out and not answered, just before this one was answered.
    pub in_flight: usize,
}

/// Everything the server saw, in order.
#[derive(Default)]
pub struct Record {
    queue: VecDeque<Queued>,
    /// `/next` calls waiting for an invocation now.
    pub polling: usize,
    /// `/next` calls in all, with when each arrived.
    pub next_calls: Vec<Instant>,
    /// Request id → when it was handed out and its deadline.
    handed: Vec<(String, Instant, Instant)>,
    pub answers: Vec<Answer>,
    pub most_in_flight: usize,
    pub restore_calls: Vec<Instant>,
    restore_released: bool,
    pub restore_errors: Vec<Value>,
    pub init_errors: Vec<Value>,
    /// The access key id the credentials endpoint hands out now.
    access_key: String,
    /// When each credentials fetch came, and the key it got.
    pub credential_fetches: Vec<(Instant, String)>,
    sequence: u64,
}

impl Record {
    fn in_flight(&self) -> usize {
        self.handed.len() - self.answers.len()
    }
}

struct Shared {
    record: Mutex<Record>,
    /// Wakes the test thread waiting on the record.
    changed: Condvar,
    /// Wakes `/next` and `/restore/next` calls waiting in the server.
    wake: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.changed.notify_all();
        self.wake.notify_waiters();
    }
}

/// The server; stopped when dropped.
pub struct RuntimeApi {
    pub port: u16,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl RuntimeApi {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let record = Record { access_key: "KEY-BEFORE-SNAPSHOT".into(), ..Record::default() };
        let shared = Arc::new(Shared { record: Mutex::new(record), changed: Condvar::new(), wake: tokio::sync::Notify::new() });
        let serving = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(route(&shared, request).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                });
            }
        });
        RuntimeApi { port, shared, _runtime: runtime }
    }

    /// `AWS_LAMBDA_RUNTIME_API` for a bootstrap of this server.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` for a bootstrap of this server.
    pub fn credentials_uri(&self) -> String {
        format!("http://127.0.0.1:{}/credentials", self.port)
    }

    /// Queues `event` with a deadline `within` from now; returns its request id.
    pub fn invoke(&self, event: Value, within: Duration) -> String {
        let deadline = SystemTime::now() + within;
        let deadline_ms = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let mut record = self.shared.lock();
        record.sequence += 1;
        let id = format!("invocation-{:03}", record.sequence);
        record.queue.push_back(Queued { id: id.clone(), deadline_ms, event });
        drop(record);
        self.shared.changed();
        id
    }

    /// The credentials endpoint hands out `access_key` from now on.
    pub fn set_access_key(&self, access_key: &str) {
        self.shared.lock().access_key = access_key.to_string();
    }

    /// Lets the waiting (and every later) `/restore/next` call return: the environment is
    /// restored.
    pub fn release_restore(&self) {
        self.shared.lock().restore_released = true;
        self.shared.changed();
    }

    /// The record as it is now.
    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.shared.lock()
    }

    /// Waits until `done` holds for the record; panics after `timeout` with `what`.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Record) -> Option<T>) -> T {
        let started = Instant::now();
        let mut record = self.shared.lock();
        loop {
            if let Some(value) = done(&record) {
                return value;
            }
            let left = timeout.checked_sub(started.elapsed()).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"));
            record = self.shared.changed.wait_timeout(record, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }

    /// The answer to `request_id`, once it arrived.
    pub fn answer(&self, request_id: &str, timeout: Duration) -> Answer {
        self.wait_for(&format!("the answer to {request_id}"), timeout, |r| r.answers.iter().find(|a| a.request_id == request_id).cloned())
    }
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn epoch_ms_to_instant(ms: u64) -> Instant {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms))
}

async fn route(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let json = || serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
    let path = parts.uri.path().trim_start_matches("/2018-06-01/runtime");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["invocation", "next"]) => next(shared).await,
        (&Method::POST, ["invocation", id, outcome @ ("response" | "error")]) => {
            let mut record = shared.lock();
            let Some(&(_, _, deadline)) = record.handed.iter().find(|(handed, ..)| handed == id) else {
                return respond(StatusCode::BAD_REQUEST, "unknown request id");
            };
            let in_flight = record.in_flight();
            record.answers.push(Answer {
                request_id: id.to_string(),
                ok: *outcome == "response",
                body: json(),
                at: Instant::now(),
                deadline,
                in_flight,
            });
            drop(record);
            shared.changed();
            respond(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        (&Method::POST, ["init", "error"]) => {
            shared.lock().init_errors.push(json());
            shared.changed();
            respond(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        (&Method::GET, ["restore", "next"]) => {
            shared.lock().restore_calls.push(Instant::now());
            shared.changed();
            loop {
                let woken = shared.wake.notified();
                if shared.lock().restore_released {
                    return respond(StatusCode::OK, "");
                }
                woken.await;
            }
        }
        (&Method::POST, ["restore", "error"]) => {
            shared.lock().restore_errors.push(json());
            shared.changed();
            respond(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        (&Method::GET, ["credentials"]) => {
            let token = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
            if token != Some(CREDENTIALS_TOKEN) {
                return respond(StatusCode::UNAUTHORIZED, "wrong or missing authorization token");
            }
            let mut record = shared.lock();
            let key = record.access_key.clone();
            record.credential_fetches.push((Instant::now(), key.clone()));
            drop(record);
            shared.changed();
            let expiration = "2099-01-01T00:00:00Z";
            let body = json!({"AccessKeyId": key, "SecretAccessKey": "secret", "Token": "session", "Expiration": expiration});
            respond(StatusCode::OK, body.to_string())
        }
        _ => respond(StatusCode::NOT_FOUND, format!("no route for {} {}", parts.method, parts.uri.path())),
    }
}

/// `/next`: waits for a queued invocation and hands it out with Lambda's headers.
async fn next(shared: &Shared) -> Response<Full<Bytes>> {
    /// Counts the call as polling while it waits, also when the bootstrap gives up on it.
    struct Polling<'a>(&'a Shared);
    impl Drop for Polling<'_> {
        fn drop(&mut self) {
            self.0.lock().polling -= 1;
            self.0.changed();
        }
    }
    {
        let mut record = shared.lock();
        record.polling += 1;
        record.next_calls.push(Instant::now());
    }
    shared.changed();
    let polling = Polling(shared);
    let queued = loop {
        let woken = shared.wake.notified();
        if let Some(queued) = shared.lock().queue.pop_front() {
            break queued;
        }
        woken.await;
    };
    {
        let mut record = shared.lock();
        record.handed.push((queued.id.clone(), Instant::now(), epoch_ms_to_instant(queued.deadline_ms)));
        record.most_in_flight = record.most_in_flight.max(record.in_flight());
    }
    drop(polling);
    let mut response = respond(StatusCode::OK, queued.event.to_string());
    let headers = response.headers_mut();
    headers.insert("lambda-runtime-aws-request-id", queued.id.parse().unwrap());
    headers.insert("lambda-runtime-deadline-ms", queued.deadline_ms.to_string().parse().unwrap());
    headers.insert("lambda-runtime-invoked-function-arn", "arn:aws:lambda:us-east-1:123456789012:function:qa".parse().unwrap());
    headers.insert("lambda-runtime-trace-id", format!("Root=1-00000000-{:024}", 0).parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    response
}
