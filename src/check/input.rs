//! `check`'s input: files, directories and standard input read as YAML/JSON documents, and the
//! cluster state they describe.
use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::cluster::Snapshot;

/// Why `check` could not run: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A document kubectl would not read either.
    #[error("{path}: document {document} (line {line}): {message}")]
    Unreadable {
        path: String,
        document: usize,
        line: usize,
        message: String,
    },
    /// A field of the right name and the wrong type; `field` is its path (`spec.replicas`).
    #[error("{at}: {field}: {source}")]
    Object {
        at: Box<ObjectAt>,
        field: String,
        #[source]
        source: serde_json::Error,
    },
    /// Not the input's fault: the mutating pass built a patch that does not apply.
    #[error("{at}: internal error: the patch does not apply: {source}")]
    Patch {
        at: Box<ObjectAt>,
        #[source]
        source: json_patch::PatchError,
    },
    /// kube-apiserver's own validation refuses the object; `message` is in its words.
    #[error("{at} is invalid, kube-apiserver would reject it: {message}")]
    Invalid { at: Box<ObjectAt>, message: String },
    #[error("invalid policy: {0}")]
    Policy(#[source] crate::policy::PolicyError),
    #[error("invalid policy: no policy document in {0}")]
    NoPolicy(std::path::PathBuf),
}

/// One input document and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: String,
    /// 1-based, as a YAML reader counts documents.
    pub index: usize,
    /// 1-based line of the document's first content in its file (0: not from a file).
    pub line: usize,
    pub value: Value,
}

/// Reads files, directories (recursively, `*.yaml`, `*.yml`, `*.json`) and `-` (stdin): every
/// document that reads, and why each other one does not (a file that cannot be read, a
/// document kubectl would refuse). One bad document never hides the others.
pub fn read_inputs(paths: &[PathBuf]) -> (Vec<Document>, Vec<InputError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let add = |text: &str, path: &str, docs: &mut Vec<Document>, errors: &mut Vec<InputError>| {
        let (read, failed) = read_stream(text, path);
        docs.extend(read);
        errors.extend(failed);
    };
    for path in paths {
        if path == Path::new("-") {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => add(&text, "<stdin>", &mut docs, &mut errors),
                Err(source) => errors.push(InputError::Read {
                    path: "<stdin>".into(),
                    source,
                }),
            }
            continue;
        }
        let files = match expand(path) {
            Ok(files) => files,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        for file in files {
            let name = file.display().to_string();
            match std::fs::read_to_string(&file) {
                Ok(text) => add(&text, &name, &mut docs, &mut errors),
                Err(source) => errors.push(InputError::Read { path: name, source }),
            }
        }
    }
    (docs, errors)
}

fn expand(path: &Path) -> Result<Vec<PathBuf>, InputError> {
    let meta = std::fs::metadata(path).map_err(|source| InputError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|source| InputError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if entry.is_dir() {
            out.extend(expand(&entry)?);
        } else if [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e)) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// A stream of documents, read as kubectl reads them ([`yaml`](super::yaml)); the first
/// document that does not read is the error.
pub fn parse_stream(text: &str, path: &str) -> Result<Vec<Document>, InputError> {
    let (docs, mut errors) = read_stream(text, path);
    match errors.is_empty() {
        true => Ok(docs),
        false => Err(errors.remove(0)),
    }
}

/// A stream of documents, read as kubectl reads them: YAML 1.1 (or a stream of JSON objects when
/// it starts with `{`), `List` kinds flattened into their items. Returns the documents that read
/// and why each other one does not.
pub fn read_stream(text: &str, path: &str) -> (Vec<Document>, Vec<InputError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let unreadable = |index: usize, line: usize, message: String| InputError::Unreadable {
        path: path.to_owned(),
        document: index,
        line,
        message,
    };
    let mut accept = |index: usize, line: usize, value: Value, errors: &mut Vec<InputError>| {
        let items = match value {
            Value::Null => return,
            Value::Object(ref map)
                if map
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                map.get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            }
            value => vec![value],
        };
        for value in items {
            let doc = Document {
                path: path.to_owned(),
                index,
                line,
                value,
            };
            match refusal(&doc) {
                Some(error) => errors.push(error),
                None => docs.push(doc),
            }
        }
    };
    if text.trim_start().starts_with('{') {
        // kubectl reads a stream that starts with `{` as JSON objects, one after another.
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        let (mut index, mut line, mut counted) = (0, 1, 0);
        loop {
            // Lines counted from where the last document ended: the stream is read once.
            let at = stream.byte_offset();
            line += text[counted..at].matches('\n').count();
            counted = at;
            match stream.next() {
                None => break,
                Some(Ok(mut value)) => {
                    index += 1;
                    super::yaml::as_kubectl_numbers(&mut value);
                    accept(index, line, value, &mut errors);
                }
                Some(Err(e)) => {
                    errors.push(unreadable(
                        index + 1,
                        e.line(),
                        format!("invalid JSON: {e}"),
                    ));
                    break;
                }
            }
        }
        return (docs, errors);
    }
    match super::yaml::read(text) {
        Err(e) => errors.push(unreadable(1, e.line, e.message)),
        Ok(read) => {
            for (raw, value) in read {
                match value {
                    Ok(value) => accept(raw.index, raw.line, value, &mut errors),
                    Err(e) => errors.push(unreadable(raw.index, e.line, e.message)),
                }
            }
        }
    }
    (docs, errors)
}

/// Why kubectl would refuse a document that reads as YAML: it is not an object, it has no
/// `kind`, or its metadata does not decode.
fn refusal(doc: &Document) -> Option<InputError> {
    let unreadable = |message: String| InputError::Unreadable {
        path: doc.path.clone(),
        document: doc.index,
        line: doc.line,
        message,
    };
    let Value::Object(map) = &doc.value else {
        return Some(unreadable(
            "the document is not an object (a YAML mapping of apiVersion, kind, metadata ...)"
                .into(),
        ));
    };
    if map
        .get("kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Some(unreadable("Object 'Kind' is missing".into()));
    }
    let meta = map.get("metadata")?;
    decode::<ObjectMeta>(doc, meta.clone())
        .err()
        .map(|error| match error {
            InputError::Object { at, field, source } => InputError::Object {
                at,
                field: format!("metadata.{field}").trim_end_matches('.').to_owned(),
                source,
            },
            other => other,
        })
}

pub(super) fn type_of(v: &Value) -> (&str, &str) {
    (
        v.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
        v.get("kind").and_then(Value::as_str).unwrap_or(""),
    )
}

/// Where an object of the input is: `FILE: document N: KIND NAME`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectAt {
    pub path: String,
    pub document: usize,
    /// 1-based line of the document in its file (0: not from a file).
    pub line: usize,
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for ObjectAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ObjectAt {
            path,
            document,
            line,
            kind,
            name,
        } = self;
        match line {
            0 => write!(f, "{path}: document {document}: {kind} {name}"),
            line => write!(
                f,
                "{path}: document {document} (line {line}): {kind} {name}"
            ),
        }
    }
}

impl ObjectAt {
    pub(super) fn of(doc: &Document) -> Self {
        ObjectAt {
            path: doc.path.clone(),
            document: doc.index,
            line: doc.line,
            kind: type_of(&doc.value).1.to_owned(),
            name: doc
                .value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
        }
    }
}

/// Decodes a document's object as its type; an error names the field's path.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    doc: &Document,
    value: Value,
) -> Result<T, InputError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let field = error.path().to_string();
        InputError::Object {
            at: Box::new(ObjectAt::of(doc)),
            field: if field == "." { String::new() } else { field },
            source: error.into_inner(),
        }
    })
}

/// An object kube-apiserver's own validation refuses, in its words.
pub(super) fn invalid(doc: &Document, message: String) -> InputError {
    InputError::Invalid {
        at: Box::new(ObjectAt::of(doc)),
        message,
    }
}

/// The cluster state the input describes; the first document of it that does not decode is the
/// error.
pub fn snapshot(docs: &[Document]) -> Result<Snapshot, InputError> {
    let (snapshot, mut errors) = snapshot_of(docs);
    match errors.is_empty() {
        true => Ok(snapshot),
        false => Err(errors.remove(0)),
    }
}

/// The cluster state the input describes, from every document of it that decodes, and why
/// each other one does not.
pub fn snapshot_of(docs: &[Document]) -> (Snapshot, Vec<InputError>) {
    let (mut pdbs, mut classes, mut namespaces, mut priorities) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut errors = Vec::new();
    fn keep<T>(into: &mut Vec<T>, errors: &mut Vec<InputError>, decoded: Result<T, InputError>) {
        match decoded {
            Ok(object) => into.push(object),
            Err(error) => errors.push(error),
        }
    }
    for doc in docs {
        let value = || doc.value.clone();
        match type_of(&doc.value) {
            ("policy/v1", "PodDisruptionBudget") => {
                let decoded = decode::<PodDisruptionBudget>(doc, value()).map(|mut pdb| {
                    pdb.metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    pdb
                });
                keep(&mut pdbs, &mut errors, decoded);
            }
            ("storage.k8s.io/v1", "StorageClass") => {
                keep(&mut classes, &mut errors, decode(doc, value()))
            }
            ("v1", "Namespace") => keep(&mut namespaces, &mut errors, decode(doc, value())),
            ("scheduling.k8s.io/v1", "PriorityClass") => {
                keep(&mut priorities, &mut errors, decode(doc, value()))
            }
            _ => {}
        }
    }
    (
        Snapshot::known(pdbs, classes, namespaces).with_priority_classes(priorities),
        errors,
    )
}
