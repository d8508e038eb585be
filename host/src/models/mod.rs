//! Where models come from. A model is a directory holding `model.onnx`, `tokenizer.json` and
//! `config.json`; a [`ModelSource`] makes that directory available locally: [`ImageSource`]
//! (baked into the deployment), [`EfsSource`] (a mounted file system) and [`S3Source`]
//! (downloaded into a cache under `/tmp`). The [`ModelCatalog`] maps the names requests use
//! (`model_type`) to sources, from a manifest ([`manifest`]) and by discovering directories.

#[cfg(feature = "s3")]
pub mod download;
mod efs;
mod image;
pub mod manifest;
#[cfg(feature = "s3")]
pub mod s3;
/// A host built without the `s3` feature (the README's first command, which answers from the
/// image's model) has no S3 client; its settings refuse S3 locations (`s3_available`).
#[cfg(not(feature = "s3"))]
#[path = "s3_absent.rs"]
pub mod s3;
mod s3_settings;

pub use efs::EfsSource;
pub use image::ImageSource;
pub use s3::{S3Connector, S3Source};
pub use s3_settings::S3Settings;

/// Whether this build can fetch from S3; where not, what to do about it, for the setting that
/// named an `s3://` location.
pub fn s3_available() -> Result<(), &'static str> {
    if cfg!(feature = "s3") {
        Ok(())
    } else {
        Err("this qa-host was built without S3 support (the `s3` cargo feature, left out by `scripts/run.sh` \
             to answer sooner): build it with `bash scripts/setup.sh` or `cargo build -p qa-host`")
    }
}

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

/// The files every model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["model.onnx", "tokenizer.json", "config.json"];

/// Why a model's files could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source answered, and the model (or one of its files) is not there.
    #[error("{0}")]
    NotFound(String),
    /// The source could not be reached, read or stored locally (a 503-class condition).
    #[error("{0}")]
    Unavailable(String),
    /// What the source returned failed verification (size, ETag or sha256); nothing was kept.
    #[error("{0}")]
    Corrupt(String),
}

/// A model's files on local disk, and a fingerprint of their content: when it changes, the
/// model is reloaded.
#[derive(Clone, Debug)]
pub struct LocalModel {
    pub dir: PathBuf,
    pub version: String,
    /// Keeps a downloaded version's directory on disk while whoever holds this uses it (see
    /// [`VersionLease`]); `None` for files the host does not own (the image, EFS).
    pub lease: Option<Arc<VersionLease>>,
}

/// A downloaded version's directory, kept while anyone holds the lease: once a newer version
/// replaces it, it is removed when the last holder (a loaded model, and so every request still
/// running on it) lets go.
#[derive(Debug)]
pub struct VersionLease {
    dir: PathBuf,
    superseded: std::sync::atomic::AtomicBool,
}

impl VersionLease {
    pub fn new(dir: PathBuf) -> Self {
        VersionLease { dir, superseded: std::sync::atomic::AtomicBool::new(false) }
    }

    /// A newer version was published: remove this one once nobody holds it.
    pub fn supersede(&self) {
        self.superseded.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for VersionLease {
    fn drop(&mut self) {
        if self.superseded.load(std::sync::atomic::Ordering::Acquire) {
            tracing::info!(dir = %self.dir.display(), "removing a replaced model version, no longer in use");
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub type SourceFuture<'a> = Pin<Box<dyn Future<Output = Result<LocalModel, SourceError>> + Send + 'a>>;

/// One model's storage: makes the model's files available in a local directory.
pub trait ModelSource: Send + Sync + std::fmt::Debug {
    /// Returns the local directory holding [`MODEL_FILES`] and the content's version.
    fn fetch(&self) -> SourceFuture<'_>;

    /// Whether the content can change while the process runs (and so is re-checked after the
    /// model TTL). Models baked into the image cannot.
    fn can_change(&self) -> bool {
        true
    }
}

/// Model names → sources, plus the model used when a request names none.
#[derive(Clone, Debug, Default)]
pub struct ModelCatalog {
    sources: BTreeMap<String, Arc<dyn ModelSource>>,
    default: Option<String>,
    /// The client the S3 models share, when there are any.
    s3: Option<Arc<S3Connector>>,
}

impl ModelCatalog {
    /// Every sub-directory of `root` holding a `model.onnx` becomes an image model of that
    /// name. A missing `root` is an empty catalog (models may all come from a manifest).
    pub fn discover(root: &Path) -> Self {
        let mut catalog = Self::default();
        let Ok(entries) = std::fs::read_dir(root) else { return catalog };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if dir.join("model.onnx").is_file() && is_valid_name(&name) {
                catalog.insert(name, Arc::new(ImageSource::new(dir)));
            }
        }
        catalog
    }

    /// Image models discovered in `models_dir`, then the manifest's entries (which win on a
    /// name clash). S3 models share one client built from `s3`.
    pub fn build(models_dir: &Path, manifest: &[manifest::Entry], s3: S3Settings) -> Self {
        let mut catalog = Self::discover(models_dir);
        let connector = S3Connector::new(s3);
        for entry in manifest {
            let source: Arc<dyn ModelSource> = match &entry.location {
                manifest::Location::S3 { bucket, prefix } => {
                    catalog.s3 = Some(connector.clone());
                    Arc::new(S3Source::new(connector.clone(), &entry.name, bucket, prefix, entry.sha256.clone()))
                }
                manifest::Location::Efs(dir) => Arc::new(EfsSource::new(dir.clone())),
                manifest::Location::Image(dir) => Arc::new(ImageSource::new(dir.clone())),
            };
            catalog.insert(entry.name.clone(), source);
        }
        catalog
    }

    /// The S3 client of the catalog's S3 models, if it has any.
    pub fn s3_connector(&self) -> Option<&Arc<S3Connector>> {
        self.s3.as_ref()
    }

    /// The models whose content cannot change while the process runs (those in the image).
    pub fn unchanging(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter(|(_, source)| !source.can_change()).map(|(name, _)| name.as_str())
    }

    pub fn insert(&mut self, name: String, source: Arc<dyn ModelSource>) {
        self.sources.insert(name, source);
    }

    /// Sets the model used when a request names none; without this, the first name in
    /// alphabetical order.
    pub fn set_default(&mut self, name: Option<String>) {
        self.default = name;
    }

    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref().or_else(|| self.sources.keys().next().map(String::as_str))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn ModelSource>> {
        self.sources.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }
}

/// Model names are plain identifiers: they become directory names and wasi-nn graph names.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// Checks that `dir` holds every file of [`MODEL_FILES`], naming the first one missing.
fn check_model_dir(dir: &Path) -> Result<(), SourceError> {
    if !dir.is_dir() {
        tracing::warn!(dir = %dir.display(), "model directory does not exist");
        return Err(SourceError::NotFound("the model's directory does not exist (the host's log names it)".into()));
    }
    for file in MODEL_FILES {
        let path = dir.join(file);
        if !path.is_file() {
            tracing::warn!(path = %path.display(), "model file missing");
            return Err(SourceError::NotFound(format!("{file} is missing from the model's directory")));
        }
    }
    Ok(())
}

/// A local file system failure. Error text reaches clients, so it names only `what`; the
/// path goes to the log.
pub(crate) fn local_failure(what: &str, path: &Path, error: impl std::fmt::Display) -> SourceError {
    tracing::warn!(path = %path.display(), %error, what, "model storage: local file system failure");
    SourceError::Unavailable(format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_directory_are_not_model_names() {
        for bad in ["", ".", "..", "../etc", "a/b", "a\\b", ".hidden", "http://x", "ü"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        for good in ["nlp1", "minilm-l6_squad", "v1.2"] {
            assert!(is_valid_name(good), "{good:?}");
        }
    }

    #[test]
    fn discovery_finds_model_directories_and_picks_a_default() {
        let root = tempfile::tempdir().unwrap();
        for name in ["nlp2", "nlp1"] {
            std::fs::create_dir(root.path().join(name)).unwrap();
            std::fs::write(root.path().join(name).join("model.onnx"), b"x").unwrap();
        }
        std::fs::create_dir(root.path().join("not-a-model")).unwrap();
        let mut catalog = ModelCatalog::discover(root.path());
        assert_eq!(catalog.names().collect::<Vec<_>>(), ["nlp1", "nlp2"]);
        assert_eq!(catalog.default_name(), Some("nlp1"));
        catalog.set_default(Some("nlp2".into()));
        assert_eq!(catalog.default_name(), Some("nlp2"));
        assert_eq!(ModelCatalog::discover(&root.path().join("absent")).names().count(), 0);
    }
}
