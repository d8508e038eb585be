//! `qa-host serve` under abuse, played by raw TCP clients against the real host, guest and
//! model: slow headers, slow bodies, more requests than the server answers at once, and
//! clients that leave before their answer. The misbehaving guest of `guest/fixtures` answers
//! `hello` at once and holds a request as long as asked with `sleep:<seconds>`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How late past a time limit the server may act on a loaded 2-core machine (timers and
/// threads wait for a core); every bound below that a wrong server would miss by far more.
const LATE: Duration = Duration::from_secs(2);

fn body(question: &str) -> String {
    serde_json::json!({"question": question, "context": "ok"}).to_string()
}

/// A raw HTTP/1.1 POST of `body` to `/`, without reading the response.
fn send_post(addr: &str, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let request =
        format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).expect("send");
    stream
}

/// Reads a whole response from a connection the server closes or answers on.
fn read_response(stream: &mut TcpStream, timeout: Duration) -> String {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                // One response is all these tests read: stop at the end of its JSON body.
                if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
                    if length.is_some_and(|len| bytes.len() >= end + 4 + len) {
                        break;
                    }
                }
            }
            Err(e) => panic!("reading the response: {e} (read so far: {:?})", String::from_utf8_lossy(&bytes)),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn five_hundred_slow_header_connections_neither_hold_up_a_request_nor_grow_the_server() {
    // Opening 500 connections takes about a second here, more beside other tests: the header
    // timeout leaves room for all of them to be open while the normal request runs.
    let server = Serving::start(&misbehaving_guest(), &[("QA_SERVE_HEADER_TIMEOUT_MS", "6000")]);
    assert_eq!(server.post(body("hello")).0, 200, "warm: the model is loaded");
    let threads_before = server.proc_status("Threads");
    // Two rounds: the first may leave the allocator holding freed buffers; a second round
    // that grows memory again would be a leak.
    let mut rss_after_round = Vec::new();
    for round in 1..=2 {
        let took = slow_header_round(&server);
        // Held up by the slow connections, it would wait for their header timeout (6 s).
        assert!(took < LATE, "round {round}: a normal request beside 500 slow connections took {took:?}");
        // The connections are closed; threads that served them may take a moment to go.
        let settled = Instant::now();
        while server.proc_status("Threads") > threads_before + 2 && settled.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let (threads, rss) = (server.proc_status("Threads"), server.proc_status("VmRSS"));
        eprintln!("round {round}: normal request {took:?}; threads {threads_before} -> {threads}; VmRSS {rss} kB");
        assert!(threads <= threads_before + 2, "round {round}: threads grew from {threads_before} to {threads} and stayed for 10 s");
        rss_after_round.push(rss);
    }
    let growth = rss_after_round[1].saturating_sub(rss_after_round[0]);
    assert!(growth < 8 * 1024, "a second round of slow clients grew resident memory by {growth} kB");
    assert_eq!(server.post(body("hello")).0, 200, "the server keeps serving");
}

/// 500 clients send their headers a byte at a time while a normal request is timed; then the
/// header timeout must close every one of them. Returns the normal request's time.
fn slow_header_round(server: &Serving) -> Duration {
    let head = b"POST / HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut slow: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(server.addr()).expect("connect")).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    /// Stops the trickle when the round ends, a failed assertion included.
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let (took, status, json, cut) = std::thread::scope(|scope| {
        let trickle = scope.spawn(|| {
            let mut cut = 0; // connections the server had already closed
            for byte in head.iter().cycle() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                for stream in &mut slow {
                    if stream.write_all(&[*byte]).is_err() {
                        cut += 1;
                    }
                }
                // The slowness is the attack: a byte every 50 ms.
                std::thread::sleep(Duration::from_millis(50));
            }
            cut
        });
        let stopping = Stop(&stop);
        // Every connect returned, so all 500 are in the accept queue or accepted.
        wait_until("the server to accept all 500", Duration::from_secs(30), || server.waiting_to_be_accepted() == 0);
        let started = Instant::now();
        let (status, json) = server.post(body("hello"));
        let took = started.elapsed();
        drop(stopping);
        (took, status, json, trickle.join().unwrap())
    });
    assert_eq!((status, json["Answer"].as_str()), (200, Some("ok")), "{json}");
    assert_eq!(cut, 0, "within the header timeout the slow connections were still open");
    // The header timeout closes every one of them (408 or a plain close). These requests never
    // reached an operation (no request line and headers were read), so there is nothing for
    // docs/openapi.yaml to check; its 408 response says as much.
    let waited = Instant::now();
    for stream in &mut slow {
        let response = read_response(stream, Duration::from_secs(10));
        assert!(response.is_empty() || response.starts_with("HTTP/1.1 408"), "a slow client got {response:?}");
    }
    assert!(waited.elapsed() < Duration::from_secs(9), "slow connections were closed only after {:?}", waited.elapsed());
    took
}

#[test]
fn a_body_sent_too_slowly_is_refused_with_request_timeout() {
    let server = Serving::start(&misbehaving_guest(), &[("QA_SERVE_REQUEST_TIMEOUT_MS", "1000")]);
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    write!(stream, "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"question\"").unwrap();
    let started = Instant::now();
    let response = read_response(&mut stream, Duration::from_secs(10));
    check_raw("POST", "/", &response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"code\":\"request_timeout\""), "{response}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    assert_eq!(server.post(body("hello")).0, 200, "the server keeps serving");

    // The limit covers the answer too: a guest call longer than it ends the request (and the
    // call) at the limit.
    let started = Instant::now();
    let mut slow = send_post(server.addr(), &body("sleep:30"));
    let response = read_response(&mut slow, Duration::from_secs(10));
    check_raw("POST", "/", &response);
    assert!(response.starts_with("HTTP/1.1 408") && response.contains("\"code\":\"request_timeout\""), "{response}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    assert_eq!(server.post(body("hello")).0, 200, "the server keeps serving");
}

#[test]
fn qa_max_windows_reaches_the_guest() {
    let server = Serving::start(&qa_guest(), &[("QA_MAX_WINDOWS", "2")]);
    let long_context = benz_request()["context"].as_str().unwrap().repeat(10); // 4 or 5 windows
    let request = serde_json::json!({"question": "When was the car invented?", "context": long_context, "decoding": "pipeline"});
    let (status, json) = server.post(request.to_string());
    assert_eq!((status, json["error"]["code"].as_str()), (413, Some("too_many_windows")), "{json}");
    assert_eq!(server.post(benz_request().to_string()).1["Answer"], "1886", "one window fits");
}

#[test]
fn requests_over_the_concurrency_limit_are_refused_at_once_with_retry_after() {
    let server = Serving::start(&misbehaving_guest(), &[("QA_SERVE_MAX_REQUESTS", "2"), ("QA_GUEST_DEADLINE_MS", "3000")]);
    assert_eq!(server.post(body("hello")).0, 200, "warm: the model is loaded");
    let calls = server.guest_calls();
    let mut holders: Vec<TcpStream> = (0..2).map(|_| send_post(server.addr(), &body("sleep:3600"))).collect();
    server.wait_for_guest_calls(calls, 2); // both are in the guest

    let started = Instant::now();
    let response = http().post(&format!("{}/", server.base)).send(body("hello")).expect("HTTP round trip");
    let took = started.elapsed();
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let (status, json) = api_json("POST", "/", response);
    assert_eq!((status, json["error"]["code"].as_str()), (503, Some("overloaded")), "{json}");
    // Refused at once: a request that waited for a holder would wait for its 3 s deadline.
    assert!(took < Duration::from_secs(1), "the refusal took {took:?}");
    assert_eq!(server.health()["status"], "ok", "health answers while the answer route is full");
    // Refused before the handler, and still counted, under its status and code.
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.contains("qa_requests_total{code=\"overloaded\",model=\"none\",status=\"503\"} 1\n"), "{metrics}");

    // The holders end at their deadline, and the server serves again.
    for holder in &mut holders {
        let response = read_response(holder, Duration::from_secs(10));
        check_raw("POST", "/", &response);
        assert!(response.contains("\"code\":\"guest_timeout\""), "{response}");
    }
    assert_eq!(server.post(body("hello")).0, 200);
}

#[test]
fn a_client_that_leaves_cancels_its_guest_call() {
    // One request at a time and one guest instance: the next request is answered only if the
    // abandoned request is dropped (its slot) and its guest call stopped (the instance; a
    // call left running would hold it for its minute, and the next request would be refused
    // as overloaded). Preloaded, so no snapshot is being made in the one instance meanwhile.
    let server = Serving::start(
        &misbehaving_guest(),
        &[("QA_SERVE_MAX_REQUESTS", "1"), ("QA_GUEST_INSTANCES", "1"), ("QA_GUEST_DEADLINE_MS", "60000"), ("QA_PRELOAD", "nlp1")],
    );
    assert_eq!(server.post(body("hello")).0, 200, "warm: the model is loaded");
    let calls = server.guest_calls();
    let leaver = send_post(server.addr(), &body("sleep:3600"));
    server.wait_for_guest_calls(calls, 1); // asleep in the guest, holding the one slot and instance
    assert_eq!(server.post(body("hello")).0, 503, "the sleeper holds the only slot");
    drop(leaver);
    server.process.wait_for_log("request dropped before its answer", Duration::from_secs(10));
    let (status, json) = server.post(body("hello"));
    assert_eq!((status, json["Answer"].as_str()), (200, Some("ok")), "the slot and the guest instance came back: {json}");
}

#[test]
fn connections_over_the_limit_wait_to_be_accepted() {
    let server = Serving::start(&misbehaving_guest(), &[("QA_SERVE_MAX_CONNECTIONS", "2"), ("QA_SERVE_HEADER_TIMEOUT_MS", "60000")]);
    // Two connections that send nothing hold both places (the header timeout is a minute).
    let mut idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(server.addr()).expect("connect")).collect();
    wait_until("the server to accept both", Duration::from_secs(30), || server.waiting_to_be_accepted() == 0);
    let mut waiting = send_post(server.addr(), &body("hello"));
    // Not answered for a second (the wait is the observation: an accepted "hello" is answered
    // in milliseconds), and still in the kernel's accept queue.
    waiting.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut byte = [0u8; 1];
    let early = waiting.read(&mut byte);
    assert!(
        early.as_ref().is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the third connection waits to be accepted: {early:?}"
    );
    assert_eq!(server.waiting_to_be_accepted(), 1, "the third connection is not accepted");
    // One place frees: the waiting request is accepted and answered.
    drop(idle.remove(0));
    let response = read_response(&mut waiting, Duration::from_secs(30));
    check_raw("POST", "/", &response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[test]
fn requests_beyond_the_guest_instances_are_refused_as_overloaded_and_the_pool_recovers() {
    // Preloaded, so no snapshot is being made in an instance of the pool meanwhile.
    let server =
        Serving::start(&misbehaving_guest(), &[("QA_GUEST_INSTANCES", "2"), ("QA_GUEST_DEADLINE_MS", "3000"), ("QA_PRELOAD", "nlp1")]);
    assert_eq!(server.post(body("hello")).0, 200, "warm: the model is loaded");
    let calls = server.guest_calls();
    let mut holders: Vec<TcpStream> = (0..2).map(|_| send_post(server.addr(), &body("sleep:3600"))).collect();
    server.wait_for_guest_calls(calls, 2); // both instances are asleep
    let response = http().post(&format!("{}/", server.base)).send(body("hello")).expect("HTTP round trip");
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let (status, json) = api_json("POST", "/", response);
    assert_eq!((status, json["error"]["code"].as_str()), (503, Some("overloaded")), "{json}");
    for holder in &mut holders {
        let response = read_response(holder, Duration::from_secs(10));
        check_raw("POST", "/", &response);
        assert!(response.contains("\"code\":\"guest_timeout\""), "{response}");
    }
    assert_eq!(server.post(body("hello")).0, 200, "the instances came back to the pool");
}

#[test]
fn inference_threads_set_onnx_runtime_s_thread_pool() {
    // Preloaded, so the model's guest snapshot is made before serving and no background
    // compilation runs threads of its own while the threads are counted.
    let threads_after_a_request = |threads: &str| {
        let server = Serving::start(&qa_guest(), &[("QA_INFERENCE_THREADS", threads), ("QA_PRELOAD", "nlp1")]);
        assert_eq!(server.post(benz_request().to_string()).1["Answer"], "1886");
        server.proc_status("Threads")
    };
    let (one, eight) = (threads_after_a_request("1"), threads_after_a_request("8"));
    // ONNX Runtime's intra-op pool of 8 runs 7 threads beside the caller, a pool of 1 none;
    // tokio's blocking threads come and go by a thread or two.
    assert!(eight >= one + 5, "QA_INFERENCE_THREADS=1: {one} threads, =8: {eight}");
}

/// The header timeout also runs from a previous response: a kept-alive connection that sends
/// nothing after its first answer is closed once `QA_SERVE_HEADER_TIMEOUT_MS` has passed.
#[test]
fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let header_timeout = Duration::from_secs(2);
    let server = Serving::start(&misbehaving_guest(), &[("QA_SERVE_HEADER_TIMEOUT_MS", "2000")]);
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    let json = body("hello");
    let request =
        format!("POST / HTTP/1.1\r\nHost: idle\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}", json.len(), json);
    stream.write_all(request.as_bytes()).unwrap();
    let response = read_response(&mut stream, Duration::from_secs(30));
    let answered = Instant::now();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Then nothing, then the end of the stream.
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut received = Vec::new();
    let result = stream.read_to_end(&mut received);
    let open_for = answered.elapsed();
    let text = String::from_utf8_lossy(&received);
    assert!(result.is_ok(), "the server closed the idle connection (read: {result:?}); got {text}");
    assert!(received.is_empty(), "one response, then the close: {text}");
    // The timeout runs from the response, which the server sent a little before this test read
    // it: half the timeout is the slack for that, and a close at once still fails.
    assert!(
        open_for >= header_timeout / 2 && open_for < header_timeout + LATE,
        "the idle connection was closed {open_for:?} after its response, for a {header_timeout:?} header timeout"
    );
    check_raw("POST", "/", &response);
}

/// Outside Lambda, with no log settings, the log is text at `warn`: start-up's info lines are
/// not written, a refused request's warning is, as text.
#[test]
fn outside_lambda_logs_are_text_at_warn_by_default() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_qa-host"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ORT_DYLIB_PATH", onnxruntime())
        .env("QA_GUEST", qa_guest())
        .env("QA_MODELS_DIR", models_dir())
        .env("QA_CACHE_DIR", workspace().join("target/qa-cache"))
        .args(["serve", "--addr", "127.0.0.1:0"]);
    let server = Serving::run(command);
    let process = &server.process;
    assert_eq!(server.post(body(" ")).0, 400);
    let refused = process.wait_for_log("request failed", Duration::from_secs(10));
    assert!(serde_json::from_str::<serde_json::Value>(&refused).is_err() && refused.contains("WARN"), "a text warning: {refused}");
    assert!(!process.logged("guest ready") && !process.logged(" INFO "), "no info lines at warn: {:#?}", process.lines());
}
