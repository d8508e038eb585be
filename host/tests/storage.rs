//! Model storage through the real parts: an S3-compatible server (moto's server mode) on
//! loopback with `qa-host serve` fetching through aws-sdk-s3, and EFS as a directory tree.
//! Each test runs its own server and host process, so environments never mix.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn moto_server() -> PathBuf {
    required("MOTO_SERVER", workspace().join(".cache/tools-venv/bin/moto_server"))
}

/// An S3-compatible server on a loopback port, written to with the real aws-sdk-s3 client.
struct S3 {
    process: Spawned,
    port: u16,
    client: aws_sdk_s3::Client,
    runtime: tokio::runtime::Runtime,
}

fn s3_client(port: u16) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring)).build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .http_client(http)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

impl S3 {
    fn start() -> Self {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Self {
        let mut command = Command::new(moto_server());
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = Spawned::start(command);
        wait_until("the S3 server to listen", Duration::from_secs(60), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        S3 { process, port, client: s3_client(port), runtime }
    }

    fn create_bucket(&self, bucket: &str) {
        self.runtime.block_on(self.client.create_bucket().bucket(bucket).send()).expect("create bucket");
    }

    fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let body = aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec());
        self.runtime.block_on(self.client.put_object().bucket(bucket).key(key).body(body).send()).unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    fn upload_model(&self, bucket: &str, prefix: &str, from: &Path) {
        for file in ["model.onnx", "tokenizer.json", "config.json"] {
            self.put(bucket, &format!("{prefix}{file}"), &std::fs::read(from.join(file)).unwrap());
        }
    }
}

/// `qa-host serve` with the given environment; its log is kept for assertions.
struct Host {
    process: Spawned,
    base: String,
}

impl Host {
    fn start(env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_qa-host"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ORT_DYLIB_PATH", onnxruntime())
            .env("QA_GUEST", qa_guest())
            .env("QA_MODELS_DIR", models_dir())
            .env("QA_CACHE_DIR", workspace().join("target/qa-cache"))
            .env("QA_LOG", "info")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["serve", "--addr", "127.0.0.1:0"]);
        let process = Spawned::start(command);
        let line = process.wait_for_log("qa-host: listening on ", Duration::from_secs(120));
        let base = line.trim_start_matches("qa-host: listening on ").trim().to_string();
        Host { process, base }
    }

    fn ask(&self, model: &str) -> (u16, Value) {
        let mut body = benz_request();
        body["model_type"] = json!(model);
        json_body(http().post(&format!("{}/", self.base)).send(body.to_string()).expect("HTTP round trip"))
    }
}

fn s3_env(s3: &S3, cache: &Path, models: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", s3.port)),
        ("QA_MODELS", models.to_string()),
        ("QA_MODEL_CACHE_DIR", cache.display().to_string()),
    ]
}

fn cached_versions(cache: &Path, model: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.join(model))
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn cold_fetch_then_warm_reuse_then_a_replaced_object_is_picked_up_after_the_ttl() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "qa/s3nlp/", &models_dir().join("nlp1"));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(&s3, cache.path(), "s3nlp=s3://models/qa/s3nlp/");
    env.push(("QA_MODEL_TTL_SECS", "1".into()));
    let host = Host::start(&env);

    let (status, first) = host.ask("s3nlp");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["Answer"], "1886");
    assert_eq!(host.process.count("fetched from S3"), 1);
    let versions = cached_versions(cache.path(), "s3nlp");
    assert_eq!(versions, [first["model_version"].as_str().unwrap()], "one complete version, no partial left");

    // Warm, and past the TTL with nothing changed: no second download, same version.
    std::thread::sleep(Duration::from_millis(1200));
    let (_, second) = host.ask("s3nlp");
    assert_eq!(second["model_version"], first["model_version"]);
    assert_eq!(host.process.count("fetched from S3"), 1, "warm reuse downloads nothing");
    assert_eq!(host.process.count("model loaded"), 1);

    // Replace one object: after the TTL the new version is fetched, loaded and answers.
    let mut config: Value = serde_json::from_slice(&std::fs::read(models_dir().join("nlp1/config.json")).unwrap()).unwrap();
    config["note"] = json!("replaced");
    s3.put("models", "qa/s3nlp/config.json", config.to_string().as_bytes());
    std::thread::sleep(Duration::from_millis(1200));
    let (status, third) = host.ask("s3nlp");
    assert_eq!(status, 200, "{third}");
    assert_ne!(third["model_version"], first["model_version"], "the replaced object was picked up");
    assert_eq!(third["Answer"], "1886");
    assert_eq!(host.process.count("fetched from S3"), 2);
    assert_eq!(cached_versions(cache.path(), "s3nlp"), [third["model_version"].as_str().unwrap()], "the old version was removed");
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
    std::fs::write(manifest_file.path(), json!({"pinned": {"source": "s3://models/pinned/", "sha256": {"model.onnx": wrong}}}).to_string()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(&s3, cache.path(), "partial=s3://models/partial/,nobucket=s3://no-such-bucket/x/");
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
fn a_stopped_server_is_503_after_retries_and_other_models_keep_serving() {
    let mut s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "a/", &models_dir().join("nlp1"));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(&s3, cache.path(), "s3a=s3://models/a/,s3b=s3://models/a/");
    env.push(("QA_MODEL_TTL_SECS", "1".into()));
    let host = Host::start(&env);
    assert_eq!(host.ask("s3a").1["Answer"], "1886");

    s3.process.stop();
    let (status, body) = host.ask("s3b");
    assert_eq!((status, &body["error"]["code"]), (503, &json!("model_unavailable")), "{body}");
    // The loaded model keeps serving past its TTL while the server is down, and so does the image.
    std::thread::sleep(Duration::from_millis(1200));
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
    let host = Host::start(&s3_env(&s3, cache.path(), "s3c=s3://models/c/"));
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| host.ask("s3c"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body) in answers {
        assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
    }
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
    std::thread::sleep(Duration::from_millis(1200));
    let config = std::fs::read(dir.join("config.json")).unwrap();
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let (_, second) = host.ask("efsnlp");
    assert_ne!(second["model_version"], first["model_version"]);
    assert_eq!(host.process.count("model loaded"), 2);

    let (status, body) = host.ask("gone");
    assert_eq!((status, &body["error"]["code"]), (404, &json!("model_not_found")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("models/absent"), "{body}");
}

#[test]
fn a_model_that_would_not_fit_in_the_cache_is_refused_before_downloading() {
    let s3 = S3::start();
    s3.create_bucket("models");
    s3.upload_model("models", "big/", &models_dir().join("nlp1"));
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(&s3, cache.path(), "big=s3://models/big/");
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
    assert!(!host.process.logged("fetched from S3"));
}

#[test]
fn a_guest_in_s3_is_fetched_at_start_and_a_new_one_is_swapped_in_after_the_ttl() {
    let s3 = S3::start();
    s3.create_bucket("guests");
    s3.put("guests", "qa/qa-guest.wasm", &std::fs::read(qa_guest()).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let mut env = s3_env(&s3, cache.path(), "");
    env.push(("QA_GUEST", "s3://guests/qa/qa-guest.wasm".into()));
    env.push(("QA_GUEST_TTL_SECS", "1".into()));
    env.push(("QA_CACHE_DIR", cache.path().join("compiled").display().to_string()));
    let host = Host::start(&env);
    assert_eq!(host.ask("nlp1").1["Answer"], "1886");

    // A new guest build uploaded over the old one: fetched, compiled and swapped in.
    s3.put("guests", "qa/qa-guest.wasm", &std::fs::read(misbehaving_guest()).unwrap());
    std::thread::sleep(Duration::from_millis(1100));
    host.ask("nlp1");
    host.process.wait_for_log("guest swapped", Duration::from_secs(120));
    let (status, body) = host.ask("nlp1");
    // The fixture guest answers with the whole context, which the real guest never does.
    assert_eq!((status, &body["Answer"]), (200, &benz_request()["context"]), "{body}");
}
