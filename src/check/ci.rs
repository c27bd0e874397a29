//! `check`'s report in the formats CI systems read: SARIF 2.1.0 (GitHub code scanning and other
//! SARIF viewers) and JUnit XML (test reports).
//!
//! Both carry every finding with its file and the line its document starts on, and every input
//! error, so that a document `check` could not read shows where CI looks too.
use std::collections::BTreeMap;

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
use serde_sarif::sarif;

use super::InputError;
use super::report::{ObjectReport, Report, ReportFinding};
use crate::policy::{Mode, ValidateAction};
use crate::rules::RuleId;

const SARIF_SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
const INFORMATION_URI: &str = "https://github.com/stateful-guard/stateful-guard";

/// How a finding counts in CI: a denial, a warning, or a note (`audit`).
fn severity(object: &ObjectReport, finding: &ReportFinding) -> Severity {
    match finding.action {
        ValidateAction::Enforce if object.mode == Mode::Enforce => Severity::Deny,
        ValidateAction::Enforce | ValidateAction::Warn => Severity::Warn,
        _ => Severity::Note,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Severity {
    Note,
    Warn,
    Deny,
}

/// The file as a SARIF URI: relative paths stay relative (GitHub resolves them against the
/// repository root), with `/` separators and spaces escaped.
fn uri(file: &str) -> String {
    file.trim_start_matches("./")
        .replace('\\', "/")
        .replace('%', "%25")
        .replace(' ', "%20")
}

fn object_name(o: &ObjectReport) -> String {
    format!("{} {}/{}", o.kind, o.namespace, o.name)
}

/// The report as a SARIF 2.1.0 log.
pub fn sarif(report: &Report, errors: &[InputError]) -> Result<String, String> {
    // The rules findings come from (the validation rules), in the order `ruleIndex` counts.
    let validations: Vec<RuleId> = RuleId::ALL
        .iter()
        .copied()
        .filter(|r| !r.is_mutation())
        .collect();
    let rules: Vec<sarif::ReportingDescriptor> = validations
        .iter()
        .map(|&rule| {
            let d = rule.description();
            sarif::ReportingDescriptor::builder()
                .id(rule.as_str())
                .name(rule.as_str())
                .short_description(
                    sarif::MultiformatMessageString::builder()
                        .text(&d.summary)
                        .build(),
                )
                .full_description(
                    sarif::MultiformatMessageString::builder()
                        .text(format!("{} {}", d.summary, d.help))
                        .build(),
                )
                .help(
                    sarif::MultiformatMessageString::builder()
                        .text(&d.help)
                        .markdown(&d.help)
                        .build(),
                )
                .build()
        })
        .collect();
    let index: BTreeMap<RuleId, i64> = validations
        .iter()
        .enumerate()
        .map(|(i, &r)| (r, i as i64))
        .collect();
    let mut results = Vec::new();
    for object in &report.objects {
        for finding in &object.findings {
            let level = match severity(object, finding) {
                Severity::Deny => sarif::ResultLevel::Error,
                Severity::Warn => sarif::ResultLevel::Warning,
                Severity::Note => sarif::ResultLevel::Note,
            };
            let region = sarif::Region::builder()
                .start_line(object.line.max(1) as i64)
                .build();
            let location = sarif::Location::builder()
                .physical_location(
                    sarif::PhysicalLocation::builder()
                        .artifact_location(
                            sarif::ArtifactLocation::builder()
                                .uri(uri(&object.file))
                                .build(),
                        )
                        .region(region)
                        .build(),
                )
                .message(sarif::Message::builder().text(object_name(object)).build())
                .build();
            let fingerprint = format!(
                "{}/{}/{}/{}: {}",
                object.kind, object.namespace, object.name, finding.rule, finding.message
            );
            results.push(
                sarif::Result::builder()
                    .rule_id(finding.rule.as_str())
                    .rule_index(index[&finding.rule])
                    .level(level)
                    .message(sarif::Message::builder().text(&finding.message).build())
                    .locations(vec![location])
                    .partial_fingerprints(BTreeMap::from([(
                        "statefulGuardFinding/v1".to_owned(),
                        fingerprint,
                    )]))
                    .build(),
            );
        }
    }
    let notifications: Vec<sarif::Notification> = errors
        .iter()
        .map(|e| {
            sarif::Notification::builder()
                .level(serde_json::json!("error"))
                .message(sarif::Message::builder().text(e.to_string()).build())
                .build()
        })
        .collect();
    let invocation = sarif::Invocation::builder()
        .execution_successful(errors.is_empty())
        .tool_execution_notifications(notifications)
        .build();
    let driver = sarif::ToolComponent::builder()
        .name("stateful-guard")
        .version(env!("CARGO_PKG_VERSION"))
        .semantic_version(env!("CARGO_PKG_VERSION"))
        .information_uri(INFORMATION_URI)
        .rules(rules)
        .build();
    let run = sarif::Run::builder()
        .tool(sarif::Tool::builder().driver(driver).build())
        .results(results)
        .invocations(vec![invocation])
        .build();
    let log = sarif::Sarif::builder()
        .schema(SARIF_SCHEMA)
        .version(serde_json::json!("2.1.0"))
        .runs(vec![run])
        .build();
    serde_json::to_string_pretty(&log)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}

/// The report as JUnit XML: a suite per object, a test case per validation rule that reported
/// on it (a failure for each denial or warning; `audit` findings pass, with their messages as
/// output), one passing case when nothing was found, and a suite of errors for the documents
/// that could not be evaluated.
pub fn junit(report: &Report, errors: &[InputError]) -> Result<String, String> {
    let mut junit = quick_junit::Report::new("stateful-guard check");
    for object in &report.objects {
        let mut suite = TestSuite::new(format!(
            "{} ({}:{})",
            object_name(object),
            object.file,
            object.line
        ));
        let mut by_rule: BTreeMap<RuleId, Vec<&ReportFinding>> = BTreeMap::new();
        for f in &object.findings {
            by_rule.entry(f.rule).or_default().push(f);
        }
        if by_rule.is_empty() {
            let mut case = TestCase::new("stateful-guard", TestCaseStatus::success());
            case.set_classname(object_name(object));
            suite.add_test_case(case);
        }
        for (rule, findings) in by_rule {
            let worst = findings
                .iter()
                .map(|f| severity(object, f))
                .max()
                .unwrap_or(Severity::Note);
            let text = findings
                .iter()
                .map(|f| format!("[{}] {}", f.action.as_str(), f.message))
                .collect::<Vec<_>>()
                .join("\n");
            let status = match worst {
                Severity::Note => TestCaseStatus::success(),
                severity => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_type(if severity == Severity::Deny {
                        "deny"
                    } else {
                        "warn"
                    });
                    status.set_message(findings[0].message.as_str());
                    status.set_description(text.as_str());
                    status
                }
            };
            let mut case = TestCase::new(rule.as_str(), status);
            case.set_classname(object_name(object));
            if worst == Severity::Note {
                case.set_system_out(text);
            }
            suite.add_test_case(case);
        }
        junit.add_test_suite(suite);
    }
    if !errors.is_empty() {
        let mut suite = TestSuite::new("input");
        for (i, e) in errors.iter().enumerate() {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_type("input");
            status.set_message(e.to_string());
            let mut case = TestCase::new(format!("document {}", i + 1), status);
            case.set_classname("input");
            suite.add_test_case(case);
        }
        junit.add_test_suite(suite);
    }
    junit.to_string().map_err(|e| e.to_string())
}
