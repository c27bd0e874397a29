//! Kubernetes LabelSelector semantics, as the apiserver and the eviction API apply them.
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
