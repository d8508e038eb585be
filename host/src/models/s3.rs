//! Models in S3, fetched into a local cache (under `/tmp` in Lambda) and reused while warm.
//!
//! Every object directly under the model's prefix is fetched; large objects in concurrent
//! ranged GETs pinned to the listed ETag (`If-Match`), so an object replaced mid-download
//! fails cleanly instead of mixing versions. Verification (size, the ETag's MD5 for
//! single-part uploads, the manifest's SHA-256), the free-space check and the atomic
//! publication are the shared step in [`super::download`]. Throttling, 5xx answers and
//! timeouts are retried with backoff by the SDK's standard retry policy; a server that stays
//! down becomes [`SourceError::Unavailable`].

use super::download::{DownloadBudget, DownloadCache, Expected};
use super::{LocalModel, MODEL_FILES, ModelSource, SourceError, SourceFuture, local_failure};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How S3 is reached and how downloads are cut up.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// Root of the download cache (`/tmp/qa-models` by default).
    pub cache_root: PathBuf,
    /// Objects larger than this are fetched in ranged parts of this size.
    pub part_bytes: u64,
    /// Ranged GETs in flight per object.
    pub concurrency: usize,
    /// Attempts per request, including the first (standard retry mode, exponential backoff).
    pub max_attempts: u32,
    /// Time limit of one attempt: of a request until its response headers (the SDK's attempt
    /// timeout), and of reading one part's body.
    pub attempt_timeout: Duration,
    /// Free space a download must leave in the cache's file system.
    pub reserve_bytes: u64,
    /// Models downloaded at once by one connector's sources (`QA_MODEL_DOWNLOADS`).
    pub downloads: usize,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            cache_root: std::env::temp_dir().join("qa-models"),
            part_bytes: 8 << 20,
            concurrency: 4,
            max_attempts: 4,
            attempt_timeout: Duration::from_secs(30),
            reserve_bytes: 16 << 20,
            downloads: 2,
        }
    }
}

/// One S3 client for all S3 models, built from the standard AWS configuration chain on first
/// use. `AWS_ENDPOINT_URL` points it at an S3-compatible server, with path-style addressing.
/// The client holds what a SnapStart snapshot must not carry (the credentials it resolved,
/// its open connections): [`S3Connector::forget`] drops it, and the next use builds a new one.
#[derive(Debug)]
pub struct S3Connector {
    settings: S3Settings,
    client: tokio::sync::Mutex<Option<Client>>,
    downloads: Arc<DownloadBudget>,
}

impl S3Connector {
    pub fn new(settings: S3Settings) -> Arc<Self> {
        let downloads = DownloadBudget::new(settings.downloads);
        Arc::new(Self { settings, client: tokio::sync::Mutex::new(None), downloads })
    }

    /// Drops the client, and with it the credentials it cached and its pooled connections;
    /// requests already running keep the clone they hold until they end.
    pub async fn forget(&self) {
        self.client.lock().await.take();
    }

    /// Builds the client now (after [`S3Connector::forget`]), so the first request does not:
    /// its credentials are still resolved on its first call.
    pub async fn reconnect(&self) {
        self.forget().await;
        self.client().await;
    }

    /// The client, built on first use (an `Arc` inside: clones are cheap and share it).
    async fn client(&self) -> Client {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref() {
            return client.clone();
        }
        let built = {
            use aws_config::retry::RetryConfig;
            use aws_config::timeout::TimeoutConfig;
            use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
            use aws_smithy_http_client::tls;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
                .build_https();
            let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .http_client(http)
                .retry_config(
                    RetryConfig::standard().with_max_attempts(self.settings.max_attempts).with_initial_backoff(Duration::from_millis(100)),
                )
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(5))
                        .operation_attempt_timeout(self.settings.attempt_timeout)
                        .build(),
                )
                .load()
                .await;
            // S3-compatible servers often reject the CRC checksums newer SDKs send by default.
            let mut config = aws_sdk_s3::config::Builder::from(&shared)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
            if shared.endpoint_url().is_some() {
                config = config.force_path_style(true);
            }
            Client::from_conf(config.build())
        };
        *client = Some(built.clone());
        built
    }
}

#[derive(Clone, Debug)]
pub struct S3Source {
    connector: Arc<S3Connector>,
    name: String,
    bucket: String,
    prefix: String,
    sha256: BTreeMap<String, String>,
    /// Files that must be under the prefix.
    required: Vec<String>,
    /// Fetch only this file of the prefix (a single object, such as a guest `.wasm`).
    only: Option<String>,
    /// Where downloaded versions are published.
    cache: Arc<DownloadCache>,
}

/// An object as listed: what a download must reproduce, and how to ask for exactly it.
#[derive(Clone, Debug)]
struct Listed {
    expected: Expected,
    key: String,
    etag: String,
}

impl AsRef<Expected> for Listed {
    fn as_ref(&self) -> &Expected {
        &self.expected
    }
}

impl S3Source {
    /// A model: every object directly under `prefix`, which must include [`MODEL_FILES`].
    pub fn new(connector: Arc<S3Connector>, name: &str, bucket: &str, prefix: &str, sha256: BTreeMap<String, String>) -> Self {
        let settings = &connector.settings;
        let cache =
            Arc::new(DownloadCache::new(name, "S3", settings.cache_root.join(name), settings.reserve_bytes, connector.downloads.clone()));
        Self {
            connector,
            name: name.to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            sha256,
            required: MODEL_FILES.iter().map(|f| f.to_string()).collect(),
            only: None,
            cache,
        }
    }

    /// One object (`s3://bucket/key`), cached under `name`; [`ModelSource::fetch`] returns the
    /// directory holding it under its own file name.
    pub fn single_object(connector: Arc<S3Connector>, name: &str, bucket: &str, key: &str) -> Self {
        let (prefix, file) = match key.rsplit_once('/') {
            Some((dir, file)) => (format!("{dir}/"), file.to_string()),
            None => (String::new(), key.to_string()),
        };
        let source = Self::new(connector, name, bucket, &prefix, BTreeMap::new());
        Self { required: vec![file.clone()], only: Some(file), ..source }
    }

    /// The connector this source's requests go through.
    pub fn connector(&self) -> &Arc<S3Connector> {
        &self.connector
    }

    fn url(&self, file: &str) -> String {
        format!("s3://{}/{}{file}", self.bucket, self.prefix)
    }

    async fn list(&self) -> Result<Vec<Listed>, SourceError> {
        let client = self.connector.client().await;
        let pages: Vec<_> = client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .delimiter("/")
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| classify(&self.url(""), e))?;
        let mut listed: Vec<Listed> = pages
            .iter()
            .flat_map(|page| page.contents())
            .filter_map(|o| {
                let key = o.key()?.to_string();
                let file = key.strip_prefix(&self.prefix)?.to_string();
                let plain = !file.is_empty() && !file.starts_with('.') && !file.contains('/');
                let plain = plain && self.only.as_ref().is_none_or(|only| *only == file);
                let etag = o.e_tag().unwrap_or_default().to_string();
                // A single-part upload's ETag is the MD5 of its content; a multipart one's is not.
                let md5 =
                    Some(etag.trim_matches('"')).filter(|e| e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).map(str::to_string);
                plain.then(|| Listed {
                    expected: Expected {
                        url: self.url(&file),
                        size: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
                        md5,
                        sha256: self.sha256.get(&file).cloned(),
                        file,
                    },
                    etag,
                    key,
                })
            })
            .collect();
        listed.sort_by(|a, b| a.expected.file.cmp(&b.expected.file));
        for required in &self.required {
            if !listed.iter().any(|l| l.expected.file == *required) {
                return Err(SourceError::NotFound(format!("{} is missing", self.url(required))));
            }
        }
        Ok(listed)
    }

    async fn download(&self, object: &Listed, dest: &Path) -> Result<(), SourceError> {
        let client = &self.connector.client().await;
        let io = |e: std::io::Error| local_failure("writing the model cache", dest, e);
        let size = object.expected.size;
        let file = std::fs::File::create(dest).map_err(io)?;
        file.set_len(size).map_err(io)?;
        let file = Arc::new(file);
        let part = self.connector.settings.part_bytes.max(1);
        let ranges: Vec<(u64, u64)> = (0..size).step_by(part as usize).map(|start| (start, (start + part).min(size) - 1)).collect();
        futures_util::stream::iter(ranges)
            .map(|(first, last)| {
                let file = file.clone();
                async move {
                    let settings = &self.connector.settings;
                    let mut attempt = 1;
                    let bytes = loop {
                        match self.fetch_part(client, object, first, last).await {
                            Ok(bytes) => break bytes,
                            // The SDK retries requests; a body cut or stalled after the headers
                            // arrived is retried here, for this part only.
                            Err(PartError::Body(reason)) if attempt < settings.max_attempts => {
                                tracing::warn!(model = %self.name, file = %object.expected.file, first, attempt, %reason, "part download failed; retrying");
                                tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                                attempt += 1;
                            }
                            Err(PartError::Body(reason)) => {
                                return Err(SourceError::Unavailable(format!(
                                    "{}: bytes {first}-{last}: {reason} (after {attempt} attempts)",
                                    object.expected.url
                                )));
                            }
                            Err(PartError::Source(error)) => return Err(error),
                        }
                    };
                    file.write_all_at(&bytes, first).map_err(|e| SourceError::Unavailable(format!("writing the cache: {e}")))
                }
            })
            .buffer_unordered(self.connector.settings.concurrency.max(1))
            .try_collect::<()>()
            .await
    }

    /// Bytes `first..=last` of `object`, pinned to its listed ETag; the body must arrive within
    /// the attempt timeout.
    async fn fetch_part(&self, client: &Client, object: &Listed, first: u64, last: u64) -> Result<bytes::Bytes, PartError> {
        let mut get = client.get_object().bucket(&self.bucket).key(&object.key).range(format!("bytes={first}-{last}"));
        if !object.etag.is_empty() {
            get = get.if_match(&object.etag);
        }
        let response = get.send().await.map_err(|e| PartError::Source(classify(&object.expected.url, e)))?;
        let timeout = self.connector.settings.attempt_timeout;
        let bytes = tokio::time::timeout(timeout, response.body.collect())
            .await
            .map_err(|_| PartError::Body(format!("body not received within {timeout:?}")))?
            .map_err(|e| PartError::Body(format!("download interrupted: {}", DisplayErrorContext(&e))))?
            .into_bytes();
        if bytes.len() as u64 != last - first + 1 {
            return Err(PartError::Body(format!("came back as {} bytes", bytes.len())));
        }
        Ok(bytes)
    }

    async fn fetch_into_cache(&self) -> Result<LocalModel, SourceError> {
        let listed = self.list().await?;
        let version = {
            let mut digest = Sha256::new();
            for l in &listed {
                digest.update(format!("{}\0{}\0{}\n", l.expected.file, l.etag, l.expected.size));
            }
            hex::encode(&digest.finalize()[..8])
        };
        // Each transfer owns its listing entry: a future borrowing the closure's argument fails
        // the compiler's `Send` check for every lifetime of it.
        let download = |object: &Listed, path: PathBuf| {
            let object = object.clone();
            async move { self.download(&object, &path).await }
        };
        self.cache.publish(&version, &listed, download).await
    }
}

impl ModelSource for S3Source {
    fn fetch(&self) -> SourceFuture<'_> {
        Box::pin(self.fetch_into_cache())
    }
}

/// Why one ranged part failed: the request itself (already retried by the SDK), or its body.
enum PartError {
    Source(SourceError),
    Body(String),
}

/// S3 errors: absent objects and buckets are [`SourceError::NotFound`], the rest (after the
/// SDK's retries) [`SourceError::Unavailable`].
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(what: &str, error: SdkError<E, R>) -> SourceError {
    if let SdkError::ServiceError(service) = &error {
        let code = service.err().code().unwrap_or("");
        if matches!(code, "NoSuchKey" | "NoSuchBucket" | "NotFound") {
            return SourceError::NotFound(format!("{what}: {code}"));
        }
        if code == "PreconditionFailed" {
            return SourceError::Unavailable(format!("{what}: the object changed during the download; try again"));
        }
    }
    // S3's messages can name the account and the caller's role: the whole text goes to the
    // operator's log, the client gets the error's code.
    let kind = match &error {
        SdkError::ServiceError(service) => service.err().code().unwrap_or("unknown service error").to_string(),
        SdkError::TimeoutError(_) => "timeout".into(),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => "timeout".into(),
        SdkError::DispatchFailure(failure) if failure.is_io() => "connection failed".into(),
        SdkError::DispatchFailure(_) => "request not sent".into(),
        SdkError::ResponseError(_) => "unreadable response".into(),
        _ => "request not built".into(),
    };
    tracing::warn!(what, kind, error = %DisplayErrorContext(&error), "S3 request failed");
    SourceError::Unavailable(format!("{what}: S3 request failed ({kind}); the host's log has the details"))
}
