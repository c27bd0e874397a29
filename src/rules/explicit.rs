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
        && let Ok(manifest) = serde_json::from_str::<Value>(applied)
    {
        let found = path
            .iter()
            .try_fold(&manifest, |v, key| v.get(*key))
            .is_some();
        return if found {
            Provenance::UserSet
        } else {
            Provenance::Defaulted
        };
    }
    Provenance::Unknown
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

/// Whether a FieldsV1 set contains `path` (`{"f:spec":{"f:podManagementPolicy":{}}}`).
fn owns(fields: &Value, path: &[&str]) -> bool {
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
