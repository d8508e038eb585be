//! The fetch-and-publish step every remote source shares: files are downloaded into a private
//! partial directory, each verified against what the source listed (size, MD5, SHA-256), and
//! the directory is renamed into place only when complete, so a crash, a kill or a truncated
//! download never leaves files a later request would load. Free space is checked first;
//! interrupted downloads of dead processes are swept; a replaced version stays on disk until
//! the last request using it lets go ([`VersionLease`]).
//!
//! A source brings the listing, the version fingerprint and the transfer of one file
//! ([`DownloadCache::publish`]'s `download`), which says what the source vouches for about the
//! content ([`Integrity`]); everything else is here, verification included: the file is checked
//! whole, as assembled on disk, since sources fetch it in ranged parts.

use super::{LocalModel, SourceError, VersionLease, local_failure};
use aws_smithy_checksums::ChecksumAlgorithm;
use base64::Engine as _;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// What a downloaded file must be.
#[derive(Clone, Debug)]
pub struct Expected {
    /// File name within the model's directory.
    pub file: String,
    /// Where it comes from, for error messages (`s3://bucket/key`).
    pub url: String,
    pub size: u64,
    /// Hex SHA-256 of the content, when the operator pinned one in the manifest: checked
    /// whatever the source vouches for.
    pub sha256: Option<String>,
}

/// What the source vouches for about a file's content beyond its size, the strongest it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// A checksum of the whole content that the store keeps (S3's full-object
    /// `x-amz-checksum-*`): the algorithm and the value as the store gives it (base64).
    Stored { algorithm: ChecksumAlgorithm, base64: String },
    /// The content's MD5 in hex (the ETag of an S3 single-part upload that is neither SSE-KMS
    /// nor SSE-C encrypted).
    Md5(String),
    /// Nothing; why, for the operator's log.
    Unknown(String),
}

/// What the downloads of one execution environment may take together: how many run at once
/// (`QA_MODEL_DOWNLOADS`), and the cache space the running ones have claimed and not yet
/// published, so two downloads never both count on the same free space.
#[derive(Debug)]
pub struct DownloadBudget {
    running: tokio::sync::Semaphore,
    claimed: Mutex<u64>,
}

impl DownloadBudget {
    pub fn new(downloads: usize) -> Arc<Self> {
        Arc::new(Self { running: tokio::sync::Semaphore::new(downloads.max(1)), claimed: Mutex::new(0) })
    }

    /// Claims `needed` bytes of the `free` ones, leaving `reserve` free; `None` when they do
    /// not fit beside what running downloads claimed.
    fn claim(&self, needed: u64, free: u64, reserve: u64) -> Option<Claim<'_>> {
        let mut claimed = self.claimed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if free.saturating_sub(*claimed) < needed.saturating_add(reserve) {
            return None;
        }
        *claimed += needed;
        Some(Claim { budget: self, bytes: needed })
    }
}

/// Cache space a running download counts on; given back when it ends, published or not.
struct Claim<'a> {
    budget: &'a DownloadBudget,
    bytes: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut claimed = self.budget.claimed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *claimed = claimed.saturating_sub(self.bytes);
    }
}

/// One model's downloaded versions: `<root>/<version>/` each, published atomically.
#[derive(Debug)]
pub struct DownloadCache {
    /// The model's name, for logs and messages.
    name: String,
    /// Where the files come from ("S3"), for logs.
    origin: &'static str,
    root: PathBuf,
    /// Free space a download must leave in the cache's file system.
    reserve_bytes: u64,
    /// The versions handed out by this process, kept on disk while they are in use.
    leases: Mutex<HashMap<String, Weak<VersionLease>>>,
    /// Shared with the environment's other downloads.
    budget: Arc<DownloadBudget>,
}

/// Marker written last into a version directory: only complete downloads have it.
const COMPLETE: &str = ".complete";
/// Name prefix of in-progress download directories, never loaded.
const PARTIAL: &str = ".partial-";

impl DownloadCache {
    pub fn new(name: &str, origin: &'static str, root: PathBuf, reserve_bytes: u64, budget: Arc<DownloadBudget>) -> Self {
        Self { name: name.to_string(), origin, root, reserve_bytes, leases: Mutex::default(), budget }
    }

    /// `version`, if a complete download of it is already on disk.
    pub fn published(&self, version: &str) -> Option<LocalModel> {
        let dir = self.root.join(version);
        dir.join(COMPLETE).is_file().then(|| LocalModel { lease: Some(self.lease(version, &dir)), dir, version: version.to_string() })
    }

    /// Downloads `files` (each by `download(file, destination)`, which answers what the source
    /// vouches for), verifies each against its [`Expected`] and that [`Integrity`], and
    /// publishes them as `version`. On any failure nothing is kept. Waits for a turn of the
    /// environment's [`DownloadBudget`] first.
    pub async fn publish<T, F, Fut>(&self, version: &str, files: &[T], download: F) -> Result<LocalModel, SourceError>
    where
        T: AsRef<Expected>,
        F: Fn(&T, PathBuf) -> Fut,
        Fut: Future<Output = Result<Integrity, SourceError>>,
    {
        if let Some(published) = self.published(version) {
            return Ok(published);
        }
        let _turn = self.budget.running.acquire().await.map_err(|_| SourceError::Unavailable("downloads are shut down".into()))?;
        // Another request may have published it while this one waited for its turn.
        if let Some(published) = self.published(version) {
            return Ok(published);
        }
        let root = &self.root;
        let io = |e: std::io::Error| local_failure("the model cache", root, e);
        std::fs::create_dir_all(root).map_err(io)?;
        remove_leftovers(root, None, &[]);
        let needed: u64 = files.iter().map(|f| f.as_ref().size).sum();
        let free = free_bytes(root).map_err(io)?;
        let Some(_claim) = self.budget.claim(needed, free, self.reserve_bytes) else {
            return Err(SourceError::Unavailable(format!(
                "model {} needs {} MiB in the model cache (plus {} MiB kept free), only {} MiB are free besides what running downloads need; raise the function's ephemeral storage",
                self.name,
                needed.div_ceil(1 << 20),
                self.reserve_bytes >> 20,
                free >> 20
            )));
        };
        let dir = root.join(version);
        let partial = root.join(format!("{PARTIAL}{}-{version}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(io)?;
        let outcome = async {
            for file in files {
                let expected = file.as_ref().clone();
                let path = partial.join(&expected.file);
                let integrity = download(file, path.clone()).await?;
                let (origin, file) = (self.origin, expected.file.clone());
                let checks = tokio::task::spawn_blocking(move || verify(&expected, &integrity, origin, &path))
                    .await
                    .map_err(|e| SourceError::Unavailable(format!("verifying: {e}")))??;
                match checks {
                    Checked::By(checks) => tracing::info!(model = %self.name, %file, checks, "download verified"),
                    Checked::SizeOnly(why) => tracing::warn!(
                        model = %self.name,
                        %file,
                        why,
                        "download verified by its size only: pin its SHA-256 in the manifest (QA_MODELS_FILE), or upload it with a checksum"
                    ),
                }
            }
            std::fs::write(partial.join(COMPLETE), version.as_bytes()).map_err(io)?;
            match std::fs::rename(&partial, &dir) {
                Ok(()) => Ok(()),
                // Another process published the same version first: use theirs.
                Err(_) if dir.join(COMPLETE).is_file() => Ok(()),
                Err(e) => Err(io(e)),
            }
        }
        .await;
        if outcome.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        outcome?;
        let lease = self.lease(version, &dir);
        let in_use = self.supersede_all_but(version);
        remove_leftovers(root, Some(version), &in_use);
        tracing::info!(model = %self.name, bytes = needed, version, "fetched from {}", self.origin);
        Ok(LocalModel { dir, version: version.to_string(), lease: Some(lease) })
    }

    /// The lease on `version`: the one already held, or a new one.
    fn lease(&self, version: &str, dir: &Path) -> Arc<VersionLease> {
        let mut leases = self.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(lease) = leases.get(version).and_then(Weak::upgrade) {
            return lease;
        }
        let lease = Arc::new(VersionLease::new(dir.to_path_buf()));
        leases.insert(version.to_string(), Arc::downgrade(&lease));
        lease
    }

    /// Marks every other version as replaced (each is removed when its last user lets go);
    /// returns the versions still in use, which must not be removed now.
    fn supersede_all_but(&self, version: &str) -> Vec<String> {
        let mut leases = self.leases.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        leases.retain(|held, lease| held == version || lease.strong_count() > 0);
        leases
            .iter()
            .filter(|(held, _)| held.as_str() != version)
            .filter_map(|(held, lease)| lease.upgrade().map(|lease| (held, lease)))
            .map(|(held, lease)| {
                lease.supersede();
                held.clone()
            })
            .collect()
    }
}

/// What a verified file was checked against beyond its size, for the log.
#[derive(Debug, PartialEq, Eq)]
enum Checked {
    /// The checks made ("S3's stored CRC64NVME and the manifest's SHA-256").
    By(String),
    /// Nothing but the size could be checked; why.
    SizeOnly(String),
}

/// The file at `path` against its size, what the source vouches for (`integrity`, from
/// `origin`) and the manifest's SHA-256, in one pass over the assembled file.
fn verify(expected: &Expected, integrity: &Integrity, origin: &str, path: &Path) -> Result<Checked, SourceError> {
    let corrupt = |what: String| SourceError::Corrupt(format!("{}: {what}; the download was discarded", expected.url));
    let unreadable = |e: std::io::Error| local_failure("reading a downloaded file", path, e);
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut stored = match integrity {
        Integrity::Stored { algorithm, .. } => Some(algorithm.into_impl()),
        _ => None,
    };
    let mut md5 = matches!(integrity, Integrity::Md5(_)).then(Md5::new);
    let mut sha = expected.sha256.as_ref().map(|_| Sha256::new());
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        if let Some(stored) = stored.as_mut() {
            stored.update(&buffer[..n]);
        }
        if let Some(md5) = md5.as_mut() {
            md5.update(&buffer[..n]);
        }
        if let Some(sha) = sha.as_mut() {
            sha.update(&buffer[..n]);
        }
        total += n as u64;
    }
    if total != expected.size {
        return Err(corrupt(format!("{total} bytes, the listing says {}", expected.size)));
    }
    let mut checks = Vec::new();
    match integrity {
        Integrity::Stored { algorithm, base64 } => {
            let name = algorithm.as_str().to_ascii_uppercase();
            let got = stored.map(|s| base64::engine::general_purpose::STANDARD.encode(s.finalize())).unwrap_or_default();
            if got != *base64 {
                return Err(corrupt(format!("{name} {got} does not match the checksum {origin} stored, {base64}")));
            }
            checks.push(format!("{origin}'s stored {name}"));
        }
        Integrity::Md5(want) => {
            let got = md5.map(|m| hex::encode(m.finalize())).unwrap_or_default();
            if !got.eq_ignore_ascii_case(want) {
                return Err(corrupt(format!("MD5 {got} does not match the ETag {want}")));
            }
            checks.push("the ETag's MD5".to_string());
        }
        Integrity::Unknown(_) => {}
    }
    if let (Some(want), Some(sha)) = (&expected.sha256, sha) {
        let got = hex::encode(sha.finalize());
        if !got.eq_ignore_ascii_case(want) {
            return Err(corrupt(format!("SHA-256 {got} does not match the manifest's {want}")));
        }
        checks.push("the manifest's SHA-256".to_string());
    }
    Ok(match (checks.is_empty(), integrity) {
        (true, Integrity::Unknown(why)) => Checked::SizeOnly(why.clone()),
        _ => Checked::By(checks.join(" and ")),
    })
}

/// Removes downloads interrupted by processes that died (they were never loaded) and, once
/// `current` is published, older versions but those `in_use` (removed by their lease).
fn remove_leftovers(root: &Path, current: Option<&str>, in_use: &[String]) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.strip_prefix(PARTIAL).and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<u32>().ok());
        let stale_partial = owner.is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists());
        let old_version = current.is_some_and(|c| name != c && !name.starts_with('.')) && !in_use.contains(&name);
        if stale_partial || old_version {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file to publish, the bytes its "download" writes and what the source vouches for.
    struct Remote {
        expected: Expected,
        bytes: Vec<u8>,
        integrity: Integrity,
    }

    impl AsRef<Expected> for Remote {
        fn as_ref(&self) -> &Expected {
            &self.expected
        }
    }

    /// A file whose ETag is its MD5 and whose SHA-256 the manifest pins.
    fn remote(file: &str, bytes: &[u8]) -> Remote {
        let expected = Expected {
            file: file.into(),
            url: format!("test://{file}"),
            size: bytes.len() as u64,
            sha256: Some(hex::encode(Sha256::digest(bytes))),
        };
        Remote { expected, bytes: bytes.to_vec(), integrity: Integrity::Md5(hex::encode(Md5::digest(bytes))) }
    }

    /// `algorithm`'s checksum of `bytes` as S3 gives it (base64).
    fn stored(algorithm: &str, bytes: &[u8]) -> Integrity {
        let algorithm: ChecksumAlgorithm = algorithm.parse().unwrap();
        let mut checksum = algorithm.into_impl();
        checksum.update(bytes);
        Integrity::Stored { algorithm, base64: base64::engine::general_purpose::STANDARD.encode(checksum.finalize()) }
    }

    /// A transfer that writes the file's bytes at once.
    fn write(file: &Remote, path: PathBuf) -> std::future::Ready<Result<Integrity, SourceError>> {
        std::future::ready(
            std::fs::write(path, &file.bytes).map(|()| file.integrity.clone()).map_err(|e| SourceError::Unavailable(e.to_string())),
        )
    }

    /// Everything under `root` but directories.
    fn entries(root: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(root).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_verified_download_is_published_whole_and_found_again() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DownloadCache::new("m", "test", tmp.path().join("m"), 0, DownloadBudget::new(1));
        let files = [remote("model.onnx", b"weights"), remote("config.json", b"{}")];
        let model = cache.publish("v1", &files, write).await.unwrap();
        assert_eq!(model.dir, tmp.path().join("m/v1"));
        assert_eq!(std::fs::read(model.dir.join("model.onnx")).unwrap(), b"weights");
        assert_eq!(entries(&model.dir), [".complete", "config.json", "model.onnx"]);
        assert_eq!(entries(&tmp.path().join("m")), ["v1"], "no partial directory is left");
        let again = cache.published("v1").unwrap();
        assert!(Arc::ptr_eq(again.lease.as_ref().unwrap(), model.lease.as_ref().unwrap()), "one lease per version");
        assert!(cache.published("v2").is_none());
    }

    #[tokio::test]
    async fn a_size_stored_checksum_md5_or_sha256_mismatch_is_corrupt_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DownloadCache::new("m", "test", tmp.path().join("m"), 0, DownloadBudget::new(1));
        let tampered = |edit: fn(&mut Remote)| {
            let mut file = remote("model.onnx", b"weights");
            edit(&mut file);
            [remote("config.json", b"{}"), file]
        };
        type Tamper = fn(&mut Remote);
        let cases: [(&str, Tamper); 5] = [
            ("bytes, the listing says", |r| r.expected.size += 1),
            ("CRC64NVME", |r| r.integrity = stored("crc64nvme", b"other")),
            ("SHA256", |r| r.integrity = stored("sha256", b"other")),
            ("does not match the ETag", |r| r.integrity = Integrity::Md5(hex::encode(Md5::digest(b"other")))),
            ("does not match the manifest", |r| r.expected.sha256 = Some(hex::encode(Sha256::digest(b"other")))),
        ];
        for (message, edit) in cases {
            let error = cache.publish("v1", &tampered(edit), write).await.unwrap_err();
            assert!(
                matches!(&error, SourceError::Corrupt(text) if text.contains(message) && text.contains("test://model.onnx")),
                "{error}"
            );
            assert!(entries(&tmp.path().join("m")).is_empty(), "{message}: {:?}", entries(&tmp.path().join("m")));
            assert!(cache.published("v1").is_none());
        }
    }

    #[test]
    fn each_check_is_made_and_named_and_a_file_with_none_passes_on_its_size() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"weights").unwrap();
        let mut expected = remote("f", b"weights").expected;
        for algorithm in ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"] {
            let checked = verify(&expected, &stored(algorithm, b"weights"), "S3", &path).unwrap();
            let name = algorithm.to_ascii_uppercase();
            assert_eq!(checked, Checked::By(format!("S3's stored {name} and the manifest's SHA-256")));
            let error = verify(&expected, &stored(algorithm, b"weightz"), "S3", &path).unwrap_err();
            assert!(
                matches!(&error, SourceError::Corrupt(text) if text.contains(&format!("{name} ")) && text.contains("S3 stored")),
                "{error}"
            );
        }
        let md5 = Integrity::Md5(hex::encode(Md5::digest(b"weights")));
        assert_eq!(verify(&expected, &md5, "S3", &path).unwrap(), Checked::By("the ETag's MD5 and the manifest's SHA-256".into()));
        let none = Integrity::Unknown("no checksum".into());
        assert_eq!(verify(&expected, &none, "S3", &path).unwrap(), Checked::By("the manifest's SHA-256".into()));
        expected.sha256 = None;
        assert_eq!(verify(&expected, &none, "S3", &path).unwrap(), Checked::SizeOnly("no checksum".into()));
        expected.size += 1;
        assert!(matches!(verify(&expected, &none, "S3", &path), Err(SourceError::Corrupt(_))), "the size is always checked");
    }

    #[tokio::test]
    async fn a_failed_transfer_leaves_nothing_and_too_little_space_downloads_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DownloadCache::new("m", "test", tmp.path().join("m"), 0, DownloadBudget::new(1));
        let files = [remote("a", b"1"), remote("b", b"2")];
        // "a" arrives whole, "b" is cut off after some bytes.
        let cut = |file: &Remote, path: PathBuf| {
            let (bytes, fail) = (file.bytes.clone(), file.expected.file == "b");
            async move {
                std::fs::write(path, if fail { &b"partial"[..] } else { &bytes }).unwrap();
                if fail { Err(SourceError::Unavailable("connection reset".into())) } else { Ok(Integrity::Unknown("test".into())) }
            }
        };
        assert!(matches!(cache.publish("v1", &files, cut).await, Err(SourceError::Unavailable(_))));
        assert!(entries(&tmp.path().join("m")).is_empty());
        let greedy = DownloadCache::new("m", "test", tmp.path().join("m"), u64::MAX / 2, DownloadBudget::new(1));
        let called = std::sync::atomic::AtomicBool::new(false);
        let error = greedy
            .publish("v1", &files, |file, path| {
                called.store(true, std::sync::atomic::Ordering::Relaxed);
                write(file, path)
            })
            .await
            .unwrap_err();
        assert!(matches!(&error, SourceError::Unavailable(text) if text.contains("raise the function's ephemeral storage")), "{error}");
        assert!(!called.load(std::sync::atomic::Ordering::Relaxed), "nothing is downloaded without room for it");
    }

    #[tokio::test]
    async fn a_replaced_version_stays_while_in_use_and_a_dead_process_s_partial_is_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("m");
        let cache = DownloadCache::new("m", "test", root.clone(), 0, DownloadBudget::new(1));
        let old = cache.publish("v1", &[remote("f", b"1")], write).await.unwrap();
        // A download interrupted by a process that no longer exists (pid beyond pid_max).
        std::fs::create_dir_all(root.join(format!("{PARTIAL}4294967295-v0"))).unwrap();
        let new = cache.publish("v2", &[remote("f", b"2")], write).await.unwrap();
        assert_eq!(entries(&root), ["v1", "v2"], "v1 is still in use");
        assert_eq!(std::fs::read(old.dir.join("f")).unwrap(), b"1");
        drop(old);
        assert_eq!(entries(&root), ["v2"], "the last user of v1 let go");
        assert_eq!(std::fs::read(new.dir.join("f")).unwrap(), b"2");
    }

    /// Two models downloading into one environment's budget of one download at a time: the
    /// second starts only once the first is published; and space claimed by a running
    /// download is not counted as free by another.
    #[tokio::test]
    async fn downloads_take_turns_and_never_count_on_the_same_free_space() {
        let tmp = tempfile::tempdir().unwrap();
        let budget = DownloadBudget::new(1);
        let first = DownloadCache::new("a", "test", tmp.path().join("a"), 0, budget.clone());
        let second = DownloadCache::new("b", "test", tmp.path().join("b"), 0, budget.clone());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Mutex::new(Some(released));
        let order = Arc::new(Mutex::new(Vec::new()));
        let (a_files, b_files) = ([remote("f", b"1")], [remote("g", b"2")]);
        let a = first.publish("v1", &a_files, |file, path| {
            let (gate, bytes, order) = (released.lock().unwrap().take(), file.bytes.clone(), order.clone());
            async move {
                order.lock().unwrap().push("a started");
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                std::fs::write(path, bytes).map_err(|e| SourceError::Unavailable(e.to_string()))?;
                order.lock().unwrap().push("a written");
                Ok(Integrity::Unknown("test".into()))
            }
        });
        let b = second.publish("v1", &b_files, |file, path| {
            order.lock().unwrap().push("b started");
            write(file, path)
        });
        let referee = async {
            while order.lock().unwrap().is_empty() {
                tokio::task::yield_now().await;
            }
            // The first download holds the only turn: the second cannot have started.
            assert_eq!(*order.lock().unwrap(), ["a started"]);
            release.send(()).unwrap();
        };
        let (a, b, ()) = tokio::join!(a, b, referee);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(*order.lock().unwrap(), ["a started", "a written", "b started"]);
        let free = free_bytes(tmp.path()).unwrap();
        let claim = budget.claim(free / 2 + 1, free, 0).expect("half the space fits");
        assert!(budget.claim(free / 2 + 1, free, 0).is_none(), "the same space is not claimed twice");
        drop(claim);
        assert!(budget.claim(free / 2 + 1, free, 0).is_some(), "given back when the download ends");
    }
}
