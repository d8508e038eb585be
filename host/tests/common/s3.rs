//! An S3-compatible server (moto's server mode) on a loopback port, written to with the real
//! aws-sdk-s3 client, for the tests that keep models in S3.

use super::{Spawned, free_port, required, wait_until, workspace};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn moto_server() -> PathBuf {
    required("MOTO_SERVER", workspace().join(".cache/tools-venv/bin/moto_server"))
}

/// An S3-compatible server on a loopback port, written to with the real aws-sdk-s3 client.
pub struct S3 {
    pub process: Spawned,
    pub port: u16,
    pub client: aws_sdk_s3::Client,
    pub runtime: tokio::runtime::Runtime,
}

pub fn s3_client(port: u16) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
    use aws_smithy_http_client::tls;
    let http =
        aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring)).build_https();
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
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let mut command = Command::new(moto_server());
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = Spawned::start(command);
        wait_until("the S3 server to listen", Duration::from_secs(60), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        S3 { process, port, client: s3_client(port), runtime }
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.runtime.block_on(self.client.create_bucket().bucket(bucket).send()).expect("create bucket");
    }

    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let body = aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec());
        self.runtime
            .block_on(self.client.put_object().bucket(bucket).key(key).body(body).send())
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    pub fn upload_model(&self, bucket: &str, prefix: &str, from: &Path) {
        for file in ["model.onnx", "tokenizer.json", "config.json"] {
            self.put(bucket, &format!("{prefix}{file}"), &std::fs::read(from.join(file)).unwrap());
        }
    }
}

/// The credentials and region a host needs to reach the server (moto accepts any).
pub const TEST_CREDENTIALS: [(&str, &str); 4] =
    [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")];

/// A host's environment for models in S3 at the loopback `endpoint` port (the server, or a
/// fault proxy in front of it).
pub fn s3_env(endpoint: u16, cache: &Path, models: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{endpoint}")),
        ("QA_MODELS", models.to_string()),
        ("QA_MODEL_CACHE_DIR", cache.display().to_string()),
    ]
}
