//! Models baked into the deployment (the container image, or `./models` in the repository):
//! a local directory, read with no network at all, that cannot change while the process runs.

use super::{LocalModel, ModelSource, SourceFuture, check_model_dir};
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct ImageSource {
    dir: PathBuf,
}

impl ImageSource {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl ModelSource for ImageSource {
    fn fetch(&self) -> SourceFuture<'_> {
        Box::pin(async move {
            check_model_dir(&self.dir)?;
            Ok(LocalModel { dir: self.dir.clone(), version: "image".into(), lease: None })
        })
    }

    fn can_change(&self) -> bool {
        false
    }
}
