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

use std::path::{Component, Path};

/// Deeper nesting of graphs in attributes than any real model has.
const MAX_DEPTH: usize = 64;

/// Checks `model_path`; the error says which location is refused and why.
pub fn check(model_path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(model_path).map_err(|e| format!("cannot read: {e}"))?;
    let dir = model_path.parent().unwrap_or(Path::new("."));
    let mut locations = Vec::new();
    walk(&bytes, Message::Model, 0, &mut locations)?;
    for location in locations {
        check_location(dir, &location)?;
    }
    Ok(())
}

fn check_location(dir: &Path, location: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("external data location {location:?} {why}; it must name a file beside model.onnx"));
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

/// Collects the `location` values of external-data entries under `message`.
fn walk(bytes: &[u8], message: Message, depth: usize, locations: &mut Vec<String>) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("model.onnx nests messages deeper than {MAX_DEPTH} levels"));
    }
    let mut reader = Reader { bytes, at: 0 };
    let (mut key, mut value) = (None, None);
    while reader.at < bytes.len() {
        let tag = reader.varint()?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => drop(reader.varint()?),
            1 => reader.skip(8)?,
            5 => reader.skip(4)?,
            2 => {
                let len = usize::try_from(reader.varint()?).map_err(|_| "length out of range")?;
                let body = reader.take(len)?;
                match (message, field) {
                    (Message::StringEntry, 1) => key = Some(body),
                    (Message::StringEntry, 2) => value = Some(body),
                    _ => {
                        if let Some(child) = message.child(field) {
                            walk(body, child, depth + 1, locations)?;
                        }
                    }
                }
            }
            other => return Err(format!("model.onnx is not a valid protobuf message (wire type {other})")),
        }
    }
    if let (Message::StringEntry, Some(b"location")) = (message, key) {
        let value = value.unwrap_or_default();
        locations.push(String::from_utf8(value.to_vec()).map_err(|_| "an external data location is not UTF-8".to_string())?);
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or("model.onnx ends inside a number")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("model.onnx has a number longer than 10 bytes".into())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(len).filter(|&end| end <= self.bytes.len()).ok_or("model.onnx ends inside a field")?;
        let body = &self.bytes[self.at..end];
        self.at = end;
        Ok(body)
    }

    fn skip(&mut self, len: usize) -> Result<(), String> {
        self.take(len).map(drop)
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

    #[test]
    fn locations_are_found_at_any_depth() {
        let mut found = Vec::new();
        walk(&model_with_external("w.bin"), Message::Model, 0, &mut found).unwrap();
        assert_eq!(found, ["w.bin"]);
        // A tensor in an attribute of a node in a subgraph of an attribute of a node.
        let entry = [field(1, b"location"), field(2, b"../deep")].concat();
        let tensor = field(13, &entry);
        let inner_graph = field(5, &tensor);
        let attribute = field(6, &inner_graph);
        let node = field(5, &attribute);
        let graph = field(1, &node);
        let mut found = Vec::new();
        walk(&field(7, &graph), Message::Model, 0, &mut found).unwrap();
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
        assert_eq!(walk(&[], Message::Model, 0, &mut Vec::new()), Ok(()));
        for cut in 1..model.len() {
            let error = walk(&model[..cut], Message::Model, 0, &mut Vec::new()).unwrap_err();
            assert!(error.starts_with("model.onnx ends inside a"), "cut at {cut} of {}: {error}", model.len());
        }
        let mut nested = field(5, b"");
        for _ in 0..100 {
            // attribute.g -> graph.node -> node.attribute -> ...
            nested = field(6, &field(1, &field(5, &nested)));
        }
        assert!(walk(&nested, Message::Attribute, 0, &mut Vec::new()).unwrap_err().contains("deeper"));
    }
}
