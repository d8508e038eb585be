//! Models whose graph ONNX Runtime has already optimized, so that loading one skips the
//! optimizer: the shipped model's first session builds in about 0.7x the time, its cold load
//! in 0.88x (docs/performance.md, "Cold start"). `qa-host optimize-model DIR`, run when a package is built, replaces
//! `DIR/model.onnx` with the graph ONNX Runtime saves after its extended optimizations (the
//! level whose saved graphs hold no machine-specific layouts) and writes [`MARKER`] beside it:
//! which release optimized it, and the optimized file's CRC-32 (a check against a replaced
//! file, not a security boundary: whoever can write the marker can write the model).
//!
//! A model is loaded without optimizing only when the marker holds for the file being loaded:
//! the same ONNX Runtime release and the same bytes (by CRC-32: hashing the 34 MB shipped file
//! with SHA-256 took 26 ms of the ~40 ms that loading it as saved saves; CRC-32 with the read,
//! 7-9 ms). Anything else (no marker, another release, a replaced `model.onnx`, an unreadable
//! or oversized marker) loads it the usual way,
//! optimizing at load: a stale marker costs time, never an answer. (One written to match an
//! unoptimized file leaves that graph unoptimized: slower, as a model can be by design.)

use super::NnError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The marker's file name, beside `model.onnx`.
pub const MARKER: &str = "model.optimized.json";
/// Longest marker read: it is a model file, so it is untrusted; a real one is ~200 bytes.
const MARKER_MAX_BYTES: u64 = 4096;

/// What the marker records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// The ONNX Runtime release that optimized the graph (`1.31.1`).
    pub onnxruntime: String,
    /// The optimization level the graph was saved at (`extended`).
    pub level: String,
    /// CRC-32 (IEEE) of the optimized `model.onnx`, lowercase hex.
    pub crc32: String,
    /// SHA-256 of the model it was made from (provenance: not checked at load).
    pub source_sha256: String,
}

/// The only level `optimize-model` saves at.
pub const LEVEL: &str = "extended";

/// Whether `model` (a `model.onnx`) is a graph `runtime` (the loaded ONNX Runtime's release)
/// already optimized: its marker parses, names `runtime` and [`LEVEL`], and matches the file's
/// CRC-32; then the marker. Why not, when not, for the log.
pub fn already_optimized(model: &Path, runtime: &str) -> Result<Marker, String> {
    let marker_path = model.with_file_name(MARKER);
    let marker = match read_marker(&marker_path) {
        Ok(Some(marker)) => marker,
        Ok(None) => return Err("no marker".into()),
        Err(reason) => return Err(reason),
    };
    if marker.onnxruntime != runtime {
        return Err(format!("optimized by ONNX Runtime {}, this is {runtime}", marker.onnxruntime));
    }
    if marker.level != LEVEL {
        return Err(format!("saved at level {:?}, not {LEVEL:?}", marker.level));
    }
    let actual = crc32_of(model).map_err(|e| format!("reading model.onnx: {e}"))?;
    if actual != marker.crc32 {
        return Err("model.onnx is not the file the marker describes".into());
    }
    Ok(marker)
}

fn read_marker(path: &Path) -> Result<Option<Marker>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {MARKER}: {e}")),
    };
    let mut text = Vec::new();
    file.take(MARKER_MAX_BYTES + 1).read_to_end(&mut text).map_err(|e| format!("reading {MARKER}: {e}"))?;
    if text.len() as u64 > MARKER_MAX_BYTES {
        return Err(format!("{MARKER} is over {MARKER_MAX_BYTES} bytes"));
    }
    serde_json::from_slice(&text).map(Some).map_err(|e| format!("{MARKER}: {e}"))
}

/// SHA-256 of a file, read in blocks, as lowercase hex.
fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    each_block(path, |block| hasher.update(block))?;
    Ok(hex::encode(hasher.finalize()))
}

/// CRC-32 (IEEE) of a file, read in blocks, as lowercase hex.
fn crc32_of(path: &Path) -> std::io::Result<String> {
    let mut hasher = crc32fast::Hasher::new();
    each_block(path, |block| hasher.update(block))?;
    Ok(format!("{:08x}", hasher.finalize()))
}

fn each_block(path: &Path, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut block = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut block)?;
        if read == 0 {
            return Ok(());
        }
        each(&block[..read]);
    }
}

/// What [`optimize`] did.
#[derive(Debug)]
pub struct Optimized {
    pub model: PathBuf,
    pub marker: Marker,
}

/// Replaces `dir/model.onnx` with the graph `save` writes (ONNX Runtime's optimized graph of
/// it, saved to the path it is given) and writes the marker: the new file is written beside
/// the old one and renamed over it, the marker last, so an interrupted run leaves either the
/// old model without a marker or the new one (whose marker a rerun writes).
pub fn optimize(dir: &Path, runtime: &str, save: impl FnOnce(&Path, &Path) -> Result<(), NnError>) -> Result<Optimized, NnError> {
    let model = dir.join("model.onnx");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NnError::Io { path, source }
    };
    if let Ok(marker) = already_optimized(&model, runtime) {
        return Ok(Optimized { model, marker });
    }
    let source_sha256 = sha256_of(&model).map_err(io(&model))?;
    let partial = dir.join("model.onnx.optimizing");
    let _ = std::fs::remove_file(dir.join(MARKER));
    save(&model, &partial)?;
    let crc32 = crc32_of(&partial).map_err(io(&partial))?;
    std::fs::rename(&partial, &model).map_err(io(&model))?;
    let marker = Marker { onnxruntime: runtime.to_string(), level: LEVEL.to_string(), crc32, source_sha256 };
    let text = serde_json::to_vec_pretty(&marker).map_err(|e| NnError::Io { path: dir.join(MARKER), source: e.into() })?;
    std::fs::write(dir.join(MARKER), text).map_err(io(&dir.join(MARKER)))?;
    Ok(Optimized { model, marker })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_marker(dir: &Path, marker: &Marker) {
        std::fs::write(dir.join(MARKER), serde_json::to_vec(marker).unwrap()).unwrap();
    }

    /// The marker holds only for the bytes and the release it names, at the one level.
    #[test]
    fn a_marker_holds_only_for_its_file_its_release_and_its_level() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, b"optimized graph").unwrap();
        let crc32 = crc32_of(&model).unwrap();
        assert_eq!(crc32, format!("{:08x}", crc32fast::hash(b"optimized graph")));
        let good = Marker { onnxruntime: "1.31.1".into(), level: LEVEL.into(), crc32, source_sha256: "ab".into() };

        assert_eq!(already_optimized(&model, "1.31.1"), Err("no marker".into()));
        write_marker(dir.path(), &good);
        assert_eq!(already_optimized(&model, "1.31.1"), Ok(good.clone()));
        assert!(already_optimized(&model, "1.31.0").unwrap_err().contains("1.31.1"), "another release optimizes again");
        write_marker(dir.path(), &Marker { level: "all".into(), ..good.clone() });
        assert!(already_optimized(&model, "1.31.1").is_err(), "only the extended level is trusted to carry across machines");
        write_marker(dir.path(), &good);
        std::fs::write(&model, b"optimized grapH").unwrap();
        assert_eq!(already_optimized(&model, "1.31.1"), Err("model.onnx is not the file the marker describes".into()));
    }

    /// A marker is untrusted input: oversized, malformed or with unknown fields, it is ignored
    /// with a reason, never a panic, and nothing past its limit is read.
    #[test]
    fn a_bad_marker_is_a_reason_to_optimize_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, b"graph").unwrap();
        for (text, reason) in [
            (vec![b' '; MARKER_MAX_BYTES as usize + 1], "over 4096 bytes"),
            (b"{".to_vec(), "model.optimized.json: EOF"),
            (br#"{"onnxruntime":"1.31.1","level":"extended","crc32":"","source_sha256":"","extra":1}"#.to_vec(), "unknown field"),
        ] {
            std::fs::write(dir.path().join(MARKER), &text).unwrap();
            let error = already_optimized(&model, "1.31.1").unwrap_err();
            assert!(error.contains(reason), "{error}");
        }
    }

    /// `optimize` replaces the model and writes a marker that holds; a save that fails
    /// leaves the model as it was and no marker; a second run on an optimized model is a no-op.
    #[test]
    fn optimizing_replaces_the_model_then_marks_it() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, b"original").unwrap();

        let failed = optimize(dir.path(), "1.31.1", |_, _| Err(NnError::ModelUnloadable { path: model.clone(), reason: "no".into() }));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&model).unwrap(), b"original");
        assert!(!dir.path().join(MARKER).exists());

        let done = optimize(dir.path(), "1.31.1", |from, to| {
            assert_eq!(std::fs::read(from).unwrap(), b"original");
            std::fs::write(to, b"optimized").map_err(|source| NnError::Io { path: to.to_path_buf(), source })
        })
        .unwrap();
        assert_eq!(std::fs::read(&model).unwrap(), b"optimized");
        assert_eq!(done.marker.source_sha256, hex::encode(Sha256::digest(b"original")));
        assert_eq!(already_optimized(&model, "1.31.1"), Ok(done.marker.clone()));
        assert!(!dir.path().join("model.onnx.optimizing").exists());

        let again = optimize(dir.path(), "1.31.1", |_, _| panic!("an optimized model is not optimized again")).unwrap();
        assert_eq!(again.marker, done.marker);
    }
}
