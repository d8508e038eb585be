//! Model storage through the real parts: an S3-compatible server (moto's server mode) on
//! loopback with `qa-host serve` fetching through aws-sdk-s3, and EFS as a directory tree.
//! Each test runs its own server and host process, so environments never mix.

mod common;

use common::s3::*;
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// `qa-host serve` (the real guest) with models in S3 reached with test credentials; its log
/// is kept for assertions.
struct Host {
    process: Spawned,
    base: String,
}

impl Host {
    fn start(env: &[(&str, String)]) -> Self {
        Self::start_with_guest(&qa_guest(), env)
    }

    fn start_with_guest(guest: &Path, env: &[(&str, String)]) -> Self {
        let mut all: Vec<(&str, String)> = TEST_CREDENTIALS.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        all.extend(env.iter().cloned());
        let Serving { process, base } = Serving::start(guest, &all);
        Host { process, base }
    }

    fn ask(&self, model: &str) -> (u16, Value) {
        let mut body = benz_request();
        body["model_type"] = json!(model);
        api_json("POST", "/", http().post(&format!("{}/", self.base)).send(body.to_string()).expect("HTTP round trip"))
    }
}

fn cached_versions(cache: &Path, model: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.join(model))
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether a partial download of `model` has started writing its `model.onnx`.
fn downloading_model_onnx(cache: &Path, model: &str) -> bool {
    cached_versions(cache, model).iter().any(|d| d.starts_with(".partial-") && cache.join(model).join(d).join("model.onnx").exists())
}

/// Bytes a partial download of `model` has written into its `model.onnx` (the file is made at
/// its full length first, so this counts the blocks it holds).
fn downloaded_bytes(cache: &Path, model: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    cached_versions(cache, model)
        .iter()
        .filter(|d| d.starts_with(".partial-"))
        .filter_map(|d| std::fs::metadata(cache.join(model).join(d).join("model.onnx")).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn cold_fetch_then_warm_reuse_then_a_replaced_object_is_picked_up_after_the_ttl() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "qa/s3nlp/", &models_dir().join("nlp1"));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(s3.port, cache.path(), "s3nlp=s3://models/qa/s3nlp/");
    env.push(("QA_MODEL_TTL_SECS", "1".into()));
    let host = Host::start(&env);

    let (status, first) = host.ask("s3nlp");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["Answer"], "1886");
    log_barrier(&host.process, &host.base);
    assert_eq!(host.process.count("fetched from S3"), 1);
    let versions = cached_versions(cache.path(), "s3nlp");
    assert_eq!(versions, [first["model_version"].as_str().unwrap()], "one complete version, no partial left");

    // Warm, and past the TTL with nothing changed: no second download, same version.
    let_the_ttl_pass();
    let (_, second) = host.ask("s3nlp");
    assert_eq!(second["model_version"], first["model_version"]);
    log_barrier(&host.process, &host.base);
    assert_eq!(host.process.count("fetched from S3"), 1, "warm reuse downloads nothing");
    assert_eq!(host.process.count("model loaded"), 1);

    // Replace one object: after the TTL the new version is fetched, loaded and answers.
    let mut config: Value = serde_json::from_slice(&std::fs::read(models_dir().join("nlp1/config.json")).unwrap()).unwrap();
    config["note"] = json!("replaced");
    s3.put("models", "qa/s3nlp/config.json", config.to_string().as_bytes());
    let_the_ttl_pass();
    // Past the TTL the loaded version answers at once while the source is re-checked behind it.
    let (status, stale) = host.ask("s3nlp");
    assert_eq!((status, &stale["model_version"]), (200, &first["model_version"]), "{stale}");
    wait_until("the new version to serve", Duration::from_secs(60), || host.process.count("model serving") == 2);
    let (status, third) = host.ask("s3nlp");
    assert_eq!(status, 200, "{third}");
    assert_ne!(third["model_version"], first["model_version"], "the replaced object was picked up");
    assert_eq!(third["Answer"], "1886");
    assert_eq!(host.process.count("fetched from S3"), 2);
    assert_eq!(cached_versions(cache.path(), "s3nlp"), [third["model_version"].as_str().unwrap()], "the old version was removed");
}

/// A request still running on a model version when a new one replaces it finishes on the old
/// version's files; they are removed once it is done. The misbehaving guest's `read-after`
/// reads its model's tokenizer after a wait.
#[test]
fn a_replaced_version_stays_until_the_requests_on_it_finish() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "r/", &models_dir().join("nlp1"));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(s3.port, cache.path(), "s3r=s3://models/r/");
    env.push(("QA_MODEL_TTL_SECS", "1".into()));
    let host = Host::start_with_guest(&misbehaving_guest(), &env);
    let ask = |question: &str| {
        let body = json!({"model_type": "s3r", "question": question, "context": "ok"});
        api_json("POST", "/", http().post(&format!("{}/", host.base)).send(body.to_string()).expect("HTTP round trip"))
    };
    let (status, first) = ask("hello");
    assert_eq!(status, 200, "{first}");
    let old = first["model_version"].as_str().unwrap().to_string();

    std::thread::scope(|scope| {
        let calls = host.process.count(GUEST_STARTED);
        // Long enough for the replacement to be fetched, loaded and serving before it reads,
        // on a loaded machine too (with 4 s it once finished before the checks below).
        let slow = scope.spawn(|| ask("read-after:15"));
        host.process.wait_for_count(GUEST_STARTED, calls + 1, Duration::from_secs(60)); // running on the old version
        s3.put("models", "r/config.json", br#"{"note": "replaced"}"#.as_slice());
        let_the_ttl_pass();
        ask("hello"); // past the TTL: starts the re-check
        wait_until("the new version to serve", Duration::from_secs(60), || host.process.count("model serving") == 2);
        let (_, fresh) = ask("hello");
        assert_ne!(fresh["model_version"].as_str(), Some(old.as_str()), "{fresh}");
        assert!(!slow.is_finished(), "the slow request is still on the old version (else the next check proves nothing)");
        assert!(cached_versions(cache.path(), "s3r").contains(&old), "the old version's files stay while a request uses them");
        let (_, finding) = slow.join().unwrap();
        let message = finding["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.ends_with(&format!("read {} bytes", std::fs::metadata(models_dir().join("nlp1/tokenizer.json")).unwrap().len())),
            "{finding}"
        );
    });
    wait_until("the old version to be removed", Duration::from_secs(10), || !cached_versions(cache.path(), "s3r").contains(&old));
    assert_eq!(cached_versions(cache.path(), "s3r").len(), 1);
}

#[test]
fn a_missing_object_is_404_and_a_corrupt_one_is_rejected_and_not_cached() {
    let s3 = S3::start();
    s3.create_bucket("models");
    let nlp1 = models_dir().join("nlp1");
    s3.put("models", "partial/model.onnx", &std::fs::read(nlp1.join("model.onnx")).unwrap());
    s3.put("models", "partial/config.json", &std::fs::read(nlp1.join("config.json")).unwrap());
    s3.upload_model("models", "pinned/", &nlp1);
    let manifest_file = tempfile::NamedTempFile::new().unwrap();
    let wrong = "0".repeat(64);
    std::fs::write(manifest_file.path(), json!({"pinned": {"source": "s3://models/pinned/", "sha256": {"model.onnx": wrong}}}).to_string())
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(s3.port, cache.path(), "partial=s3://models/partial/,nobucket=s3://no-such-bucket/x/");
    env.push(("QA_MODELS_FILE", manifest_file.path().display().to_string()));
    let host = Host::start(&env);

    let (status, body) = host.ask("partial");
    assert_eq!((status, &body["error"]["code"]), (404, &json!("model_not_found")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("s3://models/partial/tokenizer.json"), "{body}");

    let (status, body) = host.ask("nobucket");
    assert_eq!((status, &body["error"]["code"]), (404, &json!("model_not_found")), "{body}");

    for _ in 0..2 {
        let (status, body) = host.ask("pinned");
        assert_eq!((status, &body["error"]["code"]), (503, &json!("model_corrupt")), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("SHA-256"), "{body}");
        assert!(cached_versions(cache.path(), "pinned").is_empty(), "nothing cached, no partial left");
    }
    let (status, body) = host.ask("nlp1");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "the image model still answers");
}

#[test]
fn bytes_that_do_not_match_the_etag_md5_are_model_corrupt_and_not_cached() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "flipped/", &models_dir().join("nlp1"));
    let proxy = FaultProxy::start(s3.port, "model.onnx");
    let cache = tempfile::tempdir().unwrap();
    let host = Host::start(&s3_env(proxy.port, cache.path(), "flipped=s3://models/flipped/"));
    proxy.set(Fault::FlipByte);
    let (status, body) = host.ask("flipped");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_corrupt")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("s3://models/flipped/model.onnx") && message.contains("does not match the ETag"), "{message}");
    assert!(proxy.faulted() > 0, "the download went through the flipping proxy");
    assert!(cached_versions(cache.path(), "flipped").is_empty(), "nothing cached, no partial left");
    proxy.set(Fault::Pass);
    let (status, body) = host.ask("flipped");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "a good download afterwards: {body}");
}

#[test]
fn a_stopped_server_is_503_after_retries_and_other_models_keep_serving() {
    let mut s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "a/", &models_dir().join("nlp1"));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(s3.port, cache.path(), "s3a=s3://models/a/,s3b=s3://models/a/");
    env.push(("QA_MODEL_TTL_SECS", "1".into()));
    let host = Host::start(&env);
    assert_eq!(host.ask("s3a").1["Answer"], "1886");

    s3.process.stop();
    let (status, body) = host.ask("s3b");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_unavailable")), "{body}");
    // The loaded model keeps serving past its TTL while the server is down, and so does the image.
    let_the_ttl_pass();
    assert_eq!(host.ask("s3a").1["Answer"], "1886");
    assert_eq!(host.ask("nlp1").1["Answer"], "1886");

    // After recovery, the model that failed loads.
    let s3 = S3::start_on(s3.port);
    s3.create_bucket("models");
    s3.upload_model("models", "a/", &models_dir().join("nlp1"));
    let (status, body) = host.ask("s3b");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
}

#[test]
fn concurrent_first_requests_download_once() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "c/", &models_dir().join("nlp1"));
    let cache = tempfile::tempdir().unwrap();
    let host = Host::start(&s3_env(s3.port, cache.path(), "s3c=s3://models/c/"));
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| host.ask("s3c"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body) in answers {
        assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    }
    log_barrier(&host.process, &host.base);
    assert_eq!(host.process.count("fetched from S3"), 1);
    assert_eq!(host.process.count("model loaded"), 1);
}

#[test]
fn efs_models_are_read_in_place_reloaded_when_changed_and_missing_ones_are_named() {
    let efs = tempfile::tempdir().unwrap();
    let dir = efs.path().join("models/nlp2");
    link_model(&models_dir().join("nlp1"), &dir);
    let models = format!("efsnlp=efs:{},gone=efs:{}", dir.display(), efs.path().join("models/absent").display());
    let host = Host::start(&[("QA_MODELS", models), ("QA_MODEL_TTL_SECS", "1".into())]);

    let (status, first) = host.ask("efsnlp");
    assert_eq!((status, &first["Answer"]), (200, &json!("1886")), "{first}");

    // Replace config.json (a new file, as a deployment would write it).
    let_the_ttl_pass();
    let config = std::fs::read(dir.join("config.json")).unwrap();
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let (_, stale) = host.ask("efsnlp");
    assert_eq!(stale["model_version"], first["model_version"], "the loaded version answers while the re-check runs");
    wait_until("the new version to serve", Duration::from_secs(60), || host.process.count("model serving") == 2);
    let (_, second) = host.ask("efsnlp");
    assert_ne!(second["model_version"], first["model_version"]);

    let (status, body) = host.ask("gone");
    assert_eq!((status, &body["error"]["code"]), (404, &json!("model_not_found")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not exist") && !message.contains("models/absent"), "no host path reaches the client: {body}");
    wait_until("the log to name the path", Duration::from_secs(5), || host.process.logged("models/absent"));
}

/// Image models ship with the code: an `image:` manifest entry is served, and its files are
/// never re-checked, however long ago the TTL passed.
#[test]
fn an_image_entry_is_served_and_image_models_are_never_rechecked() {
    let image = tempfile::tempdir().unwrap();
    let dir = image.path().join("pinned");
    link_model(&models_dir().join("nlp1"), &dir);
    let host = Host::start(&[("QA_MODELS", format!("pinned=image:{}", dir.display())), ("QA_MODEL_TTL_SECS", "1".into())]);
    let (status, first) = host.ask("pinned");
    assert_eq!((status, &first["Answer"]), (200, &json!("1886")), "{first}");

    // Requests start from the snapshot (the tokenizer parsed into it); then a file goes away.
    // A re-check would find the model incomplete and say so in the log.
    host.process.wait_for_log("guest prepared for model", Duration::from_secs(120));
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    for _ in 0..3 {
        let_the_ttl_pass();
        let (status, again) = host.ask("pinned");
        assert_eq!((status, &again["model_version"]), (200, &first["model_version"]), "{again}");
    }
    log_barrier(&host.process, &host.base);
    assert!(!host.process.logged("re-check"), "never re-checked: {:#?}", host.process.lines());
    assert_eq!(host.process.count("model loaded"), 1);
}

/// With nothing shipped or cached, a model loaded on demand is answered at once on
/// unprepared instances while its snapshot compiles in the background; a new version of its
/// files gets a snapshot of its own, never the old version's.
#[test]
fn an_unsnapshotted_model_is_served_at_once_and_a_new_version_gets_its_own_snapshot() {
    let efs = tempfile::tempdir().unwrap();
    let dir = efs.path().join("models/nlp2");
    link_model(&models_dir().join("nlp1"), &dir);
    let cache = tempfile::tempdir().unwrap();
    let host = Host::start(&[
        ("QA_MODELS", format!("efsnlp=efs:{}", dir.display())),
        ("QA_MODEL_TTL_SECS", "1".into()),
        ("QA_CACHE_DIR", cache.path().display().to_string()),
    ]);
    let (status, first) = host.ask("efsnlp");
    assert_eq!((status, &first["Answer"]), (200, &json!("1886")), "{first}");
    log_barrier(&host.process, &host.base);
    assert!(!host.process.logged("guest prepared for model"), "answered before its snapshot was made");
    wait_until("the background snapshot", Duration::from_secs(180), || host.process.count("guest prepared for model") == 1);

    let_the_ttl_pass();
    let mut config: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    config["note"] = json!("a new version");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    host.ask("efsnlp");
    wait_until("the new version to serve", Duration::from_secs(60), || host.process.count("model serving") == 2);
    wait_until("the new version's snapshot", Duration::from_secs(180), || host.process.count("guest prepared for model") == 2);
    let prepared: Vec<String> = host.process.lines().into_iter().filter(|l| l.contains("guest prepared for model")).collect();
    assert!(prepared.iter().all(|l| l.contains("Compiled")), "each version's snapshot was made for its files: {prepared:#?}");
    let (status, second) = host.ask("efsnlp");
    assert_eq!((status, &second["Answer"]), (200, &json!("1886")), "{second}");
    assert_ne!(second["model_version"], first["model_version"]);
}

#[test]
fn a_model_that_would_not_fit_in_the_cache_is_refused_before_downloading() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "big/", &models_dir().join("nlp1"));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(s3.port, cache.path(), "big=s3://models/big/");
    // Keep more free than any disk has: the download can never fit.
    env.push(("QA_TMP_RESERVE_MB", (1u64 << 40).to_string()));
    let host = Host::start(&env);
    let (status, body) = host.ask("big");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_unavailable")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    let needed: u64 = ["model.onnx", "tokenizer.json", "config.json"]
        .iter()
        .map(|f| std::fs::metadata(models_dir().join("nlp1").join(f)).unwrap().len())
        .sum();
    assert!(message.contains(&format!("needs {} MiB", needed.div_ceil(1 << 20))) && message.contains("ephemeral storage"), "{message}");
    assert!(cached_versions(cache.path(), "big").is_empty(), "nothing was written");
    log_barrier(&host.process, &host.base);
    assert!(!host.process.logged("fetched from S3"));
}

#[test]
fn a_guest_in_s3_is_fetched_at_start_and_a_new_one_is_swapped_in_after_the_ttl() {
    let s3 = S3::start();
    s3.create_bucket("guests");
    s3.put("guests", "qa/qa-guest.wasm", &std::fs::read(qa_guest()).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(s3.port, cache.path(), "");
    env.push(("QA_GUEST", "s3://guests/qa/qa-guest.wasm".into()));
    env.push(("QA_GUEST_TTL_SECS", "1".into()));
    env.push(("QA_CACHE_DIR", cache.path().join("compiled").display().to_string()));
    let host = Host::start(&env);
    assert_eq!(host.ask("nlp1").1["Answer"], "1886");

    // A new guest build uploaded over the old one: fetched, compiled and swapped in.
    s3.put("guests", "qa/qa-guest.wasm", &std::fs::read(misbehaving_guest()).unwrap());
    let_the_ttl_pass();
    host.ask("nlp1");
    host.process.wait_for_log("guest swapped", Duration::from_secs(120));
    let (status, body) = host.ask("nlp1");
    // The fixture guest answers with the whole context, which the real guest never does.
    assert_eq!((status, &body["Answer"]), (200, &benz_request()["context"]), "{body}");

    // An object that is not a guest (a truncated upload, say) is rejected; the guest it would
    // have replaced keeps serving.
    let wasm = std::fs::read(qa_guest()).unwrap();
    s3.put("guests", "qa/qa-guest.wasm", &wasm[..wasm.len() / 2]);
    let_the_ttl_pass();
    host.ask("nlp1");
    host.process.wait_for_log("new guest rejected", Duration::from_secs(120));
    let (status, body) = host.ask("nlp1");
    assert_eq!((status, &body["Answer"]), (200, &benz_request()["context"]), "the previous guest serves: {body}");
}

/// A candidate guest in S3 is fetched at start like `QA_GUEST` and answers its canary share.
#[test]
fn a_candidate_guest_in_s3_answers_its_canary_share() {
    let s3 = S3::start();
    s3.create_bucket("guests");
    s3.put("guests", "qa/candidate.wasm", &std::fs::read(misbehaving_guest()).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(s3.port, cache.path(), "");
    env.push(("QA_GUEST_CANARY", "s3://guests/qa/candidate.wasm".into()));
    env.push(("QA_GUEST_CANARY_PERCENT", "100".into()));
    let host = Host::start(&env);
    let (status, body) = host.ask("nlp1");
    assert_eq!((status, &body["guest_version"]), (200, &json!(guest_version(&misbehaving_guest()))), "{body}");
    assert_eq!(body["Answer"], benz_request()["context"], "the candidate answered: {body}");
}

/// The lines of the host's log that say how a file of `model` was verified.
fn verification_lines(host: &Host, model: &str, file: &str) -> Vec<String> {
    log_barrier(&host.process, &host.base);
    host.process
        .lines()
        .into_iter()
        .filter(|l| l.contains("download verified") && l.contains(&format!("model={model} ")) && l.contains(&format!("file={file}")))
        .collect()
}

/// What real S3 gives a model in an SSE-KMS bucket: ETags that are not the content's MD5 (the
/// proxy rewrites moto's as S3 makes them) and the SHA-256 the uploader sent, stored. The
/// model is verified by that checksum, over the assembled file, instead of being refused for
/// its ETag; a flipped byte is still `model_corrupt`.
#[test]
fn an_sse_kms_object_is_verified_by_the_checksum_s3_stored_not_its_etag_and_a_flipped_byte_is_corrupt() {
    use aws_sdk_s3::types::{ChecksumAlgorithm, ServerSideEncryption};
    let s3 = S3::start();
    s3.create_bucket("models");
    for file in ["model.onnx", "tokenizer.json", "config.json"] {
        let bytes = std::fs::read(models_dir().join("nlp1").join(file)).unwrap();
        s3.put_with("models", &format!("kms/{file}"), &bytes, |put| {
            put.server_side_encryption(ServerSideEncryption::AwsKms).checksum_algorithm(ChecksumAlgorithm::Sha256)
        });
    }
    let head = s3.head("models", "kms/model.onnx");
    assert_eq!(head.server_side_encryption(), Some(&ServerSideEncryption::AwsKms), "the server keeps the encryption");
    assert!(head.checksum_sha256().is_some(), "the server stored the SHA-256: {head:?}");
    let proxy = FaultProxy::start(s3.port, "model.onnx");
    proxy.rewrite_etags_as_sse_kms();
    let cache = tempfile::tempdir().unwrap();
    let host = Host::start(&s3_env(proxy.port, cache.path(), "kms=s3://models/kms/"));

    proxy.set(Fault::FlipByte);
    let (status, body) = host.ask("kms");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_corrupt")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("kms/model.onnx") && message.contains("SHA256") && message.contains("the checksum S3 stored"), "{message}");
    assert!(cached_versions(cache.path(), "kms").is_empty(), "nothing cached, no partial left");

    proxy.set(Fault::Pass);
    let (status, body) = host.ask("kms");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "an SSE-KMS model is served: {body}");
    let verified = verification_lines(&host, "kms", "model.onnx");
    assert!(verified.len() == 1 && verified[0].contains("S3's stored SHA256"), "{verified:#?}");
}

/// `aws s3 cp` uploads a model above 8 MB in parts: its ETag is no MD5, and S3 stores the
/// whole object's CRC64NVME. The download (in ranged parts of its own) is checked against that
/// over the assembled file; a flipped byte is `model_corrupt`. moto computes the stored value
/// itself (ignoring the one sent at completion) and needs `awscrt` beside it for CRC64NVME.
#[test]
fn a_multipart_upload_is_verified_by_its_full_object_crc64nvme_and_a_flipped_byte_is_corrupt() {
    let s3 = S3::start();
    s3.create_bucket("models");
    let nlp1 = models_dir().join("nlp1");
    let model = std::fs::read(nlp1.join("model.onnx")).unwrap();
    let whole = s3.put_multipart("models", "mp/model.onnx", &model, 5 << 20, true);
    for file in ["tokenizer.json", "config.json"] {
        s3.put("models", &format!("mp/{file}"), &std::fs::read(nlp1.join(file)).unwrap());
    }
    let head = s3.head("models", "mp/model.onnx");
    assert!(head.e_tag().unwrap_or_default().ends_with(&format!("-{}\"", model.len().div_ceil(5 << 20))), "multipart: {head:?}");
    assert_eq!(
        head.checksum_crc64_nvme(),
        Some(whole.as_str()),
        "the server must store the whole object's CRC64NVME (moto computes it only with awscrt installed beside it: scripts/test.sh installs it)"
    );
    let proxy = FaultProxy::start(s3.port, "model.onnx");
    let cache = tempfile::tempdir().unwrap();
    let host = Host::start(&s3_env(proxy.port, cache.path(), "mp=s3://models/mp/"));

    proxy.set(Fault::FlipByte);
    let (status, body) = host.ask("mp");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_corrupt")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("mp/model.onnx") && message.contains(&format!("does not match the checksum S3 stored, {whole}")), "{message}");
    assert!(proxy.faulted() > 1, "every part went through the flipping proxy");
    assert!(cached_versions(cache.path(), "mp").is_empty(), "nothing cached, no partial left");

    proxy.set(Fault::Pass);
    let (status, body) = host.ask("mp");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    let verified = verification_lines(&host, "mp", "model.onnx");
    assert!(verified.len() == 1 && verified[0].contains("S3's stored CRC64NVME"), "{verified:#?}");
}

/// A multipart upload by a client that sent no checksum (S3 keeps none; older objects are
/// like this too) has nothing to be checked against but its size: it is served, with a
/// warning that says what to do. Where the manifest pins its SHA-256, a flipped byte is
/// `model_corrupt`.
#[test]
fn an_object_with_no_checksum_is_served_with_a_warning_and_a_pinned_sha256_still_catches_a_flipped_byte() {
    let s3 = S3::start();
    s3.create_bucket("models");
    let nlp1 = models_dir().join("nlp1");
    let model = std::fs::read(nlp1.join("model.onnx")).unwrap();
    for prefix in ["bare", "pinned"] {
        s3.put_multipart("models", &format!("{prefix}/model.onnx"), &model, 8 << 20, false);
        for file in ["tokenizer.json", "config.json"] {
            s3.put("models", &format!("{prefix}/{file}"), &std::fs::read(nlp1.join(file)).unwrap());
        }
    }
    let head = s3.head("models", "bare/model.onnx");
    assert!(head.checksum_crc64_nvme().or(head.checksum_crc32()).or(head.checksum_sha256()).is_none(), "no checksum stored: {head:?}");
    assert!(head.e_tag().unwrap_or_default().contains('-'), "multipart: {head:?}");
    let manifest_file = tempfile::NamedTempFile::new().unwrap();
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&model));
    std::fs::write(
        manifest_file.path(),
        json!({"pinned": {"source": "s3://models/pinned/", "sha256": {"model.onnx": sha256}}}).to_string(),
    )
    .unwrap();
    let proxy = FaultProxy::start(s3.port, "model.onnx");
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(proxy.port, cache.path(), "bare=s3://models/bare/");
    env.push(("QA_MODELS_FILE", manifest_file.path().display().to_string()));
    let host = Host::start(&env);

    let (status, body) = host.ask("bare");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    log_barrier(&host.process, &host.base);
    let warned: Vec<String> =
        host.process.lines().into_iter().filter(|l| l.contains("verified by its size only") && l.contains("file=model.onnx")).collect();
    assert_eq!(warned.len(), 1, "{:#?}", host.process.lines());
    for needle in ["WARN", "model=bare", "S3 stored no checksum", "multipart upload is not an MD5", "pin its SHA-256"] {
        assert!(warned[0].contains(needle), "{needle}: {}", warned[0]);
    }

    proxy.set(Fault::FlipByte);
    let (status, body) = host.ask("pinned");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_corrupt")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("does not match the manifest's"), "{body}");
    assert!(cached_versions(cache.path(), "pinned").is_empty(), "nothing cached, no partial left");
    proxy.set(Fault::Pass);
    let (status, body) = host.ask("pinned");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    let verified = verification_lines(&host, "pinned", "model.onnx");
    assert!(verified.len() == 1 && verified[0].contains("the manifest's SHA-256"), "{verified:#?}");
}

/// In a versioned bucket the parts are fetched from the version the listed object is: one
/// replaced while its parts are held is still read whole from that version (no failure,
/// nothing mixed), and the replacement is picked up at the next re-check.
#[test]
fn in_a_versioned_bucket_an_object_replaced_mid_download_is_read_whole_from_the_listed_version() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.enable_versioning("models");
    s3.upload_model("models", "v/", &models_dir().join("nlp1"));
    let original = std::fs::read(models_dir().join("nlp1/model.onnx")).unwrap();
    // The parts only (a GET of the object); the HeadObject before them passes.
    let proxy = FaultProxy::start(s3.port, "model.onnx?x-id=GetObject");
    proxy.set(Fault::StallHeaders(Duration::from_secs(3)));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(proxy.port, cache.path(), "s3v=s3://models/v/");
    env.push(("QA_MODEL_TTL_SECS", "1".into()));
    let host = Host::start(&env);
    // Another model.onnx that ONNX Runtime loads: an unknown protobuf field appended.
    let mut replaced = original.clone();
    replaced.extend_from_slice(&[0xA0, 0x06, 0x01]);
    let (status, body) = std::thread::scope(|scope| {
        let asking = scope.spawn(|| host.ask("s3v"));
        wait_until("a part request held by the proxy", Duration::from_secs(60), || proxy.faulted() >= 1);
        s3.put("models", "v/model.onnx", &replaced);
        asking.join().unwrap()
    });
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    let first = body["model_version"].as_str().unwrap().to_string();
    let published = |version: &str| std::fs::read(cache.path().join("s3v").join(version).join("model.onnx")).unwrap();
    assert!(published(&first) == original, "the listed version, whole");

    proxy.set(Fault::Pass);
    std::thread::sleep(Duration::from_millis(1100));
    host.ask("s3v");
    wait_until("the replacement to serve", Duration::from_secs(60), || host.process.count("model serving") == 2);
    let (status, body) = host.ask("s3v");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    let second = body["model_version"].as_str().unwrap();
    assert_ne!(second, first);
    assert!(published(second) == replaced, "the replacement, whole");
}

/// What the fault proxy does to S3 requests whose request line contains its filter.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Pass,
    /// Forward this many response bytes (headers included), then close the connection.
    CutAfter(usize),
    /// Hold the request this long before forwarding it (no response headers meanwhile).
    StallHeaders(Duration),
    /// Forward the response's first chunk (its headers), then go silent this long and close.
    StallBody(Duration),
    /// Answer this many requests with S3's throttling error instead of forwarding them.
    SlowDown(u32),
    /// Answer with S3's AccessDenied, whose message names the caller's role (as real S3 does).
    Deny,
    /// Forward responses in 16 KiB pieces with this pause after each: a download in flight.
    Trickle(Duration),
    /// Forward the response with the first byte of its body flipped: the right length, the
    /// wrong content (what a faulty disk or network could deliver).
    FlipByte,
}

/// The role an `AccessDenied` from the fault proxy names: an account id and role ARN, which
/// must reach the host's log and never a client.
const DENIED_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/qa-model-reader/i-0abc";

/// A TCP proxy in front of the S3 server that misbehaves on request, one connection per
/// request (it asks the server to close after each response).
struct FaultProxy {
    port: u16,
    fault: Arc<Mutex<Fault>>,
    /// Requests the fault applied to.
    faulted: Arc<std::sync::atomic::AtomicUsize>,
    /// ETags rewritten as S3 gives them to SSE-KMS objects, when on.
    kms_etags: Arc<KmsEtags>,
}

/// Real S3 gives an SSE-KMS object an ETag of 32 hex digits that is not its content's MD5;
/// moto gives the MD5. When on, the proxy replaces every ETag it forwards (headers and
/// listings, every request) with the MD5 of the ETag, and maps `If-Match` back.
#[derive(Default)]
struct KmsEtags {
    on: std::sync::atomic::AtomicBool,
    /// Rewritten ETag → moto's.
    real: Mutex<std::collections::HashMap<String, String>>,
}

impl KmsEtags {
    fn on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `text` with each 32-hex-digit run within a few bytes after "etag" (any case) replaced by
    /// its rewritten form; requests get the reverse, after "if-match".
    fn rewrite(&self, text: &[u8], to_real: bool) -> Vec<u8> {
        let mut out = text.to_vec();
        let lower = text.to_ascii_lowercase();
        let key: &[u8] = if to_real { b"if-match" } else { b"etag" };
        let mut real = self.real.lock().unwrap();
        let mut at = 0;
        while let Some(found) = lower[at..].windows(key.len()).position(|w| w == key) {
            let after = at + found + key.len();
            // `ETag: "`, `<ETag>&quot;`, `If-Match: "`: the digits start within 8 bytes.
            use md5::Digest as _;
            let start =
                (after..(after + 8).min(text.len())).find(|&i| text[i..].len() >= 32 && text[i..i + 32].iter().all(u8::is_ascii_hexdigit));
            if let Some(start) = start {
                let old = String::from_utf8_lossy(&text[start..start + 32]).into_owned();
                let new = if to_real {
                    real.get(&old).cloned().unwrap_or(old)
                } else {
                    let fake = hex::encode(md5::Md5::digest(old.as_bytes()));
                    real.insert(fake.clone(), old);
                    fake
                };
                out[start..start + 32].copy_from_slice(new.as_bytes());
            }
            at = after;
        }
        out
    }
}

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

impl FaultProxy {
    fn start(upstream: u16, filter: &'static str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy =
            FaultProxy { port, fault: Arc::new(Mutex::new(Fault::Pass)), faulted: Default::default(), kms_etags: Default::default() };
        let (fault, faulted, kms_etags) = (proxy.fault.clone(), proxy.faulted.clone(), proxy.kms_etags.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (fault, faulted, kms_etags) = (fault.clone(), faulted.clone(), kms_etags.clone());
                std::thread::spawn(move || Self::serve(client, upstream, filter, &fault, &faulted, &kms_etags));
            }
        });
        proxy
    }

    /// From now on, every ETag as S3 gives SSE-KMS objects ([`KmsEtags`]).
    fn rewrite_etags_as_sse_kms(&self) {
        self.kms_etags.on.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn faulted(&self) -> usize {
        self.faulted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn serve(
        mut client: std::net::TcpStream,
        upstream: u16,
        filter: &str,
        fault: &Mutex<Fault>,
        faulted: &std::sync::atomic::AtomicUsize,
        kms_etags: &KmsEtags,
    ) {
        let mut request = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let head_end = loop {
            if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match client.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        while request.len() < head_end + body_len {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let applies = head.lines().next().is_some_and(|line| line.contains(filter));
        let fault = {
            let mut current = fault.lock().unwrap();
            let now = if applies { *current } else { Fault::Pass };
            if let Fault::SlowDown(n) = now {
                *current = if n > 1 { Fault::SlowDown(n - 1) } else { Fault::Pass };
            }
            now
        };
        if fault != Fault::Pass {
            faulted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        match fault {
            Fault::SlowDown(_) => {
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let _ = write!(
                    client,
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                return;
            }
            Fault::Deny => {
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>User: {DENIED_ROLE} is not authorized to perform: s3:ListBucket</Message></Error>"
                );
                let _ = write!(
                    client,
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                return;
            }
            Fault::StallHeaders(pause) => std::thread::sleep(pause),
            _ => {}
        }
        // Forward with `Connection: close`, so each response ends its connection.
        let mut forwarded: String = head
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
            .map(|l| format!("{l}\r\n"))
            .collect();
        forwarded.push_str("Connection: close\r\n\r\n");
        let forwarded = if kms_etags.on() { kms_etags.rewrite(forwarded.as_bytes(), true) } else { forwarded.into_bytes() };
        let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else { return };
        if server.write_all(&forwarded).and_then(|_| server.write_all(&request[head_end..])).is_err() {
            return;
        }
        if kms_etags.on() {
            // The whole response (the server closes after it), rewritten, then forwarded.
            assert!(matches!(fault, Fault::Pass | Fault::FlipByte), "{fault:?} with rewritten ETags");
            let mut response = Vec::new();
            if server.read_to_end(&mut response).is_err() {
                return;
            }
            let mut response = kms_etags.rewrite(&response, false);
            let body_start = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |i| i + 4);
            if fault == Fault::FlipByte && body_start < response.len() {
                response[body_start] ^= 0xff;
            }
            let _ = client.write_all(&response);
            return;
        }
        let mut sent = 0usize;
        let mut flipped = false;
        loop {
            let n = match server.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if fault == Fault::FlipByte && !flipped {
                // Only the first chunk holds the headers (S3's are a few hundred bytes).
                let body_start = if sent == 0 { buf[..n].windows(4).position(|w| w == b"\r\n\r\n").map_or(n, |i| i + 4) } else { 0 };
                if body_start < n {
                    buf[body_start] ^= 0xff;
                    flipped = true;
                }
            }
            match fault {
                Fault::CutAfter(limit) if sent + n >= limit => {
                    let _ = client.write_all(&buf[..limit - sent]);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    return;
                }
                Fault::StallBody(pause) => {
                    let _ = client.write_all(&buf[..n.min(1024)]);
                    std::thread::sleep(pause);
                    return;
                }
                Fault::Trickle(pause) => {
                    for piece in buf[..n].chunks(16 << 10) {
                        if client.write_all(piece).is_err() {
                            return;
                        }
                        std::thread::sleep(pause);
                    }
                    sent += n;
                    continue;
                }
                _ => {}
            }
            if client.write_all(&buf[..n]).is_err() {
                return;
            }
            sent += n;
        }
    }
}

#[test]
fn s3_cut_stalled_and_throttled_downloads_fail_cleanly_leave_nothing_and_recover() {
    let s3 = S3::start();
    s3.create_bucket("models");
    let names = ["cut", "stall", "silent", "busy", "throttled"];
    for name in names {
        s3.upload_model("models", &format!("{name}/"), &models_dir().join("nlp1"));
    }
    // The parts (GETs of the object); the HeadObject before them passes.
    let proxy = FaultProxy::start(s3.port, "model.onnx?x-id=GetObject");
    let cache = tempfile::tempdir().unwrap();
    let manifest: Vec<String> = names.iter().map(|n| format!("{n}=s3://models/{n}/")).collect();
    let mut env = s3_env(proxy.port, cache.path(), &manifest.join(","));
    env.push(("QA_S3_ATTEMPT_TIMEOUT_MS", "1500".into()));
    env.push(("QA_S3_MAX_ATTEMPTS", "2".into()));
    let host = Host::start(&env);

    let cases = [
        ("cut", Fault::CutAfter(1 << 20), "interrupted"),
        ("stall", Fault::StallHeaders(Duration::from_secs(4)), "timeout"),
        ("silent", Fault::StallBody(Duration::from_secs(4)), "not received within"),
        ("throttled", Fault::SlowDown(1000), "SlowDown"),
    ];
    let parts = std::fs::metadata(models_dir().join("nlp1/model.onnx")).unwrap().len().div_ceil(8 << 20) as usize;
    for (name, fault, needle) in cases {
        let before = proxy.faulted();
        proxy.set(fault);
        let (status, body) = host.ask(name);
        assert_eq!((status, &body["error"]["code"]), (503, &json!("model_unavailable")), "{name}: {body}");
        if name == "cut" {
            // Each part: the SDK's 2 attempts, and the part fetched again up to 2 times.
            let requests = proxy.faulted() - before;
            eprintln!("cut: {requests} requests for {parts} parts");
            assert!((2..=parts * 2 * 2).contains(&requests), "{requests} requests for {parts} parts: retried, at most attempts² each");
        }
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{name}: {message}");
        assert_eq!(cached_versions(cache.path(), name), Vec::<String>::new(), "{name}: nothing cached, no partial left");
        assert_eq!(host.ask("nlp1").1["Answer"], "1886", "{name}: other models keep serving");
        proxy.set(Fault::Pass);
        let (status, body) = host.ask(name);
        assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{name} after recovery: {body}");
        assert_eq!(cached_versions(cache.path(), name).len(), 1, "{name}: one complete version");
    }

    // Throttling that passes: the retries absorb it.
    let before = proxy.faulted();
    proxy.set(Fault::SlowDown(1));
    let (status, body) = host.ask("busy");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    assert_eq!(proxy.faulted(), before + 1, "one request was throttled and retried");
}

/// While 8 clients ask in a loop, the model's objects are replaced twice: every request is
/// answered (by the old version or the new), none fails. Each replacement waits until some
/// client has been answered by the version serving, so every version takes requests however
/// slowly the machine runs them (a fixed pause once let a version go unanswered).
#[test]
fn an_object_replaced_while_eight_clients_loop_gives_no_errors() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "l/", &models_dir().join("nlp1"));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(s3.port, cache.path(), "s3l=s3://models/l/");
    env.push(("QA_MODEL_TTL_SECS", "1".into()));
    let host = Host::start(&env);
    assert_eq!(host.ask("s3l").0, 200);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answered_by = std::sync::Mutex::new(std::collections::BTreeSet::<String>::new());
    let versions_answered = || answered_by.lock().unwrap().len();
    let outcomes: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let mut seen = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let (status, body) = host.ask("s3l");
                        if let Some(version) = body["model_version"].as_str() {
                            answered_by.lock().unwrap().insert(version.to_owned());
                        }
                        seen.push((status, body));
                    }
                    seen
                })
            })
            .collect();
        let config: Value = serde_json::from_slice(&std::fs::read(models_dir().join("nlp1/config.json")).unwrap()).unwrap();
        for replacement in 1..=2 {
            wait_until("a client answered by the version serving", Duration::from_secs(60), || versions_answered() == replacement);
            let_the_ttl_pass();
            let mut replaced = config.clone();
            replaced["note"] = json!(format!("replacement {replacement}"));
            s3.put("models", "l/config.json", replaced.to_string().as_bytes());
            wait_until("the replacement to serve", Duration::from_secs(60), || host.process.count("model serving") == 1 + replacement);
        }
        wait_until("a client answered by the second replacement", Duration::from_secs(60), || versions_answered() == 3);
        // The clients go on a little on the last version (its predecessor being removed meanwhile):
        // what this observes is the requests in that time, so it is a pause, not an event.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    let failed: Vec<&(u16, Value)> = outcomes.iter().filter(|(status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), outcomes.len(), failed.first());
    let versions: std::collections::BTreeSet<&str> = outcomes.iter().filter_map(|(_, body)| body["model_version"].as_str()).collect();
    assert_eq!(versions.len(), 3, "the clients saw the first version and both replacements: {versions:?}");
    eprintln!("{} requests over 3 versions, none failed", outcomes.len());
}

/// S3's error text can name the account and the role; a client gets the error's code and
/// the operator's log the whole text.
#[test]
fn s3_error_details_reach_the_log_not_the_client() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "d/", &models_dir().join("nlp1"));
    let proxy = FaultProxy::start(s3.port, "list-type=2");
    proxy.set(Fault::Deny);
    let cache = tempfile::tempdir().unwrap();
    let host = Host::start(&s3_env(proxy.port, cache.path(), "s3d=s3://models/d/"));
    let (status, body) = host.ask("s3d");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_unavailable")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("AccessDenied"), "the client learns what went wrong: {message}");
    for secret in ["123456789012", "arn:aws", "qa-model-reader"] {
        assert!(!body.to_string().contains(secret), "{secret} reached the client: {body}");
    }
    wait_until("the details in the log", Duration::from_secs(5), || host.process.logged(DENIED_ROLE));
}

/// Past the TTL a loaded model's re-check runs behind the requests: with the source's listing
/// stalled, requests are still answered at once by the loaded version.
#[test]
fn a_stalled_source_never_holds_a_request_on_a_loaded_model() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "w/", &models_dir().join("nlp1"));
    let proxy = FaultProxy::start(s3.port, "list-type=2");
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(proxy.port, cache.path(), "s3w=s3://models/w/");
    env.push(("QA_MODEL_TTL_SECS", "1".into()));
    let host = Host::start(&env);
    let (status, first) = host.ask("s3w");
    assert_eq!((status, &first["Answer"]), (200, &json!("1886")), "{first}");

    proxy.set(Fault::StallHeaders(Duration::from_secs(30)));
    let_the_ttl_pass();
    for round in 0..3 {
        let started = std::time::Instant::now();
        let (status, body) = host.ask("s3w");
        assert_eq!((status, &body["model_version"]), (200, &first["model_version"]), "round {round}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: answered after {:?} with the listing stalled for 30 s",
            started.elapsed()
        );
    }
    wait_until("the re-check to reach the stalled listing", Duration::from_secs(10), || proxy.faulted() >= 1);
}

/// A re-check that fails leaves the loaded version serving, and the next TTL tries again: once
/// the listing works, a replaced object is picked up.
#[test]
fn a_failed_re_check_keeps_the_loaded_version_and_the_next_one_picks_up_the_change() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "f/", &models_dir().join("nlp1"));
    let proxy = FaultProxy::start(s3.port, "list-type=2");
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(proxy.port, cache.path(), "s3f=s3://models/f/");
    env.push(("QA_MODEL_TTL_SECS", "1".into()));
    env.push(("QA_S3_MAX_ATTEMPTS", "1".into()));
    let host = Host::start(&env);
    let (_, first) = host.ask("s3f");
    assert_eq!(first["Answer"], "1886", "{first}");

    let mut config: Value = serde_json::from_slice(&std::fs::read(models_dir().join("nlp1/config.json")).unwrap()).unwrap();
    config["note"] = json!("replaced while the listing fails");
    s3.put("models", "f/config.json", config.to_string().as_bytes());
    proxy.set(Fault::CutAfter(0));
    let_the_ttl_pass();
    let (status, stale) = host.ask("s3f");
    assert_eq!((status, &stale["model_version"]), (200, &first["model_version"]), "{stale}");
    host.process.wait_for_log("model re-check failed", Duration::from_secs(60));
    assert_eq!(host.ask("s3f").1["model_version"], first["model_version"], "the loaded version keeps serving");

    proxy.set(Fault::Pass);
    let_the_ttl_pass();
    host.ask("s3f");
    wait_until("the next re-check to load the new version", Duration::from_secs(60), || host.process.count("model serving") == 2);
    let (status, fresh) = host.ask("s3f");
    assert_eq!(status, 200, "{fresh}");
    assert_ne!(fresh["model_version"], first["model_version"]);
}

/// Parts are fetched pinned to the ETag the listing gave: an object replaced between the
/// listing and its parts fails that download cleanly (503, nothing published) instead of
/// mixing two versions, and the next request fetches the new object whole.
#[test]
fn an_object_replaced_between_the_listing_and_its_parts_is_never_mixed() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "p/", &models_dir().join("nlp1"));
    // The parts only (a GET of the object): the HeadObject before them passes.
    let proxy = FaultProxy::start(s3.port, "model.onnx?x-id=GetObject");
    proxy.set(Fault::StallHeaders(Duration::from_secs(3)));
    let cache = tempfile::tempdir().unwrap();
    let host = Host::start(&s3_env(proxy.port, cache.path(), "s3p=s3://models/p/"));
    // The same model with an unknown protobuf field appended (field 100, varint 1): another
    // ETag, still a model ONNX Runtime loads.
    let mut replaced = std::fs::read(models_dir().join("nlp1/model.onnx")).unwrap();
    replaced.extend_from_slice(&[0xA0, 0x06, 0x01]);
    let (status, body) = std::thread::scope(|scope| {
        let asking = scope.spawn(|| host.ask("s3p"));
        wait_until("a part request held by the proxy", Duration::from_secs(30), || proxy.faulted() >= 1);
        s3.put("models", "p/model.onnx", &replaced);
        asking.join().unwrap()
    });
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_unavailable")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("changed during the download"), "{body}");
    assert!(cached_versions(cache.path(), "s3p").is_empty(), "nothing published");

    proxy.set(Fault::Pass);
    let (status, body) = host.ask("s3p");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    let versions = cached_versions(cache.path(), "s3p");
    assert_eq!(versions.len(), 1, "{versions:?}");
    let published = cache.path().join("s3p").join(&versions[0]).join("model.onnx");
    assert_eq!(std::fs::read(published).unwrap(), replaced, "the new object, whole");
}

#[test]
fn the_s3_server_killed_mid_download_is_a_clean_503_and_the_model_loads_once_it_is_back() {
    let mut s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "m/", &models_dir().join("nlp1"));
    let proxy = FaultProxy::start(s3.port, "model.onnx");
    proxy.set(Fault::Trickle(Duration::from_millis(20)));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(proxy.port, cache.path(), "m=s3://models/m/");
    env.push(("QA_S3_MAX_ATTEMPTS", "2".into()));
    let host = Host::start(&env);
    let asking = std::thread::scope(|scope| {
        let asking = scope.spawn(|| host.ask("m"));
        wait_until("model.onnx arriving", Duration::from_secs(60), || downloading_model_onnx(cache.path(), "m"));
        wait_until("model.onnx's first bytes written", Duration::from_secs(60), || downloaded_bytes(cache.path(), "m") >= 256 << 10);
        s3.process.stop(); // the server dies with the transfer in flight
        asking.join().unwrap()
    });
    let (status, body) = asking;
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_unavailable")), "{body}");
    assert_eq!(cached_versions(cache.path(), "m"), Vec::<String>::new(), "nothing cached, no partial left");
    assert_eq!(host.ask("nlp1").1["Answer"], "1886", "other models keep serving");

    let s3 = S3::start_on(s3.port);
    s3.create_bucket("models");
    s3.upload_model("models", "m/", &models_dir().join("nlp1"));
    proxy.set(Fault::Pass);
    let (status, body) = host.ask("m");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
}

#[test]
fn a_host_killed_mid_download_leaves_nothing_a_restart_would_use() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "k/", &models_dir().join("nlp1"));
    let proxy = FaultProxy::start(s3.port, "model.onnx");
    proxy.set(Fault::StallBody(Duration::from_secs(120)));
    let cache = tempfile::tempdir().unwrap();
    let env = s3_env(proxy.port, cache.path(), "killed=s3://models/k/");
    let mut host = Host::start(&env);
    let base = host.base.clone();
    // This request hangs in the download until the process dies.
    std::thread::spawn(move || {
        let mut body = benz_request();
        body["model_type"] = json!("killed");
        let _ = http().post(&format!("{base}/")).send(body.to_string());
    });
    wait_until("a partial download of model.onnx", Duration::from_secs(60), || downloading_model_onnx(cache.path(), "killed"));
    host.process.stop(); // SIGKILL
    let left = cached_versions(cache.path(), "killed");
    assert!(left.iter().all(|d| d.starts_with(".partial-")), "only a partial download is left: {left:?}");

    proxy.set(Fault::Pass);
    let host = Host::start(&env);
    let (status, body) = host.ask("killed");
    assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    let after = cached_versions(cache.path(), "killed");
    assert_eq!(after.len(), 1, "the dead process's partial download was removed: {after:?}");
    assert!(!after[0].starts_with('.') && cache.path().join("killed").join(&after[0]).join(".complete").is_file());
    log_barrier(&host.process, &host.base);
    assert_eq!(host.process.count("fetched from S3"), 1, "downloaded afresh, not resumed from the partial");
}

#[test]
fn under_lambda_a_model_that_cannot_be_fetched_in_the_time_left_is_a_503_within_it() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "late/", &models_dir().join("nlp1"));
    s3.upload_model("models", "warm/", &models_dir().join("nlp1"));
    // Every request to the bucket passes through the proxy's current fault.
    let proxy = FaultProxy::start(s3.port, "/models");
    // The service runs in this process; other tests here start hosts with a cleared
    // environment, so these variables reach only this one.
    // SAFETY: set before this test's runtime and service threads exist; no other test of this
    // binary reads them.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", proxy.port));
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let cache = tempfile::tempdir().unwrap();
    let mut config = config(qa_guest(), models_dir());
    config.manifest = qa_host::models::manifest::parse_env("late=s3://models/late/,warm=s3://models/warm/").unwrap();
    config.s3.cache_root = cache.path().to_path_buf();
    config.model_ttl = Duration::from_secs(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let service = runtime.block_on(service(&config));
    let request =
        |model: &str| qa_host::api::QaRequest { model_type: Some(model.into()), ..qa_host::api::QaRequest::new("When?", "In 1886.") };
    assert_eq!(runtime.block_on(service.answer(request("warm"))).unwrap().answer, "1886", "loaded while S3 answers");

    // Each S3 request stalls 20 s (and the SDK's own attempt limit is 30 s): a fetch that
    // ignored the time left would take that long at least.
    proxy.set(Fault::StallHeaders(Duration::from_secs(20)));
    let budget = Duration::from_secs(2);
    // How late past the time left the 503 may come on a loaded 2-core machine.
    let late = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let error = runtime.block_on(service.answer_within(request("late"), Some(budget), "test")).unwrap_err();
    let took = started.elapsed();
    assert_eq!((error.status(), error.code()), (503, "model_unavailable"), "{error}");
    assert!(error.to_string().contains("remaining time (2000 ms)"), "{error}");
    assert!(took < budget + late, "the 503 came {took:?} after the request, with {budget:?} left");
    assert!(cached_versions(cache.path(), "late").iter().all(|d| d.starts_with('.')), "no version published");

    // Past its TTL, with every S3 request stalled, the loaded model answers within the budget:
    // its re-check runs behind the request.
    let_the_ttl_pass();
    for round in 0..2 {
        let started = std::time::Instant::now();
        let response = runtime.block_on(service.answer_within(request("warm"), Some(budget), "test"));
        let took = started.elapsed();
        assert_eq!(response.map(|r| r.body.answer).map_err(|e| e.to_string()), Ok("1886".to_string()), "round {round}");
        assert!(took < budget, "round {round}: answered after {took:?}, with {budget:?} left");
    }
}
