//! Kubernetes LabelSelector semantics, as the apiserver and the eviction API apply them.
//!
//! Matching has exactly the semantics of kube's `kube::core::Selector` on every selector the
//! apiserver accepts (`tests/labels.rs` proves it over random selectors and label sets). It is
//! kept here because kube's `Selector` is built by an owned conversion of the `LabelSelector`
//! (every key and value copied), and the rules match borrowed selectors (of the policy, of the
//! object under review) on every review; and because kube has no counterpart of [`validate`],
//! the apiserver's own checks that policies' selectors go through. The cached PDBs, converted
//! once when they arrive, keep kube's `Selector` (`cluster::cached`).
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `selector` selects an object carrying `labels`.
///
/// An empty selector (`{}`) selects everything; every `matchLabels` entry and every
/// `matchExpressions` requirement must hold. An unknown operator selects nothing, as in
/// `metav1.LabelSelectorAsSelector`, which rejects it.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    labels_ok
        && selector.match_expressions.iter().flatten().all(|req| {
            let values = req.values.as_deref().unwrap_or_default();
            match req.operator.as_str() {
                "In" => labels.get(&req.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&req.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&req.key),
                "DoesNotExist" => !labels.contains_key(&req.key),
                _ => false,
            }
        })
}

/// Validates a LabelSelector as kube-apiserver does (`ValidateLabelSelector` of
/// apimachinery): operators, values per operator, label keys and values. `field` is the path of
/// the selector, for the message, which uses the apiserver's words.
pub fn check(selector: &LabelSelector, field: &str) -> Result<(), String> {
    for (key, value) in selector.match_labels.iter().flatten() {
        validate_key(key, &format!("{field}.matchLabels"))?;
        validate_value(value, &format!("{field}.matchLabels"))?;
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "{at}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "{at}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "{at}.operator: Invalid value: {other:?}: not a valid selector operator"
                ));
            }
        }
        validate_key(&req.key, &format!("{at}.key"))?;
        for value in values {
            validate_value(value, &format!("{at}.values"))?;
        }
    }
    Ok(())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters: a label value (which may
/// also be empty) or the name part of a key.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS subdomain (RFC 1123), the optional prefix of a label key.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn validate_key(key: &str, field: &str) -> Result<(), String> {
    let valid = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{field}: Invalid value: {key:?}: a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (with an optional DNS subdomain prefix and '/')"
        ))
    }
}

fn validate_value(value: &str, field: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{field}: Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

/// Renders a selector the way `kubectl` prints one: `app=db,tier in (a,b),!legacy`.
pub fn display(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for req in selector.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default().join(",");
        parts.push(match req.operator.as_str() {
            "In" => format!("{} in ({values})", req.key),
            "NotIn" => format!("{} notin ({values})", req.key),
            "Exists" => req.key.clone(),
            "DoesNotExist" => format!("!{}", req.key),
            other => format!("{} {other} ({values})", req.key),
        });
    }
    if parts.is_empty() {
        "<everything>".to_owned()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn selector(yaml: &str) -> LabelSelector {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn selectors_are_validated_as_the_apiserver_validates_them() {
        let ok = [
            "{}",
            "matchLabels: {app: db, app.kubernetes.io/name: db, empty: ''}",
            "matchExpressions: [{key: tier, operator: In, values: [a, b]}]",
            "matchExpressions: [{key: legacy, operator: DoesNotExist}]",
        ];
        for yaml in ok {
            assert_eq!(check(&selector(yaml), "s"), Ok(()), "{yaml}");
        }
        let bad = [
            (
                "matchExpressions: [{key: a, operator: NotIn}]",
                "s.matchExpressions[0].values: Required value",
            ),
            (
                "matchExpressions: [{key: a, operator: In, values: []}]",
                "Required value",
            ),
            (
                "matchExpressions: [{key: a, operator: Exists, values: [x]}]",
                "values: Forbidden",
            ),
            (
                "matchExpressions: [{key: a, operator: Equals, values: [x]}]",
                "operator: Invalid value: \"Equals\": not a valid selector operator",
            ),
            (
                "matchLabels: {'-bad': x}",
                "s.matchLabels: Invalid value: \"-bad\"",
            ),
            ("matchLabels: {'Bad_Prefix.io/x': y}", "qualified name"),
            ("matchLabels: {app: 'no spaces'}", "a valid label"),
        ];
        for (yaml, expected) in bad {
            let err = check(&selector(yaml), "s").expect_err(yaml);
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn exprs(reqs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(reqs),
            match_labels: None,
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(matches(&LabelSelector::default(), &labels(&[])));
        assert!(matches(&LabelSelector::default(), &labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_must_all_hold() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "db"), ("tier", "data")])),
            match_expressions: None,
        };
        assert!(matches(
            &sel,
            &labels(&[("app", "db"), ("tier", "data"), ("x", "y")])
        ));
        assert!(!matches(&sel, &labels(&[("app", "db")])));
        assert!(!matches(&sel, &labels(&[("app", "web"), ("tier", "data")])));
    }

    #[test]
    fn expressions_follow_kubernetes_semantics() {
        let l = labels(&[("app", "db"), ("env", "prod")]);
        assert!(matches(
            &exprs(vec![req("app", "In", &["db", "cache"])]),
            &l
        ));
        assert!(!matches(&exprs(vec![req("app", "In", &["web"])]), &l));
        assert!(!matches(&exprs(vec![req("missing", "In", &["x"])]), &l));
        assert!(matches(&exprs(vec![req("env", "NotIn", &["dev"])]), &l));
        assert!(!matches(&exprs(vec![req("env", "NotIn", &["prod"])]), &l));
        // NotIn holds when the key is absent, as in Kubernetes.
        assert!(matches(&exprs(vec![req("missing", "NotIn", &["x"])]), &l));
        assert!(matches(&exprs(vec![req("app", "Exists", &[])]), &l));
        assert!(!matches(&exprs(vec![req("missing", "Exists", &[])]), &l));
        assert!(matches(
            &exprs(vec![req("missing", "DoesNotExist", &[])]),
            &l
        ));
        assert!(!matches(&exprs(vec![req("app", "DoesNotExist", &[])]), &l));
        assert!(!matches(&exprs(vec![req("app", "Bogus", &["db"])]), &l));
    }

    #[test]
    fn display_reads_like_kubectl() {
        let mut sel = exprs(vec![
            req("tier", "In", &["a", "b"]),
            req("legacy", "DoesNotExist", &[]),
        ]);
        sel.match_labels = Some(labels(&[("app", "db")]));
        assert_eq!(display(&sel), "app=db,tier in (a,b),!legacy");
    }
}
