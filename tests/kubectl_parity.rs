//! `check` reads manifests as kubectl reads them, writes `--fix` output kubectl reads back as
//! the same objects, and reports where CI looks (SARIF, JUnit) in formats a second
//! implementation parses.
//!
//! The second implementation of the reading is `kubectl patch --local -f FILE --type=merge -p
//! '{}' -o json`: offline, it reads a file exactly as `kubectl apply` does (YAML 1.1 through
//! go-yaml v2). The inputs are the repository's own manifests (`tests/fixtures/check/`, one per
//! case: octal modes, YAML 1.1 booleans, `podManagementPolicy: ""`, null fields, a sidecar
//! without ports, a startup probe alone, a stateless tier, an explicit `OrderedReady`) and, in
//! place, the public charts' renders beside the clone (`../shared/fixtures/charts/`, third-party
//! material that never enters this repository; skipped with one line when absent).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::server::binary;
use common::*;
use serde_json::Value;

/// The repository's own manifests, each a case `check` must read as kubectl does.
fn own_manifests() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["tests/fixtures/check", "tests/fixtures/manifests"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 10, "the repository's manifests: {files:?}");
    files
}

/// The public charts' renders beside the clone (`SG_TEST_CHARTS` names another directory), or
/// `None`, said in one line, when they are absent.
fn charts() -> Option<Vec<PathBuf>> {
    let dir = std::env::var_os("SG_TEST_CHARTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/charts"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        // Written to stderr itself, once: cargo test hides what `eprintln!` prints in a test
        // that passes.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: the public charts' renders are not at {} (set SG_TEST_CHARTS); only the repository's manifests are checked",
                dir.display()
            );
        });
        return None;
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Some(files)
}

fn all_inputs() -> Vec<PathBuf> {
    let mut files = own_manifests();
    files.extend(charts().unwrap_or_default());
    files
}

/// What kubectl reads from a file: each document as JSON.
fn kubectl_read(file: &Path) -> Vec<Value> {
    let out = Command::new(tool("kubectl"))
        .args([
            "patch",
            "--local",
            "--type=merge",
            "-p",
            "{}",
            "-o",
            "json",
            "-f",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl cannot read {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect()
}

/// What `check` reads from a text: each document as JSON; every document must read.
fn check_read(text: &str, name: &str) -> Vec<Value> {
    let (docs, errors) = stateful_guard::check::read_stream(text, name);
    assert!(errors.is_empty(), "{name}: {errors:?}");
    docs.into_iter().map(|d| d.value).collect()
}

fn check_cli(args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("check")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_reads_every_document_as_kubectl_does() {
    for file in all_inputs() {
        let text = std::fs::read_to_string(&file).unwrap();
        let ours = check_read(&text, &file.display().to_string());
        let theirs = kubectl_read(&file);
        assert_eq!(ours.len(), theirs.len(), "{}", file.display());
        for (ours, theirs) in ours.iter().zip(&theirs) {
            assert_eq!(ours, theirs, "{} reads differently", file.display());
        }
    }
}

#[test]
fn fix_output_reads_back_as_the_fixed_objects_and_stays_valid() {
    let policies = default_policies();
    let dir = tempfile::tempdir().unwrap();
    for file in all_inputs() {
        let name = file.display().to_string();
        let out = check_cli(&["--fix", "-f", &name]);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{name}: check --fix exits {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let written = dir.path().join("fixed.yaml");
        std::fs::write(&written, &out.stdout).unwrap();
        // kubectl reads back exactly the objects check fixed.
        let text = std::fs::read_to_string(&file).unwrap();
        let (docs, _) = stateful_guard::check::read_stream(&text, &name);
        let fixed = stateful_guard::check::check(&docs, &policies, "default").fixed;
        let theirs = kubectl_read(&written);
        assert_eq!(
            theirs, fixed,
            "{name}: kubectl reads the --fix output differently"
        );
        // Every input passes Kubernetes' schemas, and so does what --fix made of it.
        let objects: Vec<Value> = theirs
            .into_iter()
            .map(|mut o| {
                // Server-set, and typed as a string by the schema.
                if let Some(meta) = o["metadata"].as_object_mut() {
                    meta.remove("creationTimestamp");
                }
                o
            })
            .collect();
        if let Err(why) = kubernetes_validate_all(&objects, "1.33.0") {
            panic!("{name}: the --fix output fails kubernetes-validate --strict:\n{why}");
        }
    }
}

/// The `-o json` report of one file.
fn report(file: &str) -> (Option<i32>, Value) {
    let out = check_cli(&["-o", "json", "-f", file]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{file}: {e}: {}", String::from_utf8_lossy(&out.stderr))),
    )
}

/// The container a probe finding names (`container "NAME" of ...`).
fn named_container(message: &str) -> Option<&str> {
    message
        .strip_prefix("container \"")
        .and_then(|rest| rest.split('"').next())
}

#[test]
fn charts_are_judged_never_refused_and_port_less_sidecars_are_not_asked_for_probes() {
    let Some(charts) = charts() else {
        return;
    };
    for file in charts {
        let name = file.display().to_string();
        let (code, report) = report(&name);
        assert!(matches!(code, Some(0 | 1)), "{name}: exit {code:?}");
        let text = std::fs::read_to_string(&file).unwrap();
        let docs = check_read(&text, &name);
        for object in report["objects"].as_array().unwrap() {
            let doc = docs
                .iter()
                .find(|d| d["kind"] == object["kind"] && d["metadata"]["name"] == object["name"])
                .unwrap();
            let pod = &doc["spec"]["template"]["spec"];
            let long_running: Vec<&Value> = pod["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(
                    pod["initContainers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| c["restartPolicy"] == "Always"),
                )
                .collect();
            for finding in object["findings"].as_array().unwrap() {
                let rule = finding["rule"].as_str().unwrap();
                if !matches!(rule, "require-readiness-probe" | "require-liveness-probe") {
                    continue;
                }
                let message = finding["message"].as_str().unwrap();
                let container = named_container(message).unwrap();
                let c = long_running
                    .iter()
                    .find(|c| c["name"] == container)
                    .unwrap();
                let has_ports = c["ports"].as_array().is_some_and(|p| !p.is_empty());
                assert!(
                    has_ports || long_running.len() == 1,
                    "{name}: {rule} on container {container:?}, which serves nothing: {message}"
                );
            }
        }
    }
}

#[test]
fn each_case_of_our_own_manifests_is_judged_by_role() {
    let case = |file: &str| report(&format!("tests/fixtures/check/{file}")).1;
    let findings = |report: &Value| -> Vec<(String, String, String)> {
        report["objects"][0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["rule"].as_str().unwrap().to_owned(),
                    f["action"].as_str().unwrap().to_owned(),
                    f["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    // Octal modes read as kubectl reads them, and the object is admitted.
    let r = case("octal-modes.yaml");
    assert_eq!(r["objects"][0]["allowed"], true, "{r}");
    // YAML 1.1 booleans where the API takes booleans.
    let (code, _) = report("tests/fixtures/check/yes-no-on-off.yaml");
    assert_eq!(code, Some(0));
    // `podManagementPolicy: ""` is no choice: Parallel is set.
    let r = case("empty-pod-management-policy.yaml");
    let patch = r["objects"][0]["patch"].to_string();
    assert!(patch.contains("Parallel"), "{patch}");
    // Port-less sidecars are not asked for probes; the database is.
    let r = case("sidecar-without-ports.yaml");
    assert!(
        findings(&r)
            .iter()
            .all(|(rule, _, message)| !rule.contains("probe")
                || !(message.contains("config-reload") || message.contains("log-shipper"))),
        "{r}"
    );
    assert_eq!(r["objects"][0]["allowed"], true);
    // A startup probe alone: warned, not denied.
    let r = case("startup-probe-only.yaml");
    assert_eq!(r["objects"][0]["allowed"], true, "{r}");
    assert!(
        findings(&r)
            .iter()
            .any(|(rule, action, _)| rule == "require-readiness-probe" && action == "warn"),
        "{r}"
    );
    // A tier that keeps no data is not told to add storage.
    let r = case("stateless-tier.yaml");
    assert!(
        findings(&r)
            .iter()
            .all(|(rule, ..)| rule != "require-persistent-storage"),
        "{r}"
    );
    // An explicit OrderedReady on three replicas is kept, and warned about.
    let r = case("explicit-orderedready.yaml");
    let notes = r["objects"][0]["mutations"].to_string();
    assert!(notes.contains("deadlock"), "{notes}");
    assert!(!r["objects"][0]["patch"].to_string().contains("Parallel"));
}

#[test]
fn one_bad_document_never_hides_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.yaml");
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check/octal-modes.yaml"),
    )
    .unwrap();
    std::fs::write(
        &file,
        format!(
            "{good}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n  labels: {{x: 1}}\n---\nkey: [unclosed\n---\n{}",
            good.replace("name: modes\n", "name: modes-2\n")
        ),
    )
    .unwrap();
    let name = file.display().to_string();
    let out = check_cli(&["-f", &name]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("2 objects checked"), "{stdout}");
    // Each bad document is named with its index, line and, where known, the field.
    assert!(
        stderr.contains("document 2 (line ") && stderr.contains("metadata.labels.x"),
        "{stderr}"
    );
    assert!(stderr.contains("document 3 (line "), "{stderr}");
    // The same from standard input.
    let out = Command::new(binary())
        .args(["check", "-f", "-"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 objects checked"));
}

#[test]
fn sarif_and_junit_parse_with_second_implementations() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = "tests/fixtures/manifests";
    let out = check_cli(&["-o", "json", "-f", inputs]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reported: Vec<(&str, &str)> = report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["findings"].as_array().unwrap())
        .map(|f| (f["rule"].as_str().unwrap(), f["action"].as_str().unwrap()))
        .collect();
    assert!(!reported.is_empty());

    // SARIF: what GitHub code scanning requires on upload, then sarif-tools' reading of it.
    let out = check_cli(&["-o", "sarif", "-f", inputs]);
    let sarif: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert!(sarif["$schema"].as_str().unwrap().contains("sarif"));
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "stateful-guard");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    for rule in rules {
        assert!(!rule["id"].as_str().unwrap().is_empty());
        assert!(
            !rule["shortDescription"]["text"]
                .as_str()
                .unwrap()
                .is_empty(),
            "{rule}"
        );
        assert!(!rule["help"]["text"].as_str().unwrap().is_empty(), "{rule}");
    }
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), reported.len());
    for result in results {
        let id = result["ruleId"].as_str().unwrap();
        assert_eq!(
            rules[result["ruleIndex"].as_u64().unwrap() as usize]["id"],
            id
        );
        assert!(!result["message"]["text"].as_str().unwrap().is_empty());
        let location = &result["locations"][0]["physicalLocation"];
        let uri = location["artifactLocation"]["uri"].as_str().unwrap();
        assert!(uri.starts_with("tests/fixtures/manifests/"), "{uri}");
        assert!(location["region"]["startLine"].as_u64().unwrap() >= 1);
        assert!(result["partialFingerprints"].as_object().is_some());
    }
    let file = dir.path().join("check.sarif");
    std::fs::write(&file, &out.stdout).unwrap();
    let summary = Command::new(tool("sarif"))
        .arg("summary")
        .arg(&file)
        .output()
        .unwrap();
    let summary_text = String::from_utf8_lossy(&summary.stdout);
    assert!(summary.status.success(), "{summary_text}");
    let warnings = reported.iter().filter(|(_, a)| *a == "warn").count();
    assert!(
        summary_text.contains(&format!("warning: {warnings}")),
        "sarif-tools counts differently:\n{summary_text}"
    );

    // JUnit: junitparser counts a failure for each rule that denied or warned on an object.
    let out = check_cli(&["-o", "junit", "-f", inputs]);
    let file = dir.path().join("check.xml");
    std::fs::write(&file, &out.stdout).unwrap();
    let mut failing: Vec<(String, &str)> = Vec::new();
    for o in report["objects"].as_array().unwrap() {
        for f in o["findings"].as_array().unwrap() {
            if matches!(f["action"].as_str(), Some("warn" | "enforce")) {
                failing.push((o["name"].to_string(), f["rule"].as_str().unwrap()));
            }
        }
    }
    failing.sort();
    failing.dedup();
    let python = tool("python3");
    let parsed = Command::new(python)
        .args([
            "-c",
            "import sys, junitparser\n\
             x = junitparser.JUnitXml.fromfile(sys.argv[1])\n\
             print(sum(1 for s in x for c in s if any(isinstance(r, junitparser.Failure) for r in c.result)))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&parsed.stdout).trim(),
        failing.len().to_string()
    );
}
