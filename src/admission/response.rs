//! Turning an [`Evaluation`] into an AdmissionResponse: the patch, the denial, `warnings` (shown
//! by kubectl as `Warning: ...`) and `auditAnnotations` (kept in the apiserver's audit log,
//! prefixed with the webhook's name).
use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionResponse, PatchType};

use crate::engine::Evaluation;
use crate::policy::{Mode, MutateAction, ValidateAction};

/// The first line of a message: warnings and annotations are one line each.
pub fn headline(message: &str) -> &str {
    message.split('\n').next().unwrap_or(message)
}

/// Bounds on what one response carries, whatever the object's size: a StatefulSet with 200,000
/// containers must not turn into a 177 MB response. kube-apiserver itself truncates warnings
/// at 4096 characters in all (256 each beyond that); we stay within the same order.
pub mod limits {
    /// Characters of one warning, one denial line, one audit annotation entry.
    pub const ITEM: usize = 512;
    /// Warnings per response; the last one says how many were left out.
    pub const WARNINGS: usize = 12;
    /// Findings spelled out in a denial message, and the characters of each (a denial may
    /// hold a ready-to-apply manifest).
    pub const DENIALS: usize = 12;
    pub const DENIAL: usize = 2048;
    /// Characters of one audit annotation value (entries are joined with ` | `).
    pub const ANNOTATION: usize = 2048;
    /// Characters of the `would-patch` audit annotation (the exact JSON Patch).
    pub const WOULD_PATCH: usize = 64 * 1024;
}

/// `s`, cut to at most `max` characters (on a char boundary) with `…` when cut.
pub fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        // No more bytes than `max`, so no more characters: nothing to count.
        return std::borrow::Cow::Borrowed(s);
    }
    match s.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(s),
        Some((at, _)) => std::borrow::Cow::Owned(format!("{}…", &s[..at])),
    }
}

/// Audit annotations, each value bounded: entries past the bound are counted, not kept.
#[derive(Default)]
struct Annotations {
    values: HashMap<String, String>,
    omitted: HashMap<String, usize>,
}

impl Annotations {
    fn insert(&mut self, key: &str, value: String) {
        self.values.insert(key.to_owned(), value);
    }

    fn append(&mut self, key: &str, value: &str) {
        let value = truncate(value, limits::ITEM);
        match self.values.get_mut(key) {
            Some(v) if v.len() + value.len() + 3 > limits::ANNOTATION => {
                *self.omitted.entry(key.to_owned()).or_default() += 1;
            }
            Some(v) => {
                v.push_str(" | ");
                v.push_str(&value);
            }
            None => {
                self.values.insert(key.to_owned(), value.into_owned());
            }
        }
    }

    fn finish(mut self) -> HashMap<String, String> {
        for (key, n) in self.omitted {
            if let Some(v) = self.values.get_mut(&key) {
                v.push_str(&format!(" | ... and {n} more"));
            }
        }
        self.values
    }
}

/// Warnings, bounded in number and length; the last says how many were left out.
#[derive(Default)]
struct Warnings {
    kept: Vec<String>,
    omitted: usize,
}

impl Warnings {
    fn push(&mut self, warning: String) {
        if self.kept.len() < limits::WARNINGS {
            self.kept
                .push(truncate(&warning, limits::ITEM).into_owned());
        } else {
            self.omitted += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.omitted > 0 {
            self.kept.push(format!(
                "stateful-guard: ... and {} more warnings (see the audit annotations and logs)",
                self.omitted
            ));
        }
        self.kept
    }
}

/// Applies `eval` to the response built from the request.
pub fn build(resp: AdmissionResponse, eval: &Evaluation, meta: &ObjectMeta) -> AdmissionResponse {
    // Skipped (no policy applies) still keeps the decisions made at creation.
    if eval.skipped.is_some() && eval.mutations.is_empty() && eval.recorded.is_none() {
        return resp;
    }
    let mut warnings = Warnings::default();
    let mut annotations = Annotations::default();
    if eval.policy.is_some() {
        annotations.insert(
            "policy",
            format!("{} ({})", eval.policy_name(), eval.mode.as_str()),
        );
    }

    report_mutations(eval, meta, &mut warnings, &mut annotations);
    let mut denials = report_findings(eval, &mut warnings, &mut annotations);
    // A mutation rule that refuses the request as it is (a claim template that shrinks).
    for m in &eval.mutations {
        if let Some(why) = &m.mutation.refusal {
            let rule = m.rule.as_str();
            if m.applied {
                denials.insert(0, format!("[{rule}] {}", truncate(why, limits::DENIAL)));
            } else {
                warnings.push(format!(
                    "stateful-guard (audit mode): would deny: {rule}: {}",
                    headline(why)
                ));
            }
            annotations.append(
                rule,
                &format!("{}: refused: {}", m.action.as_str(), headline(why)),
            );
        }
    }

    let mut resp = resp;
    resp.audit_annotations = annotations.finish();
    let warnings = warnings.finish();
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
    // The operations are serialized where they are, borrowed from the evaluation; `to_wire`
    // sends the bytes with their patchType.
    match serde_json::to_vec(&ops) {
        Ok(patch) => resp.patch = Some(patch),
        Err(error) => {
            tracing::error!(%error, "could not serialize the patch; admitting unchanged")
        }
    }
    resp
}

/// What the mutations did, or would have done: a warning each (in audit mode too), the
/// `mutated` and `kept` annotations, the `would-patch` of those not applied.
fn report_mutations(
    eval: &Evaluation,
    meta: &ObjectMeta,
    warnings: &mut Warnings,
    annotations: &mut Annotations,
) {
    let auditing = eval.mode == Mode::Audit;
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
                annotations.append(
                    rule,
                    &format!("{}: would have {summary}", m.action.as_str()),
                );
            }
        }
        for note in &m.mutation.notes {
            if m.action == MutateAction::Audit && !auditing {
                annotations.append(rule, &format!("audit: {note}"));
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
            annotations.insert(key, rules.join(","));
        }
    }
    let would = eval.would_be_patch(meta);
    if !would.is_empty()
        && let Ok(json) = serde_json::to_string(&would)
    {
        let json = if json.len() > limits::WOULD_PATCH {
            format!(
                "too large to record ({} bytes, {} operations)",
                json.len(),
                would.len()
            )
        } else {
            json
        };
        annotations.insert("would-patch", json);
    }
}

/// What the findings say: a warning each for `warn` (and for `enforce` in audit mode), an audit
/// annotation each; returns the denial's lines (at most [`limits::DENIALS`], then how many more).
fn report_findings(
    eval: &Evaluation,
    warnings: &mut Warnings,
    annotations: &mut Annotations,
) -> Vec<String> {
    let mut denials = Vec::new();
    let mut denials_omitted = 0;
    for r in &eval.findings {
        let rule = r.finding.rule.as_str();
        let head = headline(&r.finding.message);
        match (eval.mode, r.action) {
            (_, ValidateAction::Warn) => warnings.push(format!("stateful-guard: {rule}: {head}")),
            (Mode::Audit, ValidateAction::Enforce) => warnings.push(format!(
                "stateful-guard (audit mode): would deny: {rule}: {head}"
            )),
            (Mode::Enforce, ValidateAction::Enforce) => {
                if denials.len() < limits::DENIALS {
                    denials.push(format!(
                        "[{rule}] {}",
                        truncate(r.finding.message.trim_end(), limits::DENIAL)
                    ))
                } else {
                    denials_omitted += 1;
                }
            }
            // A policy in mode off evaluates nothing: no findings reach here.
            (_, ValidateAction::Audit | ValidateAction::Off) | (Mode::Off, _) => {}
        }
        annotations.append(rule, &format!("{}: {head}", r.action.as_str()));
    }

    if denials_omitted > 0 {
        denials.push(format!(
            "... and {denials_omitted} more findings of the same kinds"
        ));
    }
    denials
}

/// The response body as kube-apiserver expects it.
///
/// `kube::core::admission::AdmissionResponse` serializes `patch` (`Vec<u8>`) as an array of
/// numbers (kube-rs issue 1781), but the API's JSON encoding of `[]byte` is a base64 string, and
/// kube-apiserver rejects anything else. The review is built with kube's types and serialized by
/// them; only the patch is written here, as a base64 string beside kube's other fields, with its
/// `patchType`, `JSONPatch`, the one type the API defines. (kube sets that type only in
/// `with_patch`, which takes an owned `Patch`; [`build`] serializes borrowed operations instead,
/// so `patchType` is never set in kube's part and is never written twice.)
pub fn to_wire(mut review: super::Reply) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine as _;

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Review<'a> {
        api_version: &'a str,
        kind: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        response: Option<Response<'a>>,
    }

    #[derive(serde::Serialize)]
    struct Response<'a> {
        #[serde(flatten)]
        kube: &'a AdmissionResponse,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<String>,
        #[serde(rename = "patchType", skip_serializing_if = "Option::is_none")]
        patch_type: Option<PatchType>,
    }

    let patch = review.response.as_mut().and_then(|r| r.patch.take());
    let wire = Review {
        api_version: &review.types.api_version,
        kind: &review.types.kind,
        response: review.response.as_ref().map(|kube| Response {
            kube,
            patch_type: patch.as_ref().map(|_| PatchType::JsonPatch),
            patch: patch.map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
        }),
    };
    serde_json::to_vec(&wire)
}
