//! What a `model.onnx` may reference: tensors may keep their data in "external data" files,
//! and ONNX Runtime 1.22 opened whatever path a tensor's `location` named (`../../etc/...`, an
//! absolute path, or its in-memory address marker `*/_ORT_MEM_ADDR_/*`); later releases check
//! locations themselves, and this check stays so that the host's rule does not depend on the
//! library it was given. The model's author
//! is not trusted, so before ONNX Runtime sees a file, every `location` in it (initializers,
//! sparse initializers, attribute tensors, subgraphs and functions, at any depth) must name a
//! regular file inside the model's own directory.
//!
//! A small reader of the protobuf wire format walks only the fields that can hold tensors; it
//! never allocates per tensor and refuses nesting deeper than [`MAX_DEPTH`].

use std::io::{BufRead, Seek};
use std::path::{Component, Path};

/// Deeper nesting of graphs in attributes than any real model has.
const MAX_DEPTH: usize = 64;

/// Why a `model.onnx` is refused before ONNX Runtime sees it.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    /// The file is not the protobuf a model is (cut short, malformed, nested too deep).
    #[error("{0}")]
    Malformed(String),
    #[error("external data location {location:?} {why}; it must name a file beside model.onnx")]
    Location { location: String, why: &'static str },
}

/// Checks `model_path`; the error says which location is refused and why.
pub fn check(model_path: &Path) -> Result<(), ModelFileError> {
    let file = std::fs::File::open(model_path)?;
    let len = file.metadata()?.len();
    let dir = model_path.parent().unwrap_or(Path::new("."));
    let mut locations = Vec::new();
    walk(&mut Reader { inner: std::io::BufReader::new(file), at: 0 }, len, Message::Model, 0, &mut locations)
        .map_err(ModelFileError::Malformed)?;
    for location in locations {
        check_location(dir, &location)?;
    }
    Ok(())
}

fn check_location(dir: &Path, location: &str) -> Result<(), ModelFileError> {
    let refuse = |why: &'static str| Err(ModelFileError::Location { location: location.to_string(), why });
    if location.contains("_ORT_MEM_ADDR_") {
        return refuse("is ONNX Runtime's in-memory address marker");
    }
    let path = Path::new(location);
    if location.is_empty() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return refuse("is absolute, empty or leaves the model's directory");
    }
    let (Ok(dir), Ok(target)) = (dir.canonicalize(), dir.join(path).canonicalize()) else {
        return refuse("does not exist");
    };
    if !target.starts_with(&dir) {
        return refuse("leads out of the model's directory (through a symbolic link)");
    }
    if !target.is_file() {
        return refuse("is not a regular file");
    }
    Ok(())
}

/// The message types on the paths from a model to its tensors.
#[derive(Clone, Copy, Debug)]
enum Message {
    Model,
    Graph,
    Function,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    StringEntry,
}

impl Message {
    /// Which field numbers of this message hold which sub-message.
    fn child(self, field: u64) -> Option<Message> {
        use Message::*;
        Some(match (self, field) {
            (Model, 7) => Graph,
            (Model, 25) => Function,
            (Graph, 1) => Node,
            (Graph, 5) => Tensor,
            (Graph, 15) => SparseTensor,
            (Function, 7) => Node,
            (Node, 5) => Attribute,
            (Attribute, 5 | 10) => Tensor,
            (Attribute, 6 | 11) => Graph,
            (Attribute, 22 | 23) => SparseTensor,
            (SparseTensor, 1 | 2) => Tensor,
            (Tensor, 13) => StringEntry,
            _ => return None,
        })
    }
}

/// Longest external-data key or location read; a location of more bytes is refused unread
/// (no file system takes a longer path).
const MAX_ENTRY_BYTES: u64 = 4096;

/// Collects the `location` values of external-data entries under `message`, which ends at
/// byte `end` of the file. Fields that can hold no tensor, and tensor data (most of a model's
/// bytes), are seeked over, not read: the check reads a few kilobytes of a model of any size.
fn walk<R: BufRead + Seek>(
    reader: &mut Reader<R>,
    end: u64,
    message: Message,
    depth: usize,
    locations: &mut Vec<String>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("model.onnx nests messages deeper than {MAX_DEPTH} levels"));
    }
    let (mut key, mut value) = (None, None);
    while reader.at < end {
        let tag = reader.varint(end)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => drop(reader.varint(end)?),
            1 => reader.skip(8, end)?,
            5 => reader.skip(4, end)?,
            2 => {
                let len = reader.varint(end)?;
                match (message, field) {
                    (Message::StringEntry, 1) => key = Some(reader.entry(len, end)?),
                    (Message::StringEntry, 2) => value = Some(reader.entry(len, end)?),
                    _ => match message.child(field) {
                        Some(child) => {
                            let body_end = reader.at.checked_add(len).filter(|&e| e <= end).ok_or(ENDS_INSIDE_A_FIELD)?;
                            walk(reader, body_end, child, depth + 1, locations)?;
                        }
                        None => reader.skip(len, end)?,
                    },
                }
            }
            other => return Err(format!("model.onnx is not a valid protobuf message (wire type {other})")),
        }
    }
    if let (Message::StringEntry, Some(Ok(key))) = (message, &key)
        && key == b"location"
    {
        let location = match value {
            None => Vec::new(),
            Some(Ok(value)) => value,
            Some(Err(len)) => return Err(format!("an external data location of {len} bytes (at most {MAX_ENTRY_BYTES})")),
        };
        locations.push(String::from_utf8(location).map_err(|_| "an external data location is not UTF-8".to_string())?);
    }
    Ok(())
}

const ENDS_INSIDE_A_FIELD: &str = "model.onnx ends inside a field";

/// The model file from its start, `at` bytes read or skipped.
struct Reader<R> {
    inner: R,
    at: u64,
}

impl<R: BufRead + Seek> Reader<R> {
    fn varint(&mut self, end: u64) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let mut byte = [0u8];
            if self.at >= end || self.inner.read_exact(&mut byte).is_err() {
                return Err("model.onnx ends inside a number".into());
            }
            self.at += 1;
            value |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("model.onnx has a number longer than 10 bytes".into())
    }

    /// Past `len` bytes, which must end by `end`.
    fn skip(&mut self, len: u64, end: u64) -> Result<(), String> {
        let target = self.at.checked_add(len).filter(|&target| target <= end).ok_or(ENDS_INSIDE_A_FIELD)?;
        let offset = i64::try_from(len).map_err(|_| ENDS_INSIDE_A_FIELD)?;
        self.inner.seek_relative(offset).map_err(|_| ENDS_INSIDE_A_FIELD)?;
        self.at = target;
        Ok(())
    }

    /// A string of an external-data entry: its bytes, or its length when over
    /// [`MAX_ENTRY_BYTES`] (skipped).
    fn entry(&mut self, len: u64, end: u64) -> Result<Result<Vec<u8>, u64>, String> {
        if len > MAX_ENTRY_BYTES {
            return self.skip(len, end).map(|()| Err(len));
        }
        if self.at.checked_add(len).is_none_or(|e| e > end) {
            return Err(ENDS_INSIDE_A_FIELD.into());
        }
        let mut bytes = vec![0u8; len as usize];
        self.inner.read_exact(&mut bytes).map_err(|_| ENDS_INSIDE_A_FIELD)?;
        self.at += len;
        Ok(Ok(bytes))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Protobuf encoding helpers for hand-made models.
    pub fn field(number: u64, body: &[u8]) -> Vec<u8> {
        let mut out = varint((number << 3) | 2);
        out.extend(varint(body.len() as u64));
        out.extend_from_slice(body);
        out
    }

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    /// A model whose one initializer keeps its data at `location` (data_location = EXTERNAL).
    pub fn model_with_external(location: &str) -> Vec<u8> {
        let entry = [field(1, b"location"), field(2, location.as_bytes())].concat();
        let mut tensor = field(8, b"weight");
        tensor.extend(field(13, &entry));
        tensor.extend([14 << 3, 1]); // data_location: EXTERNAL (varint field)
        field(7, &field(5, &tensor))
    }

    /// The locations under `message` in `bytes`, walked as [`check`] walks a file.
    fn walk_bytes(bytes: &[u8], message: Message) -> Result<Vec<String>, String> {
        let mut locations = Vec::new();
        walk(&mut Reader { inner: std::io::Cursor::new(bytes), at: 0 }, bytes.len() as u64, message, 0, &mut locations)?;
        Ok(locations)
    }

    /// A reader that counts the bytes read from it (seeking over them does not count).
    struct Counting<'a> {
        inner: std::io::Cursor<&'a [u8]>,
        read: usize,
    }

    impl std::io::Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n;
            Ok(n)
        }
    }

    impl std::io::Seek for Counting<'_> {
        fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(to)
        }
    }

    /// Tensor data is seeked over: a model of 16 MiB of weights costs the check its headers.
    #[test]
    fn tensor_data_is_skipped_not_read() {
        let mut tensor = field(8, b"weight");
        tensor.extend(field(9, &vec![7u8; 16 << 20])); // raw_data
        let model = [field(7, &[field(5, &tensor), field(5, &tensor)].concat()), model_with_external("w.bin")].concat();
        let mut counting = std::io::BufReader::with_capacity(64, Counting { inner: std::io::Cursor::new(&model), read: 0 });
        let mut locations = Vec::new();
        walk(&mut Reader { inner: &mut counting, at: 0 }, model.len() as u64, Message::Model, 0, &mut locations).unwrap();
        assert_eq!(locations, ["w.bin"]);
        let read = counting.get_ref().read;
        assert!(read < 4096, "read {read} of {} bytes", model.len());
    }

    /// A location longer than any path is refused with its length, never copied.
    #[test]
    fn an_overlong_location_is_refused_unread() {
        let long = "a".repeat(1 << 20);
        let error = walk_bytes(&model_with_external(&long), Message::Model).unwrap_err();
        assert_eq!(error, format!("an external data location of {} bytes (at most {MAX_ENTRY_BYTES})", 1 << 20));
        let longest = "a".repeat(MAX_ENTRY_BYTES as usize);
        assert_eq!(walk_bytes(&model_with_external(&longest), Message::Model), Ok(vec![longest]));
    }

    #[test]
    fn locations_are_found_at_any_depth() {
        let mut found = Vec::new();
        found.extend(walk_bytes(&model_with_external("w.bin"), Message::Model).unwrap());
        assert_eq!(found, ["w.bin"]);
        // A tensor in an attribute of a node in a subgraph of an attribute of a node.
        let entry = [field(1, b"location"), field(2, b"../deep")].concat();
        let tensor = field(13, &entry);
        let inner_graph = field(5, &tensor);
        let attribute = field(6, &inner_graph);
        let node = field(5, &attribute);
        let graph = field(1, &node);
        let mut found = Vec::new();
        found.extend(walk_bytes(&field(7, &graph), Message::Model).unwrap());
        assert_eq!(found, ["../deep"]);
    }

    #[test]
    fn hostile_locations_are_refused_and_a_sibling_file_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("weights.bin"), b"1234").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link.bin")).unwrap();
        for (location, ok) in [
            ("weights.bin", true),
            ("../weights.bin", false),
            ("/etc/passwd", false),
            ("*/_ORT_MEM_ADDR_/*", false),
            ("sub/../../x", false),
            ("link.bin", false),
            ("missing.bin", false),
            ("", false),
        ] {
            let path = dir.path().join("model.onnx");
            std::fs::write(&path, model_with_external(location)).unwrap();
            assert_eq!(check(&path).is_ok(), ok, "{location:?}: {:?}", check(&path));
        }
    }

    #[test]
    fn truncated_or_absurdly_nested_files_are_errors_not_panics() {
        let model = model_with_external("w.bin");
        // The model is one field (the graph): every cut but the empty file ends inside it.
        assert_eq!(walk_bytes(&[], Message::Model), Ok(vec![]));
        for cut in 1..model.len() {
            let error = walk_bytes(&model[..cut], Message::Model).unwrap_err();
            assert!(error.starts_with("model.onnx ends inside a"), "cut at {cut} of {}: {error}", model.len());
        }
        let mut nested = field(5, b"");
        for _ in 0..100 {
            // attribute.g -> graph.node -> node.attribute -> ...
            nested = field(6, &field(1, &field(5, &nested)));
        }
        assert!(walk_bytes(&nested, Message::Attribute).unwrap_err().contains("deeper"));
    }
}
