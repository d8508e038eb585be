//! The guest is swapped under a running `qa-host serve`, without a restart: a new guest that
//! does not compile, link or fit its memory cap is rejected while the old one keeps serving; a
//! request running during a swap finishes on its guest; and a different guest build (the
//! misbehaving fixture guest, which answers with the whole context) takes over after the TTL.

mod common;

use common::*;
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
    let cache = deploy.path().join("cache").into_os_string();
    let server = Serving::start(&wasm, &[("QA_GUEST_TTL_SECS", "1".into()), ("QA_CACHE_DIR", cache)]);
    let (host, base) = (&server.process, &server.base);
    let ask = || api_json("POST", "/", http().post(&format!("{base}/")).send(benz_request().to_string()).unwrap());

    assert_eq!(ask().1["Answer"], "1886");

    // A broken guest: rejected, and the old one keeps answering.
    replace(&wasm, b"\0asm this is not a component");
    let_the_ttl_pass();
    assert_eq!(ask().1["Answer"], "1886");
    host.wait_for_log("new guest rejected", Duration::from_secs(60));
    assert_eq!(ask().1["Answer"], "1886", "the previous guest still serves");

    // A different guest build: swapped in with no restart; the next requests show it.
    replace(&wasm, &std::fs::read(misbehaving_guest()).unwrap());
    let_the_ttl_pass();
    ask();
    host.wait_for_log("guest swapped", Duration::from_secs(120));
    let (status, body) = ask();
    // The fixture guest answers with the whole context, which the real guest never does.
    assert_eq!((status, &body["Answer"]), (200, &benz_request()["context"]), "{body}");
    let fixture_answers = |body: &serde_json::Value| body["Answer"] == benz_request()["context"];

    // New guests that parse but cannot run: one that fails to link (it imports an interface
    // this host does not provide; written in the WebAssembly text format),
    // and one that cannot be instantiated (its memory starts at 1 GiB, over the per-instance
    // cap: refused when it is loaded, before any request could start it). Each is rejected,
    // naming why, and the guest before it keeps serving.
    let unlinkable = r#"(component
        (import "example:unknown/thing" (instance (export "call" (func))))
        (instance $empty)
        (export "qa:extractive/qa@0.3.0" (instance $empty)))"#;
    let cases = [
        ("unlinkable", wat::parse_str(unlinkable).unwrap(), "example:unknown/thing"),
        ("oversized", std::fs::read(oversized_guest()).unwrap(), "memory has a minimum byte size"),
    ];
    for (what, bytes, reason) in cases {
        let rejected_before = host.count("new guest rejected");
        replace(&wasm, &bytes);
        let_the_ttl_pass();
        ask();
        wait_until(&format!("the {what} guest to be rejected"), Duration::from_secs(120), || {
            host.count("new guest rejected") > rejected_before
        });
        let (status, body) = ask();
        assert!(status == 200 && fixture_answers(&body), "{what}: the previous guest still serves: {body}");
        let rejected = host.lines().into_iter().rfind(|l| l.contains("new guest rejected")).unwrap();
        assert!(rejected.contains(reason), "{what}: {rejected}");
    }

    // A request running when the guest is swapped finishes on the guest it started with.
    let swapped_before = host.count("guest swapped");
    std::thread::scope(|scope| {
        let calls = server.guest_calls();
        let in_flight = scope.spawn(|| {
            let mut request = benz_request();
            request["question"] = serde_json::json!("sleep:6");
            api_json("POST", "/", http().post(&format!("{base}/")).send(request.to_string()).unwrap())
        });
        server.wait_for_guest_calls(calls, 1); // asleep in the fixture guest
        replace(&wasm, &std::fs::read(qa_guest()).unwrap());
        let_the_ttl_pass();
        ask();
        wait_until("the QA guest to be swapped in", Duration::from_secs(120), || host.count("guest swapped") > swapped_before);
        assert_eq!(ask().1["Answer"], "1886", "new requests get the new guest");
        let (status, body) = in_flight.join().unwrap();
        // Only the fixture guest answers "sleep:" with this probe, after sleeping.
        assert_eq!((status, body["error"]["message"].as_str().unwrap_or_default()), (500, "inference failed: probe: woke up"), "{body}");
    });
}
