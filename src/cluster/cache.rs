//! Cluster state cached by kube-runtime reflectors: one watch per kind, no API call per request.
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::index::Indexed;
use super::live::{self, Guard, LiveError, LiveKind, Questions};
use super::{
    ClaimOwner, ClaimTemplates, ClusterView, Pdb, built_in_priority_class, claim_owner_among,
    namespace_projection, priority_class_projection, storage_class_projection,
};
use crate::metrics::Metrics;

/// How long the live list before a denial may take; past it, the cache decides. The list takes
/// milliseconds; but an overloaded apiserver answers 429/503, which kube's client retries for
/// minutes, far past the webhook's own timeout (5 s), after which kube-apiserver would apply
/// the failurePolicy and the denial would be lost.
pub const LIVE_LIST_BUDGET: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LiveListError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Page(super::pages::PageError),
    #[error("more than {0} objects: not read live")]
    TooMany(usize),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Reflector-backed [`ClusterView`]. Cheap to clone; all clones share the same stores.
#[derive(Clone)]
pub struct ClusterCache {
    client: Client,
    /// By namespace: a review reads its namespace's PDBs, not the cluster's.
    pdbs: Indexed<Pdb>,
    storage_classes: Store<StorageClass>,
    namespaces: Store<Namespace>,
    /// Their claim templates' names, to recognise the claims the StatefulSet controller
    /// creates; by namespace, as the PDBs.
    statefulsets: Indexed<ClaimTemplates>,
    priority_classes: Store<PriorityClass>,
    /// With the background audit: notified on every change of an object it evaluates
    /// (StatefulSets, PVCs) or that changes their verdict (PDBs, classes, namespaces).
    changed: Option<Arc<tokio::sync::Notify>>,
    synced: Arc<AtomicBool>,
    /// The live reads reviews may cause on a cache miss, bounded ([`super::live`]).
    live: Arc<LiveQuestions>,
}

/// The live questions, one per kind, sharing one rate limit.
struct LiveQuestions {
    pdbs: Questions<Arc<Vec<Arc<Pdb>>>>,
    namespaces: Questions<Option<Arc<BTreeMap<String, String>>>>,
    statefulsets: Questions<Arc<Vec<ClaimTemplates>>>,
}

impl LiveQuestions {
    fn new(metrics: Option<Arc<Metrics>>) -> Self {
        let guard = Arc::new(Guard::new(metrics));
        Self {
            pdbs: Questions::new(LiveKind::PodDisruptionBudgets, guard.clone(), |p| {
                p.is_empty()
            }),
            namespaces: Questions::new(LiveKind::Namespace, guard.clone(), Option::is_none),
            statefulsets: Questions::new(LiveKind::StatefulSets, guard, |s| s.is_empty()),
        }
    }
}

/// Who reads the caches besides admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Watches {
    /// Admission only.
    #[default]
    Admission,
    /// Also the background audit, which is told of every change of a StatefulSet, a PVC, or
    /// anything the verdicts read (PDBs, StorageClasses, PriorityClasses, Namespaces). It lists
    /// the objects themselves page by page when it scans: the caches stay small, and PVCs
    /// are watched for their metadata only, with no store.
    Audit,
}

impl ClusterCache {
    /// Starts the watches on the current tokio runtime. The cache reports `is_known() == false`
    /// (and `/readyz` stays false) until every store has received its initial list.
    pub fn start(client: Client) -> Self {
        Self::start_watching(client, Watches::Admission, None)
    }

    /// [`Self::start`], with the watches `watches` says; live reads are counted in `metrics`.
    pub fn start_watching(client: Client, watches: Watches, metrics: Option<Arc<Metrics>>) -> Self {
        // Each store keeps what the rules read, not the whole object: a projection (the object
        // with the rest emptied) for the cluster-wide kinds, a type of `cluster::cached` for the
        // namespaced ones. With 10,000 PDBs, managedFields alone would be most of the memory.

        let changed = (watches == Watches::Audit).then(|| Arc::new(tokio::sync::Notify::new()));
        // Besides the objects themselves, a PDB changes the verdict on the StatefulSets it
        // covers, a class on those that name it, a namespace's labels which policy applies.
        let storage_classes = spawn_reflector::<StorageClass>(
            Api::all(client.clone()),
            storage_class_projection,
            changed.clone(),
        );
        let namespaces = spawn_reflector::<Namespace>(
            Api::all(client.clone()),
            namespace_projection,
            changed.clone(),
        );
        let pdbs = spawn_indexed::<PodDisruptionBudget, _>(
            Api::all(client.clone()),
            Pdb::from,
            changed.clone(),
        );
        let statefulsets = spawn_indexed::<StatefulSet, _>(
            Api::all(client.clone()),
            ClaimTemplates::from,
            changed.clone(),
        );
        let priority_classes = spawn_reflector::<PriorityClass>(
            Api::all(client.clone()),
            priority_class_projection,
            changed.clone(),
        );
        if let Some(changed) = &changed {
            spawn_notifier(
                Api::<PartialObjectMeta<PersistentVolumeClaim>>::all(client.clone()),
                changed.clone(),
            );
        }

        let synced = Arc::new(AtomicBool::new(false));
        {
            let (pdbs, classes, namespaces, statefulsets, priorities, synced) = (
                pdbs.clone(),
                storage_classes.clone(),
                namespaces.clone(),
                statefulsets.clone(),
                priority_classes.clone(),
                synced.clone(),
            );
            tokio::spawn(async move {
                let ready = futures::future::try_join3(
                    classes.wait_until_ready(),
                    namespaces.wait_until_ready(),
                    priorities.wait_until_ready(),
                );
                let indexed =
                    futures::future::join(pdbs.wait_until_ready(), statefulsets.wait_until_ready());
                let (ready, _) = futures::future::join(ready, indexed).await;
                match ready {
                    Ok(_) => {
                        synced.store(true, Ordering::Release);
                        tracing::info!("cluster caches synced");
                    }
                    Err(error) => tracing::error!(%error, "a cluster cache stopped before syncing"),
                }
            });
        }
        Self {
            client,
            pdbs,
            storage_classes,
            namespaces,
            statefulsets,
            priority_classes,
            changed,
            synced,
            live: Arc::new(LiveQuestions::new(metrics)),
        }
    }

    /// With [`Watches::Audit`]: notified on every change of a StatefulSet or PVC, and of the PDBs,
    /// classes and namespaces their verdicts read.
    pub fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.changed.clone()
    }

    /// The client the caches watch with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The StatefulSets with claim sizes recorded by `volume-growth`, with their namespaces.
    pub fn grown_statefulsets(&self) -> Vec<(String, Arc<ClaimTemplates>)> {
        self.statefulsets
            .read(|all| all.select(|sts| !sts.sizes.is_empty()))
    }

    /// Whether every reflector has completed its initial list.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// A namespace's PDBs read live: the cache-miss check before a denial. Bounded by
    /// [`LIVE_LIST_BUDGET`] and by [`super::live`] (one read per namespace at a time, answers
    /// reused for a moment, a global rate limit).
    pub async fn live_pdbs(&self, namespace: &str) -> Result<Arc<Vec<Arc<Pdb>>>, LiveError> {
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), namespace);
        self.live
            .pdbs
            .ask(namespace, move || async move {
                let items = list_pages(api).await?;
                Ok::<_, LiveListError>(Arc::new(
                    items
                        .into_iter()
                        .map(|pdb| Arc::new(Pdb::from(pdb)))
                        .collect(),
                ))
            })
            .await
    }

    /// A namespace's labels read live, for a namespace the cache does not know yet (created or
    /// relabelled a moment ago); `None` when it does not exist. Bounded as [`Self::live_pdbs`].
    pub async fn live_namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<Option<Arc<BTreeMap<String, String>>>, LiveError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = namespace.to_owned();
        self.live
            .namespaces
            .ask(namespace, move || async move {
                let ns = tokio::time::timeout(LIVE_LIST_BUDGET, api.get_opt(&name))
                    .await
                    .map_err(|_| LiveListError::TimedOut(LIVE_LIST_BUDGET))??;
                Ok::<_, LiveListError>(
                    ns.map(|ns| Arc::new(ns.metadata.labels.unwrap_or_default())),
                )
            })
            .await
    }

    /// The owner of a claim the cache does not know yet (its StatefulSet was created a moment
    /// ago), from a live list of the namespace's StatefulSets. Bounded as [`Self::live_pdbs`].
    pub async fn live_claim_owner(
        &self,
        namespace: &str,
        claim: &str,
    ) -> Result<Option<ClaimOwner>, LiveError> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        let kept = self
            .live
            .statefulsets
            .ask(namespace, move || async move {
                let items = list_pages(api).await?;
                Ok::<_, LiveListError>(Arc::new(
                    items.into_iter().map(ClaimTemplates::from).collect(),
                ))
            })
            .await?;
        Ok(claim_owner_among(kept.iter(), claim))
    }
}

/// Every object of a live list, [`live::PAGE`] at a time and at most [`live::MAX_PAGES`]
/// pages, within [`LIVE_LIST_BUDGET`] in all.
async fn list_pages<K>(api: Api<K>) -> Result<Vec<K>, LiveListError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let read = async {
        let mut pages = super::pages::Pages::new(api, "a live list", live::PAGE);
        let mut items = Vec::new();
        for _ in 0..live::MAX_PAGES {
            match pages.next().await {
                Ok(Some(page)) => items.extend(page),
                Ok(None) => return Ok(items),
                Err(error) => return Err(LiveListError::Page(error)),
            }
        }
        Err(LiveListError::TooMany(
            live::MAX_PAGES * live::PAGE as usize,
        ))
    };
    tokio::time::timeout(LIVE_LIST_BUDGET, read)
        .await
        .map_err(|_| LiveListError::TimedOut(LIVE_LIST_BUDGET))?
}

/// How every watch lists: in pages of [`LIST_PAGE`]. Not `any_semantic()`: a list from the
/// apiserver's watch cache (resourceVersion 0) ignores the page size and returns everything in
/// one response, which at 10,000 PDBs is tens of MiB decoded at once as whole objects (measured
/// with `cargo bench --bench apiserver`: the start-up peak), while the caches keep a fraction of that.
fn listing() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE)
}

/// Objects per page of a watch's initial list (and relists).
const LIST_PAGE: u32 = 100;

/// A reflector whose store keeps each object after `project` (which drops what the rules never
/// read, so the cache stays small); `changed` is notified on every change.
fn spawn_reflector<K>(
    api: Api<K>,
    project: fn(&mut K),
    changed: Option<Arc<tokio::sync::Notify>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&());
    let stream = watcher(api, listing())
        .default_backoff()
        .modify(project)
        .reflect(writer)
        .touched_objects();
    drive(kind, stream, changed);
    reader
}

/// [`spawn_reflector`] for the kinds the rules read one namespace at a time: the events go to
/// an [`Indexed`] store, which keeps what `keep` makes of each object (a type of
/// [`super::cached`], a fraction of the object's size).
fn spawn_indexed<K, V>(
    api: Api<K>,
    keep: fn(K) -> V,
    changed: Option<Arc<tokio::sync::Notify>>,
) -> Indexed<V>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let store = Indexed::default();
    let kind = K::kind(&());
    let stream = watcher(api, listing()).default_backoff().map_ok({
        let store = store.clone();
        move |event| store.apply(event, keep)
    });
    drive(kind, stream, changed);
    store
}

/// Runs a watch's stream until the process ends: `changed` (if any) is notified of every
/// change, errors are logged (the stream retries with backoff).
fn drive<T, S>(
    kind: std::borrow::Cow<'static, str>,
    stream: S,
    changed: Option<Arc<tokio::sync::Notify>>,
) where
    S: futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {
                    if let Some(changed) = &changed {
                        changed.notify_one();
                    }
                }
                Err(error) => tracing::warn!(%kind, %error, "watch error; retrying with backoff"),
            }
        }
    });
}

/// A watch that keeps nothing and notifies `changed` on every change: the background audit's
/// trigger for kinds it lists itself when it scans (PVCs, watched as `PartialObjectMeta`, so
/// metadata only).
fn spawn_notifier<K>(api: Api<K>, changed: Arc<tokio::sync::Notify>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, listing()).default_backoff().touched_objects();
    drive(K::kind(&()), stream, Some(changed));
}

impl ClusterView for ClusterCache {
    fn is_known(&self) -> bool {
        self.is_synced()
    }
    fn pdbs(&self, namespace: &str) -> Vec<Arc<Pdb>> {
        self.pdbs.in_namespace(namespace)
    }
    fn storage_class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.storage_classes.get(&ObjectRef::new(name))
    }
    fn storage_classes(&self) -> Vec<Arc<StorageClass>> {
        self.storage_classes.state()
    }
    fn priority_class(&self, name: &str) -> Option<Arc<PriorityClass>> {
        self.priority_classes
            .get(&ObjectRef::new(name))
            .or_else(|| built_in_priority_class(name))
    }
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }
    fn claim_owner(&self, namespace: &str, claim: &str) -> Option<ClaimOwner> {
        let statefulsets = self.statefulsets.in_namespace(namespace);
        claim_owner_among(statefulsets.iter().map(|s| s.as_ref()), claim)
    }
}
