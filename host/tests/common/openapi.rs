//! The API's contract, `docs/openapi.yaml`, as the end-to-end tests hold `qa-host serve` to it:
//! every response they receive must be one the document allows for its operation (a
//! documented status, a documented content type, a body valid against the documented schema).
//! A response the document does not allow fails the test that received it.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The document, parsed once per test binary, and the validators built from it.
pub struct Contract {
    document: Value,
    /// Schemas compiled so far, by JSON pointer.
    validators: Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

/// `docs/openapi.yaml`.
pub fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| {
        let path = super::workspace().join("docs/openapi.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let document: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        Contract { document, validators: Mutex::new(HashMap::new()) }
    })
}

/// `name` escaped for a JSON pointer.
pub fn pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

impl Contract {
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The object at `pointer`, following an OpenAPI `$ref` (`#/components/...`) if it is one;
    /// with the pointer it was found at.
    pub fn resolve(&self, pointer: &str) -> Option<(String, &Value)> {
        let mut pointer = pointer.to_string();
        for _ in 0..8 {
            let value = self.document.pointer(&pointer)?;
            match value.get("$ref").and_then(Value::as_str) {
                Some(reference) => pointer = reference.strip_prefix('#')?.to_string(),
                None => return Some((pointer, value)),
            }
        }
        None
    }

    /// The schema at `pointer`, compiled with the whole document around it (so its `$ref`s
    /// resolve), as OpenAPI 3.1 reads schemas: JSON Schema 2020-12.
    pub fn validator(&self, pointer: &str) -> std::sync::Arc<jsonschema::Validator> {
        let mut validators = self.validators.lock().unwrap();
        validators
            .entry(pointer.to_string())
            .or_insert_with(|| {
                let mut root = self.document.clone();
                root["$ref"] = Value::String(format!("#{pointer}"));
                let validator = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft202012)
                    .build(&root)
                    .unwrap_or_else(|e| panic!("docs/openapi.yaml: the schema at {pointer} does not compile: {e}"));
                std::sync::Arc::new(validator)
            })
            .clone()
    }

    /// Why `instance` is not valid against the schema at `pointer`, if it is not.
    pub fn errors(&self, pointer: &str, instance: &Value) -> Option<String> {
        let validator = self.validator(pointer);
        let errors: Vec<String> = validator.iter_errors(instance).map(|e| format!("{} (at {})", e, e.instance_path())).collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }

    /// Panics unless the document allows this response to `method path`: its status, its
    /// content type and (for JSON) its body.
    pub fn check(&self, method: &str, path: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
        let what = || format!("{method} {path} answered {status} {}", String::from_utf8_lossy(&body[..body.len().min(2_000)]));
        let operation = format!("/paths/{}/{}", pointer_token(path), method.to_ascii_lowercase());
        assert!(self.document.pointer(&operation).is_some(), "docs/openapi.yaml has no operation {method} {path}");
        let (response, described) = self
            .resolve(&format!("{operation}/responses/{status}"))
            .or_else(|| self.resolve(&format!("{operation}/responses/default")))
            .unwrap_or_else(|| panic!("docs/openapi.yaml documents no status {status} for {method} {path}: {}", what()));
        let Some(content) = described.get("content").and_then(Value::as_object) else {
            assert!(body.is_empty(), "docs/openapi.yaml documents no body for this response: {}", what());
            return;
        };
        let media_type = content_type.map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
        let media_type = media_type.unwrap_or_else(|| panic!("no Content-Type: {}", what()));
        assert!(content.contains_key(&media_type), "{media_type} is not a documented content type {:?}: {}", content.keys(), what());
        if media_type != "application/json" {
            return;
        }
        let json: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", what()));
        let schema = format!("{response}/content/{}/schema", pointer_token(&media_type));
        if let Some(errors) = self.errors(&schema, &json) {
            panic!("the response is not what docs/openapi.yaml documents ({schema}): {errors}\n{}", what());
        }
    }
}

/// A raw HTTP/1.1 response as read off a socket: its status, `Content-Type` and body. `None`
/// for an empty read (the server closed the connection without a response).
pub fn parse_raw(raw: &str) -> Option<(u16, Option<String>, String)> {
    if raw.is_empty() {
        return None;
    }
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(body.len());
    Some((status, header("content-type"), body[..length.min(body.len())].to_string()))
}
