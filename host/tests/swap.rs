//! The guest is swapped under a running `qa-host serve`, without a restart: a broken new
//! guest is rejected while the old one keeps serving, and a different guest build (the
//! misbehaving fixture guest, which answers with the whole context) takes over after the TTL.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// Replaces `path` atomically, as a deployment tool would (write beside, then rename).
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_new_guest_is_picked_up_after_the_ttl_and_a_broken_one_is_rejected() {
    let deploy = tempfile::tempdir().unwrap();
    let wasm = deploy.path().join("qa-guest.wasm");
    std::fs::copy(qa_guest(), &wasm).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_qa-host"));
    command
        .env("ORT_DYLIB_PATH", onnxruntime())
        .env("QA_GUEST", &wasm)
        .env("QA_GUEST_TTL_SECS", "1")
        .env("QA_MODELS_DIR", models_dir())
        .env("QA_CACHE_DIR", deploy.path().join("cache"))
        .env("QA_LOG", "info")
        .args(["serve", "--addr", "127.0.0.1:0"]);
    let host = Spawned::start(command);
    let line = host.wait_for_log("qa-host: listening on ", Duration::from_secs(120));
    let base = line.trim_start_matches("qa-host: listening on ").trim().to_string();
    let ask = || json_body(http().post(&format!("{base}/")).send(benz_request().to_string()).unwrap());

    assert_eq!(ask().1["Answer"], "1886");

    // A broken guest: rejected, and the old one keeps answering.
    replace(&wasm, b"\0asm this is not a component");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(ask().1["Answer"], "1886");
    host.wait_for_log("new guest rejected", Duration::from_secs(60));
    assert_eq!(ask().1["Answer"], "1886", "the previous guest still serves");

    // A different guest build: swapped in with no restart; the next requests show it.
    replace(&wasm, &std::fs::read(misbehaving_guest()).unwrap());
    std::thread::sleep(Duration::from_millis(1100));
    ask();
    host.wait_for_log("guest swapped", Duration::from_secs(120));
    let (status, body) = ask();
    // The fixture guest answers with the whole context, which the real guest never does.
    assert_eq!((status, &body["Answer"]), (200, &benz_request()["context"]), "{body}");
}
