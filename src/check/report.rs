//! `check`'s report: one verdict per object, as JSON/YAML (the types) or for people
//! ([`render_text`]).
use json_patch::PatchOperation;
use serde::{Deserialize, Serialize};

use crate::policy::{Mode, ValidateAction};
use crate::rules::RuleId;

/// One finding in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportFinding {
    pub rule: RuleId,
    pub action: ValidateAction,
    pub message: String,
}

/// One mutation in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportMutation {
    pub rule: RuleId,
    pub applied: bool,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The verdict on one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectReport {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub file: String,
    pub document: usize,
    /// 1-based line where the document starts in its file (0: not from a file).
    #[serde(default)]
    pub line: usize,
    pub policy: String,
    pub mode: Mode,
    pub allowed: bool,
    /// The JSON Patch the mutating webhook would return.
    pub patch: Vec<PatchOperation>,
    pub mutations: Vec<ReportMutation>,
    pub findings: Vec<ReportFinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Summary {
    pub objects: usize,
    pub denied: usize,
    pub mutated: usize,
    pub findings: usize,
}

impl Summary {
    /// The summary of these verdicts.
    pub fn of(objects: &[ObjectReport]) -> Self {
        Self {
            objects: objects.len(),
            denied: objects.iter().filter(|o| !o.allowed).count(),
            mutated: objects.iter().filter(|o| !o.patch.is_empty()).count(),
            findings: objects.iter().map(|o| o.findings.len()).sum(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub objects: Vec<ObjectReport>,
    pub summary: Summary,
}

/// The report for people.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    for o in &report.objects {
        let verdict = if o.allowed { "allowed" } else { "DENIED" };
        let place = if o.file == super::cluster::CLUSTER_FILE {
            "in the cluster".to_owned()
        } else {
            format!("{}:{}, document {}", o.file, o.line, o.document)
        };
        out.push_str(&format!(
            "{} {}/{} ({place}): {verdict}, policy {} ({})\n",
            o.kind,
            o.namespace,
            o.name,
            o.policy,
            o.mode.as_str()
        ));
        if let Some(why) = &o.skipped {
            out.push_str(&format!("  skipped: {why}\n"));
        }
        for m in &o.mutations {
            if !m.summary.is_empty() {
                let tag = if m.applied { "mutate" } else { "would mutate" };
                out.push_str(&format!("  {tag:<7} {}: {}\n", m.rule, m.summary));
            }
            for note in &m.notes {
                out.push_str(&format!("  {:<7} {}: {note}\n", "note", m.rule));
            }
        }
        for f in &o.findings {
            let tag = if f.action == ValidateAction::Enforce && o.mode == Mode::Enforce {
                "DENY"
            } else {
                f.action.as_str()
            };
            let mut lines = f.message.lines();
            out.push_str(&format!(
                "  {tag:<7} {}: {}\n",
                f.rule,
                lines.next().unwrap_or("")
            ));
            for line in lines {
                out.push_str(&format!("          {line}\n"));
            }
        }
    }
    let s = &report.summary;
    out.push_str(&format!(
        "{} objects checked: {} denied, {} would be mutated, {} findings\n",
        s.objects, s.denied, s.mutated, s.findings
    ));
    out
}
