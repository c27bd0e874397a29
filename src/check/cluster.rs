//! `check --cluster`: what a cluster already runs, evaluated as the webhook would admit it.
//!
//! An admission webhook sees only what is created or changed after it is installed. This reads
//! every StatefulSet and PVC in scope, with the cluster's real PDBs, StorageClasses,
//! PriorityClasses and Namespaces as the cluster view, and evaluates each as a CREATE
//! (mutations, then validation), so a team can see which of its existing databases the guard
//! would deny and what it would change before it enforces anything. Read-only: only lists.
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::input::Document;
use crate::cluster::Snapshot;
use crate::cluster::pages::{PAGE_BUDGET, PageError, Pages};
use crate::policy::PolicySet;
use crate::policy::source::{CONFIGMAP_LABEL, PolicyStore, configmap_documents};

/// The `file` of objects read from the cluster in the report.
pub const CLUSTER_FILE: &str = "cluster";
/// Objects per list page: a cluster with thousands of StatefulSets is read in pages, never in
/// one response.
const PAGE: u32 = 500;

/// Why the cluster could not be read: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no cluster configuration (kubeconfig or in-cluster): {0}")]
    Config(#[source] kube::config::InferConfigError),
    #[error("cannot connect to the cluster: {0}")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error("cannot list {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("listing {what} took longer than {PAGE_BUDGET:?}")]
    TimedOut { what: &'static str },
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    #[error("invalid policy in ConfigMap {source_id}: {message}")]
    Policy { source_id: String, message: String },
    #[error(
        "no policy ConfigMap (labelled {CONFIGMAP_LABEL}) in namespace {0}: is stateful-guard installed there?"
    )]
    NoPolicy(String),
}

/// Which namespaces to read.
#[derive(Debug, Clone)]
pub enum Scope {
    Namespace(String),
    All,
}

/// What was read: the StatefulSets and PVCs as documents, and the cluster view.
pub struct Listed {
    pub documents: Vec<Document>,
    pub cluster: Snapshot,
}

/// A progress line on a terminal (standard error) while listing takes more than a second.
struct Progress {
    listed: Arc<AtomicUsize>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start() -> Self {
        let listed = Arc::new(AtomicUsize::new(0));
        let ticker = std::io::stderr().is_terminal().then(|| {
            let listed = listed.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                loop {
                    eprint!(
                        "\rreading the cluster: {} objects listed",
                        listed.load(Ordering::Relaxed)
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        });
        Self { listed, ticker }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
            // Clears the line, whether or not it was ever printed.
            eprint!("\r\x1b[2K");
        }
    }
}

/// Every object of `api`, page by page.
async fn list_all<K>(
    api: Api<K>,
    what: &'static str,
    progress: &Progress,
) -> Result<Vec<K>, ClusterError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut pages = Pages::new(api, what, PAGE);
    while let Some(page) = pages.next().await? {
        progress.listed.fetch_add(page.len(), Ordering::Relaxed);
        out.extend(page);
    }
    Ok(out)
}

fn namespaced<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        Scope::All => Api::all(client.clone()),
    }
}

/// A client from the kubeconfig or the in-cluster config.
pub async fn client() -> Result<Client, ClusterError> {
    let config = kube::Config::infer().await.map_err(ClusterError::Config)?;
    Client::try_from(config).map_err(ClusterError::Client)
}

/// Reads what `scope` runs and the cluster state the rules consult.
pub async fn read(client: &Client, scope: &Scope) -> Result<Listed, ClusterError> {
    let progress = Progress::start();
    let statefulsets: Vec<StatefulSet> =
        list_all(namespaced(client, scope), "statefulsets", &progress).await?;
    let claims: Vec<PersistentVolumeClaim> = list_all(
        namespaced(client, scope),
        "persistentvolumeclaims",
        &progress,
    )
    .await?;
    let pdbs: Vec<PodDisruptionBudget> =
        list_all(namespaced(client, scope), "poddisruptionbudgets", &progress).await?;
    let classes: Vec<StorageClass> =
        list_all(Api::all(client.clone()), "storageclasses", &progress).await?;
    let priorities: Vec<PriorityClass> =
        list_all(Api::all(client.clone()), "priorityclasses", &progress).await?;
    let namespaces: Vec<Namespace> = match scope {
        // One namespace: only its own labels matter (policy selection), and `get` is all a
        // namespace-scoped reader may have.
        Scope::Namespace(ns) => Api::<Namespace>::all(client.clone())
            .get_opt(ns)
            .await
            .map_err(|source| ClusterError::List {
                what: "namespaces",
                source,
            })?
            .into_iter()
            .collect(),
        Scope::All => list_all(Api::all(client.clone()), "namespaces", &progress).await?,
    };
    drop(progress);
    let mut documents = Vec::with_capacity(statefulsets.len() + claims.len());
    for value in statefulsets
        .iter()
        .map(to_value)
        .chain(claims.iter().map(to_value))
    {
        documents.push(Document {
            path: CLUSTER_FILE.to_owned(),
            line: 0,
            index: documents.len() + 1,
            value: value?,
        });
    }
    let cluster = Snapshot::known(pdbs, classes, namespaces)
        .with_priority_classes(priorities)
        .with_statefulsets(statefulsets)
        .with_complete_classes();
    Ok(Listed { documents, cluster })
}

fn to_value<T: Serialize>(object: &T) -> Result<serde_json::Value, ClusterError> {
    serde_json::to_value(object).map_err(ClusterError::Encode)
}

/// The policies the webhook serves from its ConfigMaps in `namespace`.
/// Like the webhook, they never apply to that namespace itself.
pub async fn policies(client: &Client, namespace: &str) -> Result<Arc<PolicySet>, ClusterError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let listed = tokio::time::timeout(
        PAGE_BUDGET,
        api.list(&ListParams::default().labels(CONFIGMAP_LABEL)),
    )
    .await
    .map_err(|_| ClusterError::TimedOut {
        what: "policy configmaps",
    })?
    .map_err(|source| ClusterError::List {
        what: "policy configmaps",
        source,
    })?;
    let store = PolicyStore::new(
        vec![namespace.to_owned()],
        Arc::new(crate::metrics::Metrics::new()),
    );
    for cm in &listed.items {
        for (id, parsed) in configmap_documents(cm) {
            if let Err(error) = &parsed {
                return Err(ClusterError::Policy {
                    source_id: id,
                    message: error.to_string(),
                });
            }
            store.set_source(&id, parsed);
        }
    }
    let set = store.current();
    if set.is_empty() {
        return Err(ClusterError::NoPolicy(namespace.to_owned()));
    }
    Ok(set)
}
