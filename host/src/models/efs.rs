//! Models on a mounted file system (EFS in Lambda, mounted under `/mnt/...`): read in place;
//! the version is the files' sizes and modification times, so a model replaced on the file
//! system is noticed at the next check and reloaded.

use super::{LocalModel, MODEL_FILES, ModelSource, SourceError, SourceFuture, check_model_dir, local_failure};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

#[derive(Clone, Debug)]
pub struct EfsSource {
    dir: PathBuf,
}

impl EfsSource {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl ModelSource for EfsSource {
    fn fetch(&self) -> SourceFuture<'_> {
        Box::pin(async move {
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || {
                // Nothing of the path below `/` or `/mnt` exists: the file system is not mounted,
                // a deployment problem (503) rather than a missing model (404).
                let nearest = dir.ancestors().find(|a| a.exists());
                if nearest.is_none_or(|a| a == Path::new("/") || a == Path::new("/mnt")) {
                    tracing::warn!(dir = %dir.display(), "EFS model directory: no part of its path exists");
                    return Err(SourceError::Unavailable("the EFS file system is not mounted (the host's log names the path)".into()));
                }
                check_model_dir(&dir)?;
                let mut version = String::new();
                for file in MODEL_FILES {
                    let path = dir.join(file);
                    let meta = std::fs::metadata(&path).map_err(|e| local_failure(file, &path, e))?;
                    let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
                    let _ = write!(version, "{file}:{}:{}.{};", meta.len(), modified.as_secs(), modified.subsec_nanos());
                }
                Ok(LocalModel { dir, version, lease: None })
            })
            .await
            .map_err(|e| SourceError::Unavailable(format!("file system check: {e}")))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir(root: &std::path::Path) -> PathBuf {
        let dir = root.join("nlp2");
        std::fs::create_dir_all(&dir).unwrap();
        for file in MODEL_FILES {
            std::fs::write(dir.join(file), b"v1").unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn a_changed_file_changes_the_version() {
        let root = tempfile::tempdir().unwrap();
        let source = EfsSource::new(model_dir(root.path()));
        let before = source.fetch().await.unwrap();
        let again = source.fetch().await.unwrap();
        assert_eq!((again.dir, again.version), (before.dir.clone(), before.version.clone()), "unchanged files, same version");
        std::fs::write(root.path().join("nlp2/model.onnx"), b"version two").unwrap();
        assert_ne!(source.fetch().await.unwrap().version, before.version);
    }

    #[tokio::test]
    async fn a_missing_file_is_not_found_and_names_the_path() {
        let root = tempfile::tempdir().unwrap();
        let dir = model_dir(root.path());
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        let err = EfsSource::new(dir).fetch().await.unwrap_err();
        assert!(matches!(&err, SourceError::NotFound(m) if m.contains("tokenizer.json")), "{err}");
    }

    #[tokio::test]
    async fn a_missing_mount_is_unavailable() {
        let err = EfsSource::new("/mnt-that-does-not-exist/lambda/models/nlp2".into()).fetch().await.unwrap_err();
        assert!(
            matches!(&err, SourceError::Unavailable(m) if m.contains("not mounted") && !m.contains("/mnt-that-does-not-exist")),
            "{err}"
        );
    }
}
