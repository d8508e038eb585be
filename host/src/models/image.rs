//! Models baked into the deployment (the container image, or `./models` in the repository):
//! a local directory, read with no network at all.

use super::{MODEL_FILES, ModelSource, SourceError, SourceFuture};
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
    fn local_dir(&self) -> SourceFuture<'_> {
        Box::pin(async move {
            for file in MODEL_FILES {
                let path = self.dir.join(file);
                if !path.is_file() {
                    return Err(SourceError::NotFound(format!("{} is missing", path.display())));
                }
            }
            Ok(self.dir.clone())
        })
    }
}
