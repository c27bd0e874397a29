//! Did the user set a field, or did a default fill it in?
//!
//! Objects reach admission fully defaulted, so the value alone cannot tell. Three pieces of
//! evidence can, and are used in this order:
//! - server-side apply: a `managedFields` entry with `operation: Apply` lists exactly the fields
//!   the applier wrote (defaults are not owned by it);
//! - client-side apply: the `kubectl.kubernetes.io/last-applied-configuration` annotation holds
//!   the manifest as the user wrote it;
//! - otherwise (`kubectl create`, API clients) the `Update` entries own the defaulted fields too,
//!   so nothing is known.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the evidence says about one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// The user wrote the field.
    UserSet,
    /// The user's manifest does not contain the field: a default filled it in.
    Defaulted,
    /// No evidence either way.
    Unknown,
}

/// Where `path` (object keys, e.g. `["spec", "podManagementPolicy"]`) came from.
pub fn provenance(meta: &ObjectMeta, path: &[&str]) -> Provenance {
    let applies: Vec<&Value> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.fields_v1.as_ref().map(|f| &f.0))
        .collect();
    if !applies.is_empty() {
        return if applies.iter().any(|f| owns(f, path)) {
            Provenance::UserSet
        } else {
            Provenance::Defaulted
        };
    }
    if let Some(applied) = meta.annotations.as_ref().and_then(|a| a.get(LAST_APPLIED))
        && let Some(found) = manifest_has(applied, path)
    {
        return if found {
            Provenance::UserSet
        } else {
            Provenance::Defaulted
        };
    }
    Provenance::Unknown
}

/// Whether the JSON `manifest` has `path`; `None` when it is not JSON. It walks the text once
/// without building a tree (the manifest is the whole object, kilobytes, on every request of
/// a `kubectl apply`): keys off the path are skipped.
fn manifest_has(manifest: &str, path: &[&str]) -> Option<bool> {
    text_has(manifest, "", path)
}

/// Whether the JSON text has `path`, each of its keys spelled with `prefix` before it.
///
/// A text that nowhere spells the path's last key does not have the path, and is not walked:
/// the common case (the manifest of a `kubectl apply` seldom names `podManagementPolicy`), 6% of
/// a StatefulSet CREATE's cost otherwise. That look is exact when the key has no character JSON
/// must escape and the text has no `\u` escape, the only one that can stand for a letter or a
/// `:`; else the text is walked. (A text that is not JSON and lacks the key then reads as not
/// having the path, rather than as no evidence: neither is evidence that the user wrote it.)
fn text_has(text: &str, prefix: &str, path: &[&str]) -> Option<bool> {
    static ESCAPE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\\u"));
    if let Some(last) = path.last()
        && !last.contains(|c: char| c == '"' || c == '\\' || c.is_control())
        && memchr::memmem::find(text.as_bytes(), last.as_bytes()).is_none()
        && ESCAPE.find(text.as_bytes()).is_none()
    {
        return Some(false);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let found = serde::de::DeserializeSeed::deserialize(HasPath { prefix, path }, &mut de).ok()?;
    de.end().ok()?;
    Some(found)
}

/// Deserializes a value to whether it has the rest of a path (an empty path: any value).
struct HasPath<'p> {
    prefix: &'p str,
    path: &'p [&'p str],
}

impl<'de> serde::de::DeserializeSeed<'de> for HasPath<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        if self.path.is_empty() {
            <serde::de::IgnoredAny as serde::Deserialize>::deserialize(de)?;
            return Ok(true);
        }
        de.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for HasPath<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(Key(key)) = map.next_key()? {
            if !found && key.strip_prefix(self.prefix) == Some(self.path[0]) {
                found = map.next_value_seed(HasPath {
                    prefix: self.prefix,
                    path: &self.path[1..],
                })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    // Anything but an object has no keys.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// An object key, borrowed from the text unless it has escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(key.into()))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(key.to_owned().into()))
            }
        }
        de.deserialize_str(KeyVisitor)
    }
}

/// Where `path` came from, with the manifest itself as the first evidence when the object was
/// read from one (`check`): a field present in it was written by its author.
pub fn provenance_in(ctx: &super::Context, meta: &ObjectMeta, path: &[&str]) -> Provenance {
    match ctx.written {
        Some(manifest) => {
            if path
                .iter()
                .try_fold(manifest, |v, key| v.get(*key))
                .is_some()
            {
                Provenance::UserSet
            } else {
                Provenance::Defaulted
            }
        }
        None => provenance(meta, path),
    }
}

/// Whether any field manager (any operation) owns `path`. `None` when the object carries no
/// managedFields at all.
pub fn any_manager_owns(meta: &ObjectMeta, path: &[&str]) -> Option<bool> {
    let entries = meta.managed_fields.as_ref().filter(|m| !m.is_empty())?;
    Some(
        entries
            .iter()
            .filter_map(|m| m.fields_v1.as_ref())
            .any(|f| owns(&f.0, path)),
    )
}

/// Whether a FieldsV1 set contains `path` (`{"f:spec":{"f:podManagementPolicy":{}}}`). The
/// admission path keeps the set as its JSON text (`admission::decode`); anything else as a tree.
fn owns(fields: &Value, path: &[&str]) -> bool {
    if let Value::String(text) = fields {
        return text_has(text, "f:", path).unwrap_or(false);
    }
    let mut node = fields;
    for key in path {
        match node.get(format!("f:{key}")) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(yaml: &str) -> ObjectMeta {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn server_side_apply_ownership_is_evidence() {
        let m = meta(
            r#"
managedFields:
- manager: kubectl
  operation: Apply
  fieldsType: FieldsV1
  fieldsV1: {"f:spec": {"f:podManagementPolicy": {}, "f:replicas": {}}}
"#,
        );
        assert_eq!(
            provenance(&m, &["spec", "podManagementPolicy"]),
            Provenance::UserSet
        );
        assert_eq!(
            provenance(&m, &["spec", "serviceName"]),
            Provenance::Defaulted
        );
    }

    #[test]
    fn client_side_apply_manifest_is_evidence() {
        let m = meta(
            r#"
annotations:
  kubectl.kubernetes.io/last-applied-configuration: '{"spec":{"replicas":3}}'
managedFields:
- manager: kubectl-client-side-apply
  operation: Update
  fieldsType: FieldsV1
  fieldsV1: {"f:spec": {"f:podManagementPolicy": {}, "f:replicas": {}}}
"#,
        );
        assert_eq!(provenance(&m, &["spec", "replicas"]), Provenance::UserSet);
        assert_eq!(
            provenance(&m, &["spec", "podManagementPolicy"]),
            Provenance::Defaulted
        );
    }

    #[test]
    fn a_manifest_has_a_path_as_its_json_tree_has_it() {
        let manifest = r#"{"metadata":{"name":"db","labels":{"a\"b":"c"}},"spec":{"replicas":3,"template":{"spec":{"containers":[{"name":"x"}]}},"podManagementPolicy":null}}"#;
        let tree: Value = serde_json::from_str(manifest).unwrap();
        for path in [
            &["spec", "replicas"][..],
            &["spec", "podManagementPolicy"],
            &["spec", "template", "spec", "containers"],
            &["spec", "template", "spec", "containers", "name"],
            &["spec", "replicas", "x"],
            &["metadata", "labels", "a\"b"],
            &["metadata", "labels", "a"],
            &["status"],
            &[],
        ] {
            let by_tree = path.iter().try_fold(&tree, |v, key| v.get(*key)).is_some();
            assert_eq!(manifest_has(manifest, path), Some(by_tree), "{path:?}");
        }
        // A key spelled with a \u escape is still that key.
        assert_eq!(manifest_has(r#"{"\u0073pec":1}"#, &["spec"]), Some(true));
        assert_eq!(
            manifest_has(r#"{"a":"\u0073pec"}"#, &["a", "spec"]),
            Some(false)
        );
        assert_eq!(manifest_has("{\"spec\":", &["spec"]), None);
        assert_eq!(manifest_has("{\"spec\":1} trailing", &["spec"]), None);
        // Not JSON, but without the key at all: it does not have the path.
        assert_eq!(manifest_has("{} trailing", &["spec"]), Some(false));
        assert_eq!(manifest_has("[1,2]", &["spec"]), Some(false));
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        // Few keys, so that paths hit; one with escapes, which is not borrowed from the text.
        let key = prop::sample::select(vec!["a", "spec", "b\"\\c", "é"]).prop_map(str::to_owned);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z\"\\\\]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Paths of up to three keys: those of [`json`], and one that no tree has.
    fn path() -> impl proptest::strategy::Strategy<Value = Vec<&'static str>> {
        proptest::collection::vec(
            proptest::sample::select(vec!["a", "spec", "b\"\\c", "é", "x"]),
            0..4,
        )
    }

    proptest::proptest! {
        /// Walking the text agrees with looking the path up in the decoded tree, for any JSON.
        #[test]
        fn manifest_has_agrees_with_the_tree(
            tree in json(),
            path in path(),
        ) {
            let text = serde_json::to_string(&tree).unwrap();
            let by_tree = path.iter().try_fold(&tree, |v, key| v.get(*key)).is_some();
            proptest::prop_assert_eq!(manifest_has(&text, &path), Some(by_tree));
        }

        /// A FieldsV1 set kept as text (the admission path) owns exactly what its tree owns.
        #[test]
        fn owns_reads_a_set_as_text_as_it_reads_its_tree(
            tree in json(),
            path in path(),
        ) {
            // A set is an object (a string in its place is the text form).
            proptest::prop_assume!(tree.is_object());
            let fields = prefixed(tree);
            let text = Value::String(serde_json::to_string(&fields).unwrap());
            proptest::prop_assert_eq!(owns(&text, &path), owns(&fields, &path));
        }
    }

    /// The tree with `f:` before every key, as a FieldsV1 set spells its fields.
    fn prefixed(tree: Value) -> Value {
        match tree {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (format!("f:{k}"), prefixed(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    #[test]
    fn plain_create_tells_nothing() {
        let m = meta(
            r#"
managedFields:
- manager: kubectl-create
  operation: Update
  fieldsType: FieldsV1
  fieldsV1: {"f:spec": {"f:podManagementPolicy": {}}}
"#,
        );
        assert_eq!(
            provenance(&m, &["spec", "podManagementPolicy"]),
            Provenance::Unknown
        );
        assert_eq!(
            any_manager_owns(&m, &["spec", "podManagementPolicy"]),
            Some(true)
        );
        assert_eq!(
            any_manager_owns(&m, &["spec", "storageClassName"]),
            Some(false)
        );
        assert_eq!(any_manager_owns(&ObjectMeta::default(), &["spec"]), None);
    }
}
