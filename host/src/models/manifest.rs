//! The model manifest: which name is served from which source.
//!
//! From `QA_MODELS`, comma-separated `name=location` pairs:
//!
//! ```text
//! QA_MODELS="nlp1=s3://my-bucket/models/nlp1/,nlp2=efs:/mnt/lambda/models/nlp2,nlp3=image:/opt/models/nlp3"
//! ```
//!
//! and/or from the JSON file named by `QA_MODELS_FILE`, which may also pin each file's
//! SHA-256 (checked after every S3 download):
//!
//! ```json
//! {"nlp1": {"source": "s3://my-bucket/models/nlp1/", "sha256": {"model.onnx": "9f86d08..."}},
//!  "nlp2": "efs:/mnt/lambda/models/nlp2"}
//! ```
//!
//! Locations: `s3://bucket/prefix/` (every object directly under the prefix is fetched),
//! `efs:/absolute/dir`, `image:/absolute/dir`. Entries here override models discovered in
//! the models directory under the same name.

use super::is_valid_name;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    Efs(PathBuf),
    Image(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub location: Location,
    /// File name → expected lowercase hex SHA-256.
    pub sha256: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("model manifest: {0}")]
pub struct ManifestError(String);

impl ManifestError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

pub fn parse_location(text: &str) -> Result<Location, ManifestError> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ManifestError(format!("{text:?} has no bucket")));
        }
        let prefix = match prefix.trim_end_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        super::s3_available().map_err(|why| ManifestError(format!("{text:?}: {why}")))?;
        return Ok(Location::S3 { bucket: bucket.to_string(), prefix });
    }
    let dir = |path: &str| {
        let path = PathBuf::from(path);
        if path.is_absolute() { Ok(path) } else { Err(ManifestError(format!("{text:?}: the directory must be an absolute path"))) }
    };
    if let Some(path) = text.strip_prefix("efs:") {
        return dir(path).map(Location::Efs);
    }
    if let Some(path) = text.strip_prefix("image:") {
        return dir(path).map(Location::Image);
    }
    Err(ManifestError(format!("{text:?}: a location starts with s3://, efs: or image:")))
}

fn entry(name: &str, location: &str, sha256: BTreeMap<String, String>) -> Result<Entry, ManifestError> {
    let name = name.trim();
    if !is_valid_name(name) {
        return Err(ManifestError(format!("{name:?} is not a model name (letters, digits, '-', '_', '.')")));
    }
    if let Some((file, hash)) = sha256.iter().find(|(_, h)| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(ManifestError(format!("{name}: sha256 of {file} is not 64 hex digits: {hash:?}")));
    }
    let sha256 = sha256.into_iter().map(|(f, h)| (f, h.to_ascii_lowercase())).collect();
    Ok(Entry { name: name.to_string(), location: parse_location(location)?, sha256 })
}

/// Parses `QA_MODELS`.
pub fn parse_env(text: &str) -> Result<Vec<Entry>, ManifestError> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, location) = pair.split_once('=').ok_or_else(|| ManifestError(format!("{pair:?} is not name=location")))?;
            entry(name, location, BTreeMap::new())
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileEntry {
    Location(String),
    Detailed {
        source: String,
        #[serde(default)]
        sha256: BTreeMap<String, String>,
    },
}

/// Parses the JSON manifest file's content.
pub fn parse_file(json: &str) -> Result<Vec<Entry>, ManifestError> {
    let entries: BTreeMap<String, FileEntry> = serde_json::from_str(json).map_err(|e| ManifestError(e.to_string()))?;
    entries
        .into_iter()
        .map(|(name, e)| match e {
            FileEntry::Location(location) => entry(&name, &location, BTreeMap::new()),
            FileEntry::Detailed { source, sha256 } => entry(&name, &source, sha256),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let entries = parse_env("nlp1=s3://bucket/models/nlp1/,nlp2=efs:/mnt/lambda/models/nlp2, nlp3=image:/opt/models/nlp3").unwrap();
        assert_eq!(entries[0].location, Location::S3 { bucket: "bucket".into(), prefix: "models/nlp1/".into() });
        assert_eq!(entries[1].location, Location::Efs("/mnt/lambda/models/nlp2".into()));
        assert_eq!(entries[2].location, Location::Image("/opt/models/nlp3".into()));
    }

    #[test]
    fn prefixes_are_normalised_to_end_with_a_slash() {
        assert_eq!(parse_location("s3://b/m").unwrap(), Location::S3 { bucket: "b".into(), prefix: "m/".into() });
        assert_eq!(parse_location("s3://b").unwrap(), Location::S3 { bucket: "b".into(), prefix: String::new() });
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        for bad in ["nlp1", "nlp1=ftp://x", "nlp1=efs:relative/dir", "../x=efs:/a", "n=s3:///prefix"] {
            assert!(parse_env(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_file_form_carries_checksums() {
        let hash = "AB".repeat(32);
        let json = format!(r#"{{"nlp1": {{"source": "s3://b/p/", "sha256": {{"model.onnx": "{hash}"}}}}, "nlp2": "efs:/mnt/x"}}"#);
        let entries = parse_file(&json).unwrap();
        assert_eq!(entries[0].sha256["model.onnx"], hash.to_ascii_lowercase());
        assert_eq!(entries[1].location, Location::Efs("/mnt/x".into()));
        assert!(parse_file(r#"{"nlp1": {"source": "s3://b/p/", "sha256": {"model.onnx": "xyz"}}}"#).is_err());
    }
}
