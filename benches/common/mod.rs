//! What both benchmarks run: the captured reviews, and the hot path from request body to
//! response body (decode, evaluate, encode) with the embedded default policy.
use stateful_guard::admission::{Reviewer, Uninterpretable, response};
use stateful_guard::cluster::Snapshot;
use stateful_guard::engine::Phase;
use stateful_guard::policy::PolicySet;

/// The cases: a large StatefulSet CREATE (four mutations), its UPDATE on the validating side
/// (old and new objects), and a PVC.
pub const CASES: [(&str, Phase); 3] = [
    ("statefulset-zookeeper-create.mutating.json", Phase::Mutate),
    (
        "statefulset-zookeeper-update.validating.json",
        Phase::Validate,
    ),
    (
        "pvc-create-default-class-filled.mutating.json",
        Phase::Mutate,
    ),
];

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/admission-reviews/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The policies and cluster view a review is evaluated against.
pub struct HotPath {
    policies: PolicySet,
    cluster: Snapshot,
    statefulset_controllers: Vec<String>,
    runtime: tokio::runtime::Runtime,
}

/// What [`HotPath::at_scale`] is measured with: the validating side of a StatefulSet update
/// (the PDB rules read its namespace's PDBs) and a claim the StatefulSet controller creates
/// (its StatefulSet is looked up among the namespace's).
pub const AT_SCALE: [(&str, Phase); 2] = [
    (
        "statefulset-zookeeper-update.validating.json",
        Phase::Validate,
    ),
    (
        "pvc-create-by-statefulset-controller.mutating.json",
        Phase::Mutate,
    ),
];

impl HotPath {
    pub fn new() -> Self {
        Self {
            policies: PolicySet::embedded_default(vec!["stateful-guard".into()]).unwrap(),
            cluster: Snapshot::known(vec![], vec![], vec![]),
            statefulset_controllers: Vec::new(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        }
    }

    /// The same against a cluster view at the performance issue's scale: 2,000 namespaces
    /// (those of the [`AT_SCALE`] reviews among them) with 5 PDBs and 2 StatefulSets each, so
    /// 10,000 PDBs; in `default`, one of the PDBs covers the zookeeper, and in `ctrl` the
    /// claim's StatefulSet is known.
    pub fn at_scale() -> Self {
        use k8s_openapi::api::apps::v1::StatefulSet;
        use k8s_openapi::api::policy::v1::PodDisruptionBudget;
        let namespaces = ["default".to_owned(), "ctrl".to_owned()]
            .into_iter()
            .chain((2..2_000).map(|i| format!("ns-{i:04}")));
        let (mut pdbs, mut statefulsets) = (Vec::new(), Vec::new());
        for namespace in namespaces {
            for i in 0..5 {
                let app = if namespace == "default" && i == 0 {
                    "zk".to_owned()
                } else {
                    format!("app-{i}")
                };
                let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("pdb-{i}"), "namespace": namespace},
                    "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {
                        "app.kubernetes.io/instance": app,
                        "app.kubernetes.io/name": "zookeeper",
                    }}},
                }))
                .unwrap();
                pdbs.push(pdb);
            }
            for i in 0..2 {
                let (name, template) = if namespace == "ctrl" && i == 0 {
                    ("keepsts".to_owned(), "www")
                } else {
                    (format!("db-{i}"), "data")
                };
                let sts: StatefulSet = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"selector": {}, "template": {},
                             "volumeClaimTemplates": [{"metadata": {"name": template}}]},
                }))
                .unwrap();
                statefulsets.push(sts);
            }
        }
        Self {
            cluster: Snapshot::known(pdbs, vec![], vec![]).with_statefulsets(statefulsets),
            statefulset_controllers: vec![
                "system:serviceaccount:kube-system:statefulset-controller".to_owned(),
            ],
            ..Self::new()
        }
    }

    /// One review: body in, response body out.
    pub fn review(&self, phase: Phase, body: &[u8]) -> Vec<u8> {
        let reviewer = Reviewer {
            policies: &self.policies,
            cluster: &self.cluster,
            live: None,
            uninterpretable: Uninterpretable::Allow,
            statefulset_controllers: &self.statefulset_controllers,
            live_claim_owners: false,
        };
        self.runtime.block_on(async {
            let (review, _) = reviewer.review(phase, body).await.unwrap();
            response::to_wire(review).unwrap()
        })
    }
}
