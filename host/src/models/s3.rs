//! Models in S3, fetched into a local cache (under `/tmp` in Lambda) and reused while warm.
//!
//! Every object directly under the model's prefix is fetched: first a `HeadObject` pinned to
//! the listed ETag (`If-Match`), which tells the object's version, its encryption and the
//! checksum S3 stored; then concurrent ranged GETs pinned to that version (in versioned
//! buckets) and to the ETag, so an object replaced mid-download is either still read whole from
//! the listed version or fails cleanly, never mixed. What S3 vouches for ([`integrity`]): the
//! stored full-object checksum, else the ETag as MD5 where S3 says it is one (single-part, and
//! neither SSE-KMS nor SSE-C). Verification against it and the manifest's SHA-256, the
//! free-space check and the atomic publication are the shared step in [`super::download`].
//! Throttling, 5xx answers and timeouts are retried with backoff by the SDK's standard retry
//! policy; a server that stays down becomes [`SourceError::Unavailable`].

use super::download::{DownloadBudget, DownloadCache, Expected, Integrity};
use super::{LocalModel, MODEL_FILES, ModelSource, S3Settings, SourceError, SourceFuture, local_failure};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType, ServerSideEncryption};
use aws_smithy_checksums::ChecksumAlgorithm;
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
            let mut config = aws_sdk_s3::config::Builder::from(&shared);
            // AWS endpoints keep the SDK's checksum defaults. A custom endpoint is an
            // S3-compatible server (moto in the tests): path-style addressing, and the SDK's
            // own checksums only where an operation requires them, since some such servers
            // reject the ones newer SDKs send by default. The host's check of the checksum
            // the store keeps (`integrity`) does not depend on these settings.
            if shared.endpoint_url().is_some() {
                config = config
                    .force_path_style(true)
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                    .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
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
                plain.then(|| Listed {
                    expected: Expected {
                        url: self.url(&file),
                        size: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
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

    /// The listed object's metadata, with the checksum S3 stored; fails if it was replaced
    /// since the listing.
    async fn head(&self, client: &Client, object: &Listed) -> Result<HeadObjectOutput, SourceError> {
        let mut head = client.head_object().bucket(&self.bucket).key(&object.key).checksum_mode(ChecksumMode::Enabled);
        if !object.etag.is_empty() {
            head = head.if_match(&object.etag);
        }
        head.send().await.map_err(|e| classify(&object.expected.url, e))
    }

    /// Downloads `object` into `dest`; answers what S3 vouches for about its content.
    async fn download(&self, object: &Listed, dest: &Path) -> Result<Integrity, SourceError> {
        let client = &self.connector.client().await;
        let head = self.head(client, object).await?;
        let version = head.version_id();
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
                        match self.fetch_part(client, object, version, first, last).await {
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
            .await?;
        Ok(integrity(&head))
    }

    /// Bytes `first..=last` of `object`, pinned to `version` (in a versioned bucket) and to its
    /// listed ETag; the body must arrive within the attempt timeout.
    async fn fetch_part(
        &self,
        client: &Client,
        object: &Listed,
        version: Option<&str>,
        first: u64,
        last: u64,
    ) -> Result<bytes::Bytes, PartError> {
        let mut get = client.get_object().bucket(&self.bucket).key(&object.key).range(format!("bytes={first}-{last}"));
        if let Some(version) = version {
            get = get.version_id(version);
        }
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

/// What S3 vouches for about an object's content, from its `HeadObject` (checksum mode on):
/// the checksum it stored where that covers the whole object (every single-part upload's, and a
/// multipart upload's of type `FULL_OBJECT`; a `COMPOSITE` one is a checksum of the parts'
/// checksums), else the ETag where it is the content's MD5: a single-part upload, unencrypted
/// or SSE-S3 (SSE-KMS, DSSE-KMS and SSE-C objects have other ETags).
fn integrity(head: &HeadObjectOutput) -> Integrity {
    let etag = head.e_tag().unwrap_or_default().trim_matches('"');
    let multipart = etag.contains('-');
    let stored = [
        (ChecksumAlgorithm::Crc64Nvme, head.checksum_crc64_nvme()),
        (ChecksumAlgorithm::Crc32c, head.checksum_crc32_c()),
        (ChecksumAlgorithm::Crc32, head.checksum_crc32()),
        (ChecksumAlgorithm::Sha1, head.checksum_sha1()),
        (ChecksumAlgorithm::Sha256, head.checksum_sha256()),
    ]
    .into_iter()
    .find_map(|(algorithm, value)| value.map(|value| (algorithm, value)));
    // Before full-object checksums existed every multipart checksum was composite, and S3 may
    // not name the type; a composite value ends in `-<parts>`.
    let full_object = match head.checksum_type() {
        Some(ChecksumType::FullObject) => true,
        Some(_) => false,
        None => !multipart,
    };
    let mut why = match stored {
        Some((algorithm, base64)) if full_object && !is_part_level(base64) => {
            return Integrity::Stored { algorithm, base64: base64.to_string() };
        }
        Some((algorithm, _)) => {
            format!("the {} checksum S3 stored is of the parts, not the whole object", algorithm.as_str().to_ascii_uppercase())
        }
        None => "S3 stored no checksum of it".to_string(),
    };
    let encryption = match (head.server_side_encryption(), head.sse_customer_algorithm()) {
        (_, Some(_)) => Some("SSE-C"),
        (None | Some(ServerSideEncryption::Aes256), None) => None,
        (Some(ServerSideEncryption::AwsKmsDsse), None) => Some("DSSE-KMS"),
        (Some(ServerSideEncryption::AwsKms), None) => Some("SSE-KMS"),
        (Some(other), None) => Some(other.as_str()),
    };
    let md5 = etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit());
    match (md5, encryption) {
        (true, None) => return Integrity::Md5(etag.to_string()),
        (true, Some(encryption)) => why.push_str(&format!(", and the ETag of an object encrypted with {encryption} is not its MD5")),
        (false, _) if multipart => why.push_str(", and the ETag of a multipart upload is not an MD5"),
        (false, _) => why.push_str(", and its ETag is not an MD5"),
    }
    Integrity::Unknown(why)
}

/// Whether an S3 checksum value is a composite one (`<base64>-<parts>`).
fn is_part_level(value: &str) -> bool {
    value.rsplit_once('-').is_some_and(|(_, parts)| !parts.is_empty() && parts.bytes().all(|b| b.is_ascii_digit()))
}

/// Why one ranged part failed: the request itself (already retried by the SDK), or its body.
enum PartError {
    Source(SourceError),
    Body(String),
}

/// S3 errors: absent objects and buckets are [`SourceError::NotFound`], the rest (after the
/// SDK's retries) [`SourceError::Unavailable`]. Errors of `HeadObject` have no body, so no
/// code: their HTTP status stands in for it.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(what: &str, error: SdkError<E, HttpResponse>) -> SourceError {
    let code = match &error {
        SdkError::ServiceError(service) => Some(match service.err().code() {
            Some(code) => code.to_string(),
            None => match service.raw().status().as_u16() {
                404 => "NotFound".to_string(),
                412 => "PreconditionFailed".to_string(),
                status => format!("HTTP {status}"),
            },
        }),
        _ => None,
    };
    match code.as_deref() {
        Some(code @ ("NoSuchKey" | "NoSuchBucket" | "NotFound")) => return SourceError::NotFound(format!("{what}: {code}")),
        Some("PreconditionFailed") => {
            return SourceError::Unavailable(format!("{what}: the object changed during the download; try again"));
        }
        _ => {}
    }
    // S3's messages can name the account and the caller's role: the whole text goes to the
    // operator's log, the client gets the error's code.
    let kind = match &error {
        SdkError::ServiceError(_) => code.unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const MD5: &str = "\"6134696ca1b050d4564d58a18aa9d35a\"";
    const MULTIPART: &str = "\"217bcdbfd94559bd33931bf9e67899f6-2\"";

    fn head(etag: &str) -> aws_sdk_s3::operation::head_object::builders::HeadObjectOutputBuilder {
        HeadObjectOutput::builder().e_tag(etag)
    }

    fn stored(algorithm: ChecksumAlgorithm, base64: &str) -> Integrity {
        Integrity::Stored { algorithm, base64: base64.into() }
    }

    fn unknown(integrity: Integrity) -> String {
        match integrity {
            Integrity::Unknown(why) => why,
            other => panic!("expected no check, got {other:?}"),
        }
    }

    #[test]
    fn a_full_object_checksum_wins_over_the_etag_whatever_the_upload_and_encryption() {
        let crc64 = head(MULTIPART).checksum_crc64_nvme("KBwwtcVhIVs=").checksum_type(ChecksumType::FullObject).build();
        assert_eq!(integrity(&crc64), stored(ChecksumAlgorithm::Crc64Nvme, "KBwwtcVhIVs="));
        let kms =
            head(MD5).checksum_sha256("Bir5zNiQuj0GfKcVAni8xCAGm9gvbkEWECkwPf1tZh4=").server_side_encryption(ServerSideEncryption::AwsKms);
        assert_eq!(integrity(&kms.build()), stored(ChecksumAlgorithm::Sha256, "Bir5zNiQuj0GfKcVAni8xCAGm9gvbkEWECkwPf1tZh4="));
        // A single-part upload's checksum covers the whole object even where S3 names no type.
        assert_eq!(integrity(&head(MD5).checksum_crc32("qfbJrg==").build()), stored(ChecksumAlgorithm::Crc32, "qfbJrg=="));
        let c = head(MD5).checksum_crc32_c("AAAAAA==").checksum_type(ChecksumType::FullObject).build();
        assert_eq!(integrity(&c), stored(ChecksumAlgorithm::Crc32c, "AAAAAA=="));
        assert_eq!(integrity(&head(MD5).checksum_sha1("x").build()), stored(ChecksumAlgorithm::Sha1, "x"));
    }

    #[test]
    fn a_composite_checksum_is_not_used_and_the_etag_is_an_md5_only_where_s3_says_so() {
        // Composite: by type, by its `-<parts>` suffix, or a multipart upload's with no type.
        let typed = head(MULTIPART).checksum_crc32("y8b2pQ==").checksum_type(ChecksumType::Composite).build();
        assert!(unknown(integrity(&typed)).contains("CRC32 checksum S3 stored is of the parts"));
        let suffixed = head(MULTIPART).checksum_sha256("abc=-2").checksum_type(ChecksumType::FullObject).build();
        assert!(unknown(integrity(&suffixed)).contains("SHA256 checksum S3 stored is of the parts"));
        let untyped = head(MULTIPART).checksum_crc32("y8b2pQ==").build();
        assert!(unknown(integrity(&untyped)).contains("multipart upload is not an MD5"));
        // No checksum: the ETag, where it is an MD5.
        assert_eq!(integrity(&head(MD5).build()), Integrity::Md5(MD5.trim_matches('"').into()));
        let sse_s3 = head(MD5).server_side_encryption(ServerSideEncryption::Aes256).build();
        assert_eq!(integrity(&sse_s3), Integrity::Md5(MD5.trim_matches('"').into()));
        for (encryption, name) in [(ServerSideEncryption::AwsKms, "SSE-KMS"), (ServerSideEncryption::AwsKmsDsse, "DSSE-KMS")] {
            let why = unknown(integrity(&head(MD5).server_side_encryption(encryption).build()));
            assert!(why.contains("S3 stored no checksum") && why.contains(&format!("encrypted with {name} is not its MD5")), "{why}");
        }
        let sse_c = head(MD5).sse_customer_algorithm("AES256").build();
        assert!(unknown(integrity(&sse_c)).contains("encrypted with SSE-C"));
        assert!(unknown(integrity(&head(MULTIPART).build())).contains("multipart upload"));
        assert!(unknown(integrity(&head("").build())).contains("its ETag is not an MD5"));
    }

    #[test]
    fn a_head_object_error_without_a_body_is_named_by_its_status() {
        use aws_sdk_s3::error::ErrorMetadata;
        use aws_sdk_s3::operation::head_object::HeadObjectError;
        use aws_sdk_s3::primitives::SdkBody;
        let error = |status: u16, code: Option<&str>| {
            let mut meta = ErrorMetadata::builder();
            if let Some(code) = code {
                meta = meta.code(code);
            }
            let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
            classify("s3://b/k", SdkError::service_error(HeadObjectError::generic(meta.build()), raw))
        };
        assert!(matches!(error(412, None), SourceError::Unavailable(text) if text.contains("changed during the download")));
        assert!(matches!(error(404, None), SourceError::NotFound(text) if text == "s3://b/k: NotFound"));
        assert!(matches!(error(503, None), SourceError::Unavailable(text) if text.contains("(HTTP 503)")));
        assert!(matches!(error(503, Some("SlowDown")), SourceError::Unavailable(text) if text.contains("(SlowDown)")));
        assert!(matches!(error(404, Some("NoSuchBucket")), SourceError::NotFound(text) if text.ends_with("NoSuchBucket")));
    }
}
