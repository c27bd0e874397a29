//! JSON Patch construction. Paths are built from tokens with `jsonptr` (as re-exported by
//! `json_patch`, so the two never drift), which escapes `~` and `/` in keys such as
//! `app.kubernetes.io/name`.
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde::Serialize;
use serde_json::Value;

/// A pointer from unescaped tokens.
pub fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

/// `add` of `value` at `existing ++ missing`, creating the `missing` parents: the operation adds
/// at `existing ++ missing[0]` an object nesting the rest. `existing` must already exist.
pub fn add_creating<T: Serialize>(
    existing: &[&str],
    missing: &[&str],
    value: &T,
) -> Result<PatchOperation, serde_json::Error> {
    let mut value = serde_json::to_value(value)?;
    let (first, rest) = missing
        .split_first()
        .expect("add_creating needs at least one token to add");
    for key in rest.iter().rev() {
        value = Value::Object([((*key).to_owned(), value)].into_iter().collect());
    }
    let mut path = pointer(existing);
    path.push_back(*first);
    Ok(PatchOperation::Add(AddOperation { path, value }))
}

/// `add` at a path whose parent exists.
pub fn add<T: Serialize>(path: &[&str], value: &T) -> Result<PatchOperation, serde_json::Error> {
    Ok(PatchOperation::Add(AddOperation {
        path: pointer(path),
        value: serde_json::to_value(value)?,
    }))
}

/// `replace` of a value that exists.
pub fn replace<T: Serialize>(
    path: &[&str],
    value: &T,
) -> Result<PatchOperation, serde_json::Error> {
    Ok(PatchOperation::Replace(ReplaceOperation {
        path: pointer(path),
        value: serde_json::to_value(value)?,
    }))
}

/// `add` if the key is absent, `replace` if present: both are valid, `replace` states intent.
pub fn set<T: Serialize>(
    path: &[&str],
    present: bool,
    value: &T,
) -> Result<PatchOperation, serde_json::Error> {
    if present {
        replace(path, value)
    } else {
        add(path, value)
    }
}

/// The path of a patch operation, for display.
pub fn path_of(op: &PatchOperation) -> &str {
    match op {
        PatchOperation::Add(o) => o.path.as_str(),
        PatchOperation::Remove(o) => o.path.as_str(),
        PatchOperation::Replace(o) => o.path.as_str(),
        PatchOperation::Move(o) => o.path.as_str(),
        PatchOperation::Copy(o) => o.path.as_str(),
        PatchOperation::Test(o) => o.path.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_with_slashes_and_tildes_are_escaped() {
        let op = add(
            &["metadata", "annotations", "stateful-guard.io/mutated"],
            &"x",
        )
        .unwrap();
        assert_eq!(
            path_of(&op),
            "/metadata/annotations/stateful-guard.io~1mutated"
        );
        let op = add(&["a~b"], &1).unwrap();
        assert_eq!(path_of(&op), "/a~0b");
    }

    #[test]
    fn missing_parents_are_created_in_one_operation() {
        let op = add_creating(&["metadata"], &["annotations", "k8s.io/x"], &"v").unwrap();
        let mut doc = json!({"metadata": {"name": "a"}});
        json_patch::patch(&mut doc, &[op]).unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"name": "a", "annotations": {"k8s.io/x": "v"}}})
        );
    }
}
