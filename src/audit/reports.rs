//! The background audit's results as PolicyReports (`wgpolicyk8s.io/v1alpha2`, the format of
//! the Kubernetes Policy working group that Kyverno and the Policy Reporter UI read): one per
//! namespace, named `stateful-guard`, one result per (object, rule) that fails or warns (passes
//! are left out), capped in size. A report is written only when its content changes, and
//! deleted when its namespace has nothing left to report; never one object per finding, so
//! reports cannot fill etcd. Only the replica that holds the Lease writes.
//!
//! With `--grow-volumes`, each StatefulSet whose claims are being grown has one more result,
//! rule `volume-growth`: `pass` once every claim has its recorded size, `warn` while some are
//! pending or growing, `fail` while the apiserver refuses one; its message names the claims
//! that are not done, and its properties count each state.
use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::api::{ObjectMeta, PostParams};
use serde_json::{Value, json};

use crate::check::{ObjectReport, Report};
use crate::grow::{ClaimProgress, ClaimState};
use crate::policy::ValidateAction;
use crate::rules::RuleId;

/// Every report's name, in each namespace it covers.
pub const REPORT_NAME: &str = "stateful-guard";
/// The label on every report this writes (how stale ones are found).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "stateful-guard");
/// Results per report; the rest are counted in the annotation [`OMITTED_ANNOTATION`].
pub const MAX_RESULTS: usize = 200;
/// Characters of a result's message.
pub const MAX_MESSAGE: usize = 1024;
pub const OMITTED_ANNOTATION: &str = "stateful-guard.io/omitted-results";

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
        "policyreports",
    )
}

fn truncated(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_owned(),
    }
}

fn object_reference(o: &ObjectReport) -> Value {
    let api_version = if o.kind == "StatefulSet" {
        "apps/v1"
    } else {
        "v1"
    };
    json!({"apiVersion": api_version, "kind": o.kind, "namespace": o.namespace, "name": o.name})
}

/// One result per StatefulSet being grown, from the claims' progress (in the order
/// [`crate::grow::run`] lists them: by StatefulSet, then ordinal).
fn growth_results(growth: &[ClaimProgress]) -> Vec<(&str, Value)> {
    let mut results = Vec::new();
    for claims in
        growth.chunk_by(|a, b| a.namespace == b.namespace && a.statefulset == b.statefulset)
    {
        let first = &claims[0];
        let count = |state: &str| claims.iter().filter(|c| c.state == state).count();
        let (done, failed) = (count(ClaimState::DONE), count(ClaimState::FAILED));
        let result = if failed > 0 {
            "fail"
        } else if done == claims.len() {
            "pass"
        } else {
            "warn"
        };
        let mut message = format!(
            "claims grown to their recorded size: {done} of {}",
            claims.len()
        );
        for claim in claims.iter().filter(|c| c.state != ClaimState::DONE) {
            message.push_str(&format!(
                "; {} {} (to {})",
                claim.claim, claim.state, claim.size
            ));
            if let Some(detail) = &claim.detail {
                message.push_str(&format!(": {detail}"));
            }
        }
        let mut properties = serde_json::Map::new();
        properties.insert("action".into(), "grow".into());
        for state in ClaimState::LABELS {
            properties.insert(state.into(), count(state).to_string().into());
        }
        results.push((
            first.namespace.as_str(),
            json!({
                "source": "stateful-guard",
                // The policy that recorded the sizes is not known here; the growth is the
                // webhook's own doing, whatever the policy is now.
                "policy": "stateful-guard",
                "rule": RuleId::VolumeGrowth.as_str(),
                "result": result,
                "scored": false,
                "message": truncated(&message),
                "properties": properties,
                "resources": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "namespace": first.namespace, "name": first.statefulset}],
            }),
        ));
    }
    results
}

/// The reports' bodies, by namespace: `{summary, results}` and the number of results left out.
/// `growth` is the claims' progress under `--grow-volumes` (empty without it).
pub fn build(report: &Report, growth: &[ClaimProgress]) -> BTreeMap<String, (Value, usize)> {
    let mut by_namespace: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (namespace, result) in growth_results(growth) {
        by_namespace.entry(namespace).or_default().push(result);
    }
    for o in &report.objects {
        let results = by_namespace.entry(&o.namespace).or_default();
        for f in &o.findings {
            let result = match f.action {
                ValidateAction::Enforce => "fail",
                _ => "warn",
            };
            results.push(json!({
                "source": "stateful-guard",
                "policy": o.policy,
                "rule": f.rule.as_str(),
                "result": result,
                "scored": true,
                "message": truncated(&f.message),
                "properties": {"action": f.action.as_str(), "mode": o.mode.as_str()},
                "resources": [object_reference(o)],
            }));
        }
        for m in o.mutations.iter().filter(|m| !m.summary.is_empty()) {
            results.push(json!({
                "source": "stateful-guard",
                "policy": o.policy,
                "rule": m.rule.as_str(),
                "result": "warn",
                "scored": true,
                "message": truncated(&format!("would change it: {}", m.summary)),
                "properties": {"action": "mutate", "mode": o.mode.as_str()},
                "resources": [object_reference(o)],
            }));
        }
    }
    by_namespace
        .into_iter()
        .filter(|(_, results)| !results.is_empty())
        .map(|(namespace, mut results)| {
            let count = |r: &str| results.iter().filter(|v| v["result"] == r).count();
            let summary = json!({"pass": count("pass"), "fail": count("fail"), "warn": count("warn"), "error": 0, "skip": 0});
            let omitted = results.len().saturating_sub(MAX_RESULTS);
            results.truncate(MAX_RESULTS);
            (
                namespace.to_owned(),
                (json!({"summary": summary, "results": results}), omitted),
            )
        })
        .collect()
}

/// What a write round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Every report is current (`changed` of them were created, replaced or deleted).
    Current { changed: usize },
    /// The PolicyReport CRD is not installed (and the webhook may list PolicyReports).
    NoCrd,
    /// The webhook may not write PolicyReports: the component's RBAC is not installed (the
    /// apiserver authorizes before it looks for the resource, so this is also what a cluster
    /// with neither says).
    Forbidden,
}

/// Creates, replaces or deletes the reports so they match `report` and `growth`.
pub async fn write(
    client: &kube::Client,
    report: &Report,
    growth: &[ClaimProgress],
) -> Result<Written, kube::Error> {
    let ar = resource();
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let label = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let existing = match all.list(&ListParams::default().labels(&label)).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Written::NoCrd),
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(Written::Forbidden),
        Err(e) => return Err(e),
    };
    let mut existing: BTreeMap<String, DynamicObject> = existing
        .into_iter()
        .filter(|o| o.metadata.name.as_deref() == Some(REPORT_NAME))
        .filter_map(|o| Some((o.metadata.namespace.clone()?, o)))
        .collect();
    let mut changed = 0;
    for (namespace, (body, omitted)) in build(report, growth) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
        let mut object = DynamicObject::new(REPORT_NAME, &ar).within(&namespace);
        object.metadata.labels = Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into());
        object.metadata.annotations =
            Some([(OMITTED_ANNOTATION.to_owned(), omitted.to_string())].into());
        object.data = body;
        let result = match existing.remove(&namespace) {
            Some(current)
                if current.data.get("results") == object.data.get("results")
                    && current.data.get("summary") == object.data.get("summary")
                    && annotation(&current.metadata) == Some(omitted.to_string()) =>
            {
                continue;
            }
            Some(current) => {
                object.metadata.resource_version = current.metadata.resource_version;
                api.replace(REPORT_NAME, &PostParams::default(), &object)
                    .await
            }
            None => api.create(&PostParams::default(), &object).await,
        };
        match result {
            Ok(_) => changed += 1,
            // A namespace being deleted, or gone since the scan: nothing to report there, and
            // the other namespaces' reports still to write.
            Err(kube::Error::Api(e)) if namespace_going(&e) => {}
            Err(kube::Error::Api(e)) if e.code == 403 => return Ok(Written::Forbidden),
            // Created or changed meanwhile (another writer a moment ago): the next round.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    // Namespaces with nothing left to report.
    for (namespace, _) in existing {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
        match api.delete(REPORT_NAME, &DeleteParams::default()).await {
            Ok(_) => changed += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(kube::Error::Api(e)) if e.code == 403 => return Ok(Written::Forbidden),
            Err(e) => return Err(e),
        }
    }
    Ok(Written::Current { changed })
}

/// The apiserver refused a write because its namespace is being deleted (NamespaceLifecycle:
/// a 403 whose cause is `NamespaceTerminating`, not RBAC's) or is gone (a 404 for the
/// namespace, not for the resource: a CRD removed meanwhile is the next round's `NoCrd`).
fn namespace_going(status: &kube::core::Status) -> bool {
    let terminating = status
        .details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
        || status.message.contains("because it is being terminated");
    let gone = status.code == 404
        && (status
            .details
            .as_ref()
            .is_some_and(|d| d.kind == "namespaces")
            || status.message.starts_with("namespaces \""));
    (status.code == 403 && terminating) || gone
}

fn annotation(meta: &ObjectMeta) -> Option<String> {
    meta.annotations.as_ref()?.get(OMITTED_ANNOTATION).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{ReportFinding, ReportMutation, Summary};
    use crate::policy::Mode;
    use crate::rules::RuleId;

    fn object(namespace: &str, name: &str, findings: usize) -> ObjectReport {
        ObjectReport {
            kind: "StatefulSet".into(),
            namespace: namespace.into(),
            name: name.into(),
            file: "cluster".into(),
            document: 1,
            line: 0,
            policy: "default".into(),
            mode: Mode::Enforce,
            allowed: false,
            patch: vec![],
            mutations: vec![ReportMutation {
                rule: RuleId::ParallelPodManagement,
                applied: true,
                summary: "set podManagementPolicy Parallel".into(),
                notes: vec![],
            }],
            findings: (0..findings)
                .map(|i| ReportFinding {
                    rule: if i == 0 {
                        RuleId::RequirePdb
                    } else {
                        RuleId::RequireLivenessProbe
                    },
                    action: if i == 0 {
                        ValidateAction::Enforce
                    } else {
                        ValidateAction::Warn
                    },
                    message: "x".repeat(5000),
                })
                .collect(),
            skipped: None,
        }
    }

    #[test]
    fn one_report_per_namespace_with_failures_and_warnings_capped() {
        let report = Report {
            objects: vec![
                object("a", "db", 2),
                object("b", "db", 300),
                ObjectReport {
                    mutations: vec![],
                    ..object("clean", "db", 0)
                },
            ],
            summary: Summary::default(),
        };
        let reports = build(&report, &[]);
        assert_eq!(
            reports.keys().collect::<Vec<_>>(),
            ["a", "b"],
            "a namespace with nothing to report gets no report"
        );
        let (a, omitted) = &reports["a"];
        assert_eq!(*omitted, 0);
        assert_eq!(a["summary"]["fail"], 1);
        assert_eq!(a["summary"]["warn"], 2, "a warning and a would-be change");
        let results = a["results"].as_array().unwrap();
        assert_eq!(results[0]["rule"], "require-pdb");
        assert_eq!(results[0]["result"], "fail");
        assert_eq!(results[0]["resources"][0]["kind"], "StatefulSet");
        assert!(results[0]["message"].as_str().unwrap().chars().count() <= MAX_MESSAGE + 1);
        assert_eq!(results[2]["rule"], "parallel-pod-management");
        let (b, omitted) = &reports["b"];
        assert_eq!(b["results"].as_array().unwrap().len(), MAX_RESULTS);
        assert_eq!(*omitted, 301 - MAX_RESULTS);
        assert_eq!(b["summary"]["warn"], 300, "the summary counts every result");
    }

    /// The requests `write` sends, answered as kube-apiserver answers them (kube's mock client):
    /// a namespace being deleted refuses the create with NamespaceLifecycle's 403; the next
    /// namespace's report is still written, and nothing is blamed on RBAC.
    #[tokio::test]
    async fn a_namespace_being_deleted_does_not_stop_the_others_reports() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let report = Report {
            objects: vec![object("a-leaving", "db", 1), object("b", "db", 1)],
            summary: Summary::default(),
        };
        let apiserver = async move {
            let mut created = Vec::new();
            let reply = |status: u16, body: serde_json::Value| {
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap()
            };
            let (request, send) = handle.next_request().await.expect("the list");
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(reply(
                200,
                serde_json::json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReportList", "metadata": {}, "items": []}),
            ));
            for namespace in ["a-leaving", "b"] {
                let (request, send) = handle.next_request().await.expect("a create");
                assert_eq!(request.method(), http::Method::POST);
                assert!(
                    request
                        .uri()
                        .path()
                        .contains(&format!("/namespaces/{namespace}/"))
                );
                created.push(namespace);
                if namespace == "a-leaving" {
                    send.send_response(reply(403, serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "policyreports.wgpolicyk8s.io \"stateful-guard\" is forbidden: unable to create new content in namespace a-leaving because it is being terminated",
                        "reason": "Forbidden",
                        "details": {"name": "stateful-guard", "group": "wgpolicyk8s.io", "kind": "policyreports",
                            "causes": [{"reason": "NamespaceTerminating", "message": "namespace a-leaving is being terminated", "field": "metadata.namespace"}]},
                        "code": 403
                    })));
                } else {
                    let body = request.into_body().collect_bytes().await.unwrap();
                    let mut object: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    object["metadata"]["resourceVersion"] = "1".into();
                    send.send_response(reply(201, object));
                }
            }
            created
        };
        // The client is dropped once the writer is done, so the mock apiserver sees the end
        // of its requests instead of waiting for one that never comes.
        let writing = async move { write(&client, &report, &[]).await };
        let (written, created) = tokio::join!(writing, apiserver);
        assert_eq!(created, ["a-leaving", "b"]);
        assert!(
            matches!(written, Ok(Written::Current { changed: 1 })),
            "{written:?}"
        );
    }

    fn claim(
        statefulset: &str,
        ordinal: u32,
        state: &'static str,
        detail: Option<&str>,
    ) -> ClaimProgress {
        ClaimProgress {
            namespace: "db".into(),
            statefulset: statefulset.into(),
            claim: format!("data-{statefulset}-{ordinal}"),
            size: "2Gi".into(),
            state,
            detail: detail.map(str::to_owned),
        }
    }

    #[test]
    fn each_grown_statefulset_is_one_result_that_names_what_is_not_done() {
        let growth = [
            claim("pg", 0, ClaimState::DONE, None),
            claim("pg", 1, ClaimState::GROWING, None),
            claim("pg", 2, ClaimState::FAILED, Some("exceeded quota: storage")),
            claim("redis", 0, ClaimState::DONE, None),
            claim("redis", 1, ClaimState::DONE, None),
            claim(
                "mongo",
                0,
                ClaimState::PENDING,
                Some("phase Pending: only a Bound claim can be resized"),
            ),
        ];
        let report = Report {
            objects: vec![object("db", "pg", 1)],
            summary: Summary::default(),
        };
        let reports = build(&report, &growth);
        let (db, _) = &reports["db"];
        let results = db["results"].as_array().unwrap();
        let growth: Vec<_> = results
            .iter()
            .filter(|r| r["rule"] == "volume-growth")
            .collect();
        assert_eq!(growth.len(), 3, "one result per StatefulSet: {results:#?}");
        let pg = growth[0];
        assert_eq!(pg["result"], "fail", "a refused resize fails");
        assert_eq!(pg["resources"][0]["name"], "pg");
        assert!(pg["policy"].is_string(), "the CRD requires a policy");
        assert_eq!(pg["resources"][0]["kind"], "StatefulSet");
        let message = pg["message"].as_str().unwrap();
        assert!(
            message.starts_with("claims grown to their recorded size: 1 of 3"),
            "{message}"
        );
        assert!(message.contains("data-pg-1 growing (to 2Gi)"), "{message}");
        assert!(
            message.contains("data-pg-2 failed (to 2Gi): exceeded quota: storage"),
            "{message}"
        );
        assert!(
            !message.contains("data-pg-0"),
            "a done claim is only counted: {message}"
        );
        assert_eq!(pg["properties"]["done"], "1");
        assert_eq!(pg["properties"]["failed"], "1");
        assert_eq!(pg["properties"]["growing"], "1");
        assert_eq!(growth[1]["result"], "pass", "every claim grown");
        assert_eq!(growth[2]["result"], "warn", "waiting for a Bound claim");
        assert_eq!(db["summary"]["pass"], 1);
        assert_eq!(
            db["summary"]["fail"], 2,
            "the refused resize and require-pdb"
        );
        assert!(
            build(
                &Report {
                    objects: vec![],
                    summary: Summary::default()
                },
                &growth_only_done()
            )
            .contains_key("db"),
            "a namespace with only growth results still gets a report"
        );
    }

    fn growth_only_done() -> Vec<ClaimProgress> {
        vec![claim("redis", 0, ClaimState::DONE, None)]
    }
}
