//! Turning an [`Evaluation`] into an AdmissionResponse: the patch, the denial, `warnings` (shown
//! by kubectl as `Warning: ...`) and `auditAnnotations` (kept in the apiserver's audit log,
//! prefixed with the webhook's name).
use std::collections::HashMap;

use json_patch::Patch;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::AdmissionResponse;

use crate::engine::Evaluation;
use crate::policy::{Mode, MutateAction, ValidateAction};

/// The first line of a message: warnings and annotations are one line each.
pub fn headline(message: &str) -> &str {
    message.split('\n').next().unwrap_or(message)
}

fn annotate(annotations: &mut HashMap<String, String>, key: &str, value: String) {
    annotations
        .entry(key.to_owned())
        .and_modify(|v| {
            v.push_str(" | ");
            v.push_str(&value);
        })
        .or_insert(value);
}

/// Applies `eval` to the response built from the request.
pub fn build(resp: AdmissionResponse, eval: &Evaluation, meta: &ObjectMeta) -> AdmissionResponse {
    // Skipped (no policy applies) still keeps the decisions made at creation.
    if eval.skipped.is_some() && eval.mutations.is_empty() && eval.recorded.is_none() {
        return resp;
    }
    let auditing = eval.mode == Mode::Audit;
    let mut warnings = Vec::new();
    let mut annotations = HashMap::new();
    if eval.policy.is_some() {
        annotations.insert(
            "policy".to_owned(),
            format!("{} ({})", eval.policy_name(), eval.mode.as_str()),
        );
    }

    for m in &eval.mutations {
        let rule = m.rule.as_str();
        let summary = &m.mutation.summary;
        if !m.mutation.ops.is_empty() {
            if m.applied {
                warnings.push(format!("stateful-guard: {rule}: {summary}"));
            } else {
                if auditing {
                    warnings.push(format!(
                        "stateful-guard (audit mode): {rule}: would have {summary}"
                    ));
                }
                annotate(
                    &mut annotations,
                    rule,
                    format!("{}: would have {summary}", m.action.as_str()),
                );
            }
        }
        for note in &m.mutation.notes {
            if m.action == MutateAction::Audit && !auditing {
                annotate(&mut annotations, rule, format!("audit: {note}"));
            } else {
                warnings.push(format!("stateful-guard: {rule}: {note}"));
            }
        }
    }
    for (key, kept) in [("mutated", false), ("kept", true)] {
        let rules: Vec<&str> = eval
            .mutations
            .iter()
            .filter(|m| m.applied && m.kept == kept && !m.mutation.ops.is_empty())
            .map(|m| m.rule.as_str())
            .collect();
        if !rules.is_empty() {
            annotations.insert(key.to_owned(), rules.join(","));
        }
    }
    let would = eval.would_be_patch(meta);
    if !would.is_empty()
        && let Ok(json) = serde_json::to_string(&would)
    {
        annotations.insert("would-patch".to_owned(), json);
    }

    let mut denials = Vec::new();
    for r in &eval.findings {
        let rule = r.finding.rule.as_str();
        let head = headline(&r.finding.message);
        match (eval.mode, r.action) {
            (_, ValidateAction::Warn) => warnings.push(format!("stateful-guard: {rule}: {head}")),
            (Mode::Audit, ValidateAction::Enforce) => warnings.push(format!(
                "stateful-guard (audit mode): would deny: {rule}: {head}"
            )),
            (Mode::Enforce, ValidateAction::Enforce) => {
                denials.push(format!("[{rule}] {}", r.finding.message.trim_end()))
            }
            (_, ValidateAction::Audit | ValidateAction::Off) => {}
        }
        annotate(
            &mut annotations,
            rule,
            format!("{}: {head}", r.action.as_str()),
        );
    }

    let mut resp = resp;
    resp.audit_annotations = annotations;
    if !warnings.is_empty() {
        resp.warnings = Some(warnings);
    }
    if !denials.is_empty() {
        return resp.deny(format!("stateful-guard: {}", denials.join("\n")));
    }
    let ops = eval.patch(meta);
    if ops.is_empty() {
        return resp;
    }
    match resp.clone().with_patch(Patch(ops)) {
        Ok(patched) => patched,
        Err(error) => {
            tracing::error!(%error, "could not serialize the patch; admitting unchanged");
            resp
        }
    }
}

/// The response body as kube-apiserver expects it.
///
/// `kube::core::admission::AdmissionResponse` serializes `patch` (`Vec<u8>`) as an array of
/// numbers (kube-rs issue 1781), but the API's JSON encoding of `[]byte` is a base64 string, and
/// kube-apiserver rejects anything else. The review is built with kube's types; only that one
/// field is re-encoded here.
pub fn to_wire(
    mut review: kube::core::admission::AdmissionReview<kube::core::DynamicObject>,
) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine as _;
    let patch = review.response.as_mut().and_then(|r| r.patch.take());
    let mut value = serde_json::to_value(&review)?;
    if let (Some(patch), Some(response)) = (
        patch,
        value.get_mut("response").and_then(|r| r.as_object_mut()),
    ) {
        response.insert(
            "patch".to_owned(),
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(patch)),
        );
    }
    serde_json::to_vec(&value)
}
