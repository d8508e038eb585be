//! Property tests of the host boundary (issue 35): arbitrary sequences of every wasi-nn import
//! (tensors of any rank and size, their getters and drops, graphs loaded by any name, contexts,
//! `compute` with any inputs and input names, graph builders, error codes and texts) and of
//! the QA contract's lifts (answers whose texts all alias one buffer, error messages of any
//! size), run by the misbehaving guest's `script:` mode in the real host with the real model.
//!
//! After each script the request's accountant (its `guest request accounted` line) must show:
//! the host never held more than the request's budget; it held at least the tensor bytes and
//! dimension lists the guest says it made it hold (the accountant is not blind to them); no
//! host call took longer than [`CALL_BOUND`]; and the request ended by its deadline plus
//! [`LATE`]. Every outcome is an answer or one of the errors a guest may cause, and the host
//! serves a normal request afterwards.
//!
//! Case count: 48, or `PROPTEST_CASES`. A failing case is saved to
//! `host/tests/boundary.proptest-regressions` and replayed first on every later run.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use qa_host::api::QaRequest;
use qa_host::service::QaService;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::instrument::WithSubscriber;

/// The request's host budget: small, so that scripts pass it often.
const BUDGET_MB: u64 = 8;
const DEADLINE: Duration = Duration::from_secs(5);
/// How late past its deadline a request may end on a loaded 2-core machine.
const LATE: Duration = Duration::from_secs(2);
/// The longest one host call may take (its own work: an inference run is not counted). The
/// largest copy a call can make is the budget, a few milliseconds; this leaves room for a
/// loaded machine.
const CALL_BOUND: Duration = Duration::from_millis(250);

/// Sizes from empty to 12 MiB, mostly small.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..64, 3 => 64usize..8192, 2 => (1usize..=12).prop_map(|mib| mib << 20)]
}

fn op() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop_oneof![9 => 0usize..=8, 1 => 9usize..=12], size()).prop_map(|(rank, bytes)| format!("t{rank}:{bytes}")),
        2 => Just("g".to_string()),
        2 => size().prop_map(|len| format!("l{len}")),
        3 => (0usize..=20, prop_oneof![Just(0usize), 1usize..600, Just(300_000)]).prop_map(|(k, len)| format!("c{k}:{len}")),
        1 => (1u32..=2, 1u32..=16).prop_map(|(rows, cols)| format!("r{rows}x{cols}")),
        3 => (prop::sample::select(vec!["d", "s", "y", "x", "e", "k", "f"]), 0usize..64).prop_map(|(letter, i)| format!("{letter}{i}")),
        1 => (0usize..100_000, size()).prop_map(|(count, bytes)| format!("b{count}:{bytes}")),
    ]
}

/// A script: some operations, then maybe an ending that lifts answers or an error.
fn script() -> impl Strategy<Value = String> {
    let ending = prop_oneof![
        2 => Just(String::new()),
        1 => (0usize..4000, size()).prop_map(|(count, bytes)| format!(" a{count}:{bytes}")),
        1 => size().prop_map(|bytes| format!(" z{bytes}")),
    ];
    (prop::collection::vec(op(), 0..24), ending).prop_map(|(ops, ending)| format!("script:{}{ending}", ops.join(" ")))
}

/// A field of the accountant's line (`name=value`).
fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// Runs one script and checks the accountant's invariants.
async fn check(service: &Arc<QaService>, log: &LogCapture, dispatch: &tracing::Dispatch, question: &str) -> Result<(), TestCaseError> {
    let before = log.count("guest request accounted");
    let started = Instant::now();
    let outcome = service.answer(QaRequest::new(question, "ok")).with_subscriber(dispatch.clone()).await;
    let took = started.elapsed();
    prop_assert!(took < DEADLINE + LATE, "the request ended after {took:?}");
    let outcome = outcome.map(|r| r.body.answer).map_err(|e| (e.code(), e.to_string()));
    if let Err((code, message)) = &outcome {
        prop_assert!(["guest_failed", "inference_failed", "guest_timeout", "invalid_input"].contains(code), "{code}: {message}");
    }
    let lines = log.lines("guest request accounted");
    prop_assert_eq!(lines.len(), before + 1, "one accounted request");
    let line = &lines[before];
    let (peak, budget, longest_us) = (field(line, "peak_bytes"), field(line, "budget_bytes"), field(line, "longest_call_us"));
    prop_assert_eq!(budget, BUDGET_MB << 20);
    prop_assert!(peak <= budget, "held {peak} bytes, over the budget of {budget}");
    prop_assert!(Duration::from_micros(longest_us) < CALL_BOUND, "a host call took {longest_us} µs");
    // The guest's own count of the tensor data and dimension lists it made the host hold.
    if let Err((_, message)) = &outcome
        && let Some(most) = message.rsplit("most tensor bytes held ").next().and_then(|n| n.parse::<u64>().ok())
    {
        prop_assert!(peak >= most, "the guest made the host hold {most} bytes of tensors; the accountant saw a peak of {peak}");
    }
    Ok(())
}

#[test]
fn every_import_and_lift_stays_within_the_request_s_budget_and_time() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let service = runtime.block_on(async {
        let mut config = config(misbehaving_guest(), models_dir());
        config.guest_deadline = DEADLINE;
        config.guest_nn.max_host_bytes = BUDGET_MB << 20;
        service(&config).await
    });
    let (log, dispatch) = LogCapture::new();
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(48);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::SourceParallel("proptest-regressions"))),
        source_file: Some(file!()),
        ..Config::default()
    });
    runner.run(&script(), |question| runtime.block_on(check(&service, &log, &dispatch, &question))).unwrap();
    // Scripts that never pass the budget, to be sure the invariants are also checked on
    // requests that succeed.
    for question in ["script:t2:1000 t1:5000 g c2:0 d0 s1 x0", "script:g r1x8 l300 e0 k0 f0", "script:t8:3 a3:5"] {
        runtime.block_on(check(&service, &log, &dispatch, question)).unwrap_or_else(|e| panic!("{question}: {e}"));
    }
    let hello = runtime.block_on(service.answer(QaRequest::new("hello", "ok"))).expect("the host still serves");
    assert_eq!(hello.answer, "ok");
}
