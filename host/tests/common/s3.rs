//! An S3-compatible server (moto's server mode) on a loopback port, written to with the real
//! aws-sdk-s3 client, for the tests that keep models in S3.

use super::{Spawned, free_port, required, wait_until, workspace};
use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
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
        self.put_with(bucket, key, bytes, |put| put);
    }

    /// A single-part upload, the request first shaped by `shape` (encryption, a checksum).
    pub fn put_with(&self, bucket: &str, key: &str, bytes: &[u8], shape: impl FnOnce(PutObjectFluentBuilder) -> PutObjectFluentBuilder) {
        let body = aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec());
        self.runtime
            .block_on(shape(self.client.put_object().bucket(bucket).key(key).body(body)).send())
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// A multipart upload in `part_bytes` parts, as `aws s3 cp` makes above its threshold. With
    /// `full_object_crc64nvme`, each part carries its CRC64NVME and the upload completes with
    /// the whole object's (the CLI's default since 2025); without, no checksum at all (an
    /// older client). Returns the whole object's CRC64NVME (base64), what S3 should store.
    pub fn put_multipart(&self, bucket: &str, key: &str, bytes: &[u8], part_bytes: usize, full_object_crc64nvme: bool) -> String {
        use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart};
        let whole = crc64nvme(bytes);
        let client = &self.client;
        self.runtime.block_on(async {
            let mut create = client.create_multipart_upload().bucket(bucket).key(key);
            if full_object_crc64nvme {
                create = create.checksum_algorithm(ChecksumAlgorithm::Crc64Nvme).checksum_type(ChecksumType::FullObject);
            }
            let upload = create.send().await.unwrap_or_else(|e| panic!("create upload {key}: {e:?}"));
            let id = upload.upload_id().expect("an upload id");
            let mut parts = Vec::new();
            for (i, chunk) in bytes.chunks(part_bytes).enumerate() {
                let number = i as i32 + 1;
                let mut part = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(number)
                    .body(aws_sdk_s3::primitives::ByteStream::from(chunk.to_vec()));
                if full_object_crc64nvme {
                    part = part.checksum_algorithm(ChecksumAlgorithm::Crc64Nvme);
                }
                let sent = part.send().await.unwrap_or_else(|e| panic!("upload part {number} of {key}: {e:?}"));
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .e_tag(sent.e_tag().unwrap_or_default())
                        .set_checksum_crc64_nvme(sent.checksum_crc64_nvme().map(str::to_string))
                        .build(),
                );
            }
            let mut complete = client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
            if full_object_crc64nvme {
                complete = complete.checksum_crc64_nvme(&whole).checksum_type(ChecksumType::FullObject);
            }
            complete.send().await.unwrap_or_else(|e| panic!("complete upload {key}: {e:?}"));
        });
        whole
    }

    /// The object's metadata with the checksum the server stored.
    pub fn head(&self, bucket: &str, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        let head = self.client.head_object().bucket(bucket).key(key).checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled);
        self.runtime.block_on(head.send()).unwrap_or_else(|e| panic!("head {key}: {e:?}"))
    }

    pub fn enable_versioning(&self, bucket: &str) {
        use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
        let versioning = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
        self.runtime
            .block_on(self.client.put_bucket_versioning().bucket(bucket).versioning_configuration(versioning).send())
            .expect("enable versioning");
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

/// The CRC64NVME of `bytes` as S3 gives it (base64), by the SDK's own implementation.
pub fn crc64nvme(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let mut checksum = aws_smithy_checksums::ChecksumAlgorithm::Crc64Nvme.into_impl();
    checksum.update(bytes);
    base64::engine::general_purpose::STANDARD.encode(checksum.finalize())
}

/// One client connection through a [`RecordingProxy`].
#[derive(Clone, Debug)]
pub struct Connection {
    pub opened: std::time::Instant,
    /// When the client (the host) closed it.
    pub closed: Option<std::time::Instant>,
    /// Each request sent on it: when its headers arrived, its request line and the access
    /// key id it was signed with (`Credential=<key>/...` of SigV4's `Authorization`).
    pub requests: Vec<(std::time::Instant, String, String)>,
}

/// An HTTP relay in front of the S3 server that keeps each client connection open for as long
/// as the client does (moto closes its own after every response, which would hide whether a
/// client reuses connections), forwarding every request on a fresh connection of its own, and
/// records each client connection's life and the credentials of every request on it.
pub struct RecordingProxy {
    pub port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<Connection>>>,
}

impl RecordingProxy {
    pub fn start(upstream: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Connection>::new()));
        let log = connections.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Connection { opened: std::time::Instant::now(), closed: None, requests: Vec::new() });
                    log.len() - 1
                };
                let log = log.clone();
                std::thread::spawn(move || {
                    Self::relay(client, upstream, |line, key| {
                        log.lock().unwrap()[index].requests.push((std::time::Instant::now(), line, key));
                    });
                    log.lock().unwrap()[index].closed = Some(std::time::Instant::now());
                });
            }
        });
        RecordingProxy { port, connections }
    }

    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }

    /// Serves `client`'s requests one after another until it closes the connection.
    fn relay(mut client: std::net::TcpStream, upstream: u16, mut seen: impl FnMut(String, String)) {
        use std::io::{Read, Write};
        let mut pending = Vec::new();
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            let head_end = loop {
                if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match client.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buffer[..n]),
                }
            };
            let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
            let length = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            while pending.len() < head_end + length {
                match client.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buffer[..n]),
                }
            }
            let body: Vec<u8> = pending.drain(..head_end + length).skip(head_end).collect();
            let line = head.lines().next().unwrap_or_default().to_string();
            // Asked to close after its response, so reading the response to its end is enough.
            let mut request: Vec<u8> = head
                .lines()
                .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
                .flat_map(|l| [l, "\r\n"])
                .chain(["Connection: close\r\n\r\n"])
                .collect::<String>()
                .into_bytes();
            request.extend_from_slice(&body);
            let key = head.split("Credential=").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or_default().to_string();
            seen(line, key);
            // Upstream: one connection per request, read to its end.
            let mut response = Vec::new();
            let forwarded = std::net::TcpStream::connect(("127.0.0.1", upstream))
                .and_then(|mut server| server.write_all(&request).and_then(|()| server.read_to_end(&mut response)));
            if forwarded.is_err() {
                return;
            }
            let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { return };
            let response_head = String::from_utf8_lossy(&response[..end]).into_owned();
            let body = &response[end + 4..];
            let mut lines = response_head.lines();
            let status = lines.next().unwrap_or_default().replacen("HTTP/1.0", "HTTP/1.1", 1);
            let mut out = format!("{status}\r\n");
            for line in lines {
                let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
                let keep_length = name == "content-length" && line_is_head(&request);
                if keep_length || !matches!(name.as_str(), "connection" | "content-length" | "transfer-encoding" | "keep-alive") {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
            }
            if !line_is_head(&request) {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            out.push_str("Connection: keep-alive\r\n\r\n");
            if client.write_all(out.as_bytes()).and_then(|()| client.write_all(body)).is_err() {
                return;
            }
        }
    }
}

/// Whether `request` is a HEAD request, whose response keeps the object's Content-Length.
fn line_is_head(request: &[u8]) -> bool {
    request.starts_with(b"HEAD ")
}

/// The value of header `name` (lower case) in an HTTP head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}
