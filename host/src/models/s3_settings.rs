//! How S3 is reached and downloads are cut up: plain settings, read by the configuration
//! whether or not this build can reach S3 (the `s3` feature).

use std::path::PathBuf;
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
