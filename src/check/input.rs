//! `check`'s input: files, directories and standard input read as YAML/JSON documents, and the
//! cluster state they describe.
use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::StorageClass;
use serde::Deserialize;
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
    #[error("{path}: document {document}: invalid YAML: {source}")]
    Yaml {
        path: String,
        document: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{at} does not decode: {source}")]
    Object {
        at: ObjectAt,
        #[source]
        source: serde_json::Error,
    },
    /// Not the input's fault: the mutating pass built a patch that does not apply.
    #[error("{at}: internal error: the patch does not apply: {source}")]
    Patch {
        at: ObjectAt,
        #[source]
        source: json_patch::PatchError,
    },
    /// kube-apiserver's own validation refuses the object; `message` is in its words.
    #[error("{at} is invalid, kube-apiserver would reject it: {message}")]
    Invalid { at: ObjectAt, message: String },
    #[error("invalid policy: {0}")]
    Policy(#[source] crate::policy::PolicyError),
    #[error("invalid policy: no policy document in {0}")]
    NoPolicy(std::path::PathBuf),
}

/// One input document and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: String,
    pub index: usize,
    pub value: Value,
}

/// Reads files, directories (recursively, `*.yaml`, `*.yml`, `*.json`) and `-` (stdin).
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Document>, InputError> {
    let mut docs = Vec::new();
    for path in paths {
        if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| InputError::Read {
                    path: "<stdin>".into(),
                    source,
                })?;
            docs.extend(parse_stream(&text, "<stdin>")?);
        } else {
            for file in expand(path)? {
                let text = std::fs::read_to_string(&file).map_err(|source| InputError::Read {
                    path: file.display().to_string(),
                    source,
                })?;
                docs.extend(parse_stream(&text, &file.display().to_string())?);
            }
        }
    }
    Ok(docs)
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

/// Multi-document YAML (JSON is YAML); `List` kinds are flattened into their items.
pub fn parse_stream(text: &str, path: &str) -> Result<Vec<Document>, InputError> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = Value::deserialize(de).map_err(|source| InputError::Yaml {
            path: path.to_owned(),
            document: index,
            source,
        })?;
        match value {
            Value::Null => {}
            Value::Object(ref map)
                if map
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                for item in map
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.push(Document {
                        path: path.to_owned(),
                        index,
                        value: item.clone(),
                    });
                }
            }
            value => out.push(Document {
                path: path.to_owned(),
                index,
                value,
            }),
        }
    }
    Ok(out)
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
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for ObjectAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ObjectAt {
            path,
            document,
            kind,
            name,
        } = self;
        write!(f, "{path}: document {document}: {kind} {name}")
    }
}

impl ObjectAt {
    pub(super) fn of(doc: &Document) -> Self {
        ObjectAt {
            path: doc.path.clone(),
            document: doc.index,
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

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    doc: &Document,
    value: Value,
) -> Result<T, InputError> {
    serde_json::from_value(value).map_err(|source| InputError::Object {
        at: ObjectAt::of(doc),
        source,
    })
}

/// An object kube-apiserver's own validation refuses, in its words.
pub(super) fn invalid(doc: &Document, message: String) -> InputError {
    InputError::Invalid {
        at: ObjectAt::of(doc),
        message,
    }
}

/// The cluster state the input describes.
pub fn snapshot(docs: &[Document]) -> Result<Snapshot, InputError> {
    let (mut pdbs, mut classes, mut namespaces, mut priorities) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for doc in docs {
        match type_of(&doc.value) {
            ("policy/v1", "PodDisruptionBudget") => {
                let mut pdb: PodDisruptionBudget = decode(doc, doc.value.clone())?;
                pdb.metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                pdbs.push(pdb);
            }
            ("storage.k8s.io/v1", "StorageClass") => {
                classes.push(decode::<StorageClass>(doc, doc.value.clone())?)
            }
            ("v1", "Namespace") => namespaces.push(decode::<Namespace>(doc, doc.value.clone())?),
            ("scheduling.k8s.io/v1", "PriorityClass") => {
                priorities.push(decode::<PriorityClass>(doc, doc.value.clone())?)
            }
            _ => {}
        }
    }
    Ok(Snapshot::known(pdbs, classes, namespaces).with_priority_classes(priorities))
}
