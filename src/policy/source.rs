//! Where policies come from, and live reload.
//!
//! The [`PolicyStore`] keeps the last good documents of every source (a file, a ConfigMap key)
//! and the compiled [`PolicySet`] built from them behind an [`ArcSwap`]: a request loads the
//! current set once and keeps it for its whole evaluation, so a reload never affects a request
//! in flight. A source whose new text does not parse or validate is rejected with its file,
//! line and field (log and metric), and its previous documents keep serving.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher;

use super::{PolicyDocument, PolicyError, PolicySet, parse_documents};
use crate::metrics::{Metrics, ResultLabels, SourceLabels};

/// Label selecting policy ConfigMaps in the webhook's namespace.
pub const CONFIGMAP_LABEL: &str = "stateful-guard.io/policy=true";

/// Documents by source id.
type Documents = BTreeMap<String, Vec<PolicyDocument>>;

/// Every source's last good documents, and the set compiled from them.
pub struct PolicyStore {
    current: ArcSwap<PolicySet>,
    sources: Mutex<Documents>,
    always_exempt: Vec<String>,
    metrics: Arc<Metrics>,
    /// Marked on every recompile, for the background audit's rescan.
    changed: tokio::sync::watch::Sender<()>,
}

impl PolicyStore {
    pub fn new(always_exempt: Vec<String>, metrics: Arc<Metrics>) -> Self {
        Self {
            current: ArcSwap::from_pointee(PolicySet::default()),
            sources: Mutex::new(BTreeMap::new()),
            always_exempt,
            metrics,
            changed: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Marked changed each time the policies in force are recompiled (a source loaded, changed
    /// or removed).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The policies in force now.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Whether at least one policy is in force.
    pub fn is_loaded(&self) -> bool {
        !self.current.load().is_empty()
    }

    /// Applies a source's new content. On error the source keeps its previous documents.
    pub fn set_source(&self, id: &str, parsed: Result<Vec<PolicyDocument>, PolicyError>) -> bool {
        match parsed {
            Ok(docs) => {
                let mut sources = self.lock();
                if sources.get(id) == Some(&docs) {
                    return false;
                }
                sources.insert(id.to_owned(), docs);
                self.recompile(&sources);
                self.metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                tracing::info!(source = id, "policy source loaded");
                true
            }
            Err(error) => {
                self.reject(&error);
                false
            }
        }
    }

    /// Replaces every source under `prefix` (one ConfigMap's keys) at once, so that renaming a
    /// key never leaves a moment without its policy. A key whose new text is rejected keeps its
    /// last good documents.
    pub fn set_prefixed(
        &self,
        prefix: &str,
        parsed: Vec<(String, Result<Vec<PolicyDocument>, PolicyError>)>,
    ) {
        let mut sources = self.lock();
        let mut fresh = Documents::new();
        for (id, result) in parsed {
            match result {
                Ok(docs) => {
                    fresh.insert(id, docs);
                }
                Err(error) => {
                    self.reject(&error);
                    if let Some(docs) = sources.get(&id) {
                        fresh.insert(id, docs.clone());
                    }
                }
            }
        }
        let unchanged = sources
            .range(prefix.to_owned()..)
            .take_while(|(id, _)| id.starts_with(prefix))
            .eq(fresh.iter());
        if unchanged {
            return;
        }
        sources.retain(|id, _| !id.starts_with(prefix));
        sources.extend(fresh);
        self.recompile(&sources);
        self.metrics
            .policy_reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        tracing::info!(source = prefix, "policy source loaded");
    }

    /// Forgets a source (file deleted, ConfigMap deleted).
    pub fn remove_source(&self, id: &str) {
        let mut sources = self.lock();
        if sources.remove(id).is_some() {
            self.recompile(&sources);
            tracing::info!(source = id, "policy source removed");
        }
    }

    /// Replaces every source whose id starts with `prefix` by `fresh` (a full relist).
    pub fn replace_prefixed(&self, prefix: &str, fresh: Documents) {
        let mut sources = self.lock();
        sources.retain(|id, _| !id.starts_with(prefix));
        sources.extend(fresh);
        self.recompile(&sources);
    }

    /// Source ids currently holding documents.
    pub fn source_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn reject(&self, error: &PolicyError) {
        tracing::error!(source = error.source_name(), %error, "policy rejected; the last good policy keeps serving");
        self.metrics
            .policy_reloads
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
        self.metrics
            .policy_errors
            .get_or_create(&SourceLabels {
                source: error.source_name().to_owned(),
            })
            .inc();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Documents> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recompile(&self, sources: &Documents) {
        let docs = sources
            .iter()
            .flat_map(|(id, docs)| docs.iter().map(move |d| (id.clone(), d.clone())));
        let (set, errors) = PolicySet::compile(docs, self.always_exempt.clone());
        for error in &errors {
            self.reject(error);
        }
        let previous = self.current.load_full();
        let set = if set.is_empty() && !previous.is_empty() {
            // Every source is gone: a label dropped by `kubectl apply` of a regenerated
            // ConfigMap, a file deleted. Admission must not silently stop checking.
            let names: Vec<&str> = previous
                .policies()
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            let why = format!(
                "every policy source is gone (ConfigMap deleted or no longer labelled {CONFIGMAP_LABEL}, or policy file removed); the last good policies ({}) keep serving until one is back. To switch stateful-guard off, set mode: off in a policy or delete its webhook configurations",
                names.join(", ")
            );
            if previous.orphaned_warning().is_none() {
                tracing::error!(policies = %names.join(","), "every policy source is gone; keeping the last good policies");
            }
            self.metrics.policy_sources_lost.set(1);
            previous.orphaned(why)
        } else {
            if previous.orphaned_warning().is_some() {
                tracing::info!("a policy source is back");
            }
            self.metrics.policy_sources_lost.set(0);
            set
        };
        self.metrics
            .policies_loaded
            .set(set.policies().len() as i64);
        self.current.store(Arc::new(set));
        self.changed.send_replace(());
    }
}

/// Policy files: one file, or every `*.yaml`, `*.yml` and `*.json` of a directory. Dot-entries
/// are skipped: in a ConfigMap volume the visible files are links through `..data` to a
/// `..2024_01_01...` directory, which are not policies themselves.
pub struct FileSource {
    root: PathBuf,
    seen: BTreeMap<String, Vec<u8>>,
}

impl FileSource {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            seen: BTreeMap::new(),
        }
    }

    fn list(&self) -> Result<Vec<PathBuf>, PolicyError> {
        let read_err = |e: std::io::Error| PolicyError::Read {
            origin: self.root.display().to_string(),
            source: e.into(),
        };
        let meta = std::fs::metadata(&self.root).map_err(read_err)?;
        if meta.is_file() {
            return Ok(vec![self.root.clone()]);
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let policy_like = [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e));
            // `is_file` follows symlinks, as the ConfigMap volume's links need.
            if !name.starts_with('.') && policy_like && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Reads every file whose content changed since the last call and applies it to the store.
    /// Returns the errors of this pass (also logged by the store).
    pub fn sync(&mut self, store: &PolicyStore) -> Vec<PolicyError> {
        let mut errors = Vec::new();
        let files = match self.list() {
            Ok(files) => files,
            Err(error) => {
                store.reject(&error);
                return vec![error];
            }
        };
        let ids: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        for gone in self
            .seen
            .keys()
            .filter(|id| !ids.contains(id))
            .cloned()
            .collect::<Vec<_>>()
        {
            self.seen.remove(&gone);
            store.remove_source(&gone);
        }
        for (path, id) in files.iter().zip(ids) {
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) => {
                    let error = PolicyError::Read {
                        origin: id,
                        source: e.into(),
                    };
                    store.reject(&error);
                    errors.push(error);
                    continue;
                }
            };
            if self.seen.get(&id) == Some(&bytes) {
                continue;
            }
            let parsed = match std::str::from_utf8(&bytes) {
                Ok(text) => parse_documents(text, &id),
                Err(e) => Err(PolicyError::NotUtf8 {
                    origin: id.clone(),
                    source: e,
                }),
            };
            if let Err(error) = &parsed {
                errors.push(error.clone());
            }
            store.set_source(&id, parsed);
            self.seen.insert(id, bytes);
        }
        errors
    }

    /// Polls for changes every `interval`, until the process ends.
    pub async fn watch(mut self, store: Arc<PolicyStore>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.sync(&store);
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Policy ConfigMaps, fed by a kube-runtime watcher. Each data key ending in `.yaml`, `.yml`
/// or `.json` is one source, `configmap/NAMESPACE/NAME/KEY`.
#[derive(Default)]
pub struct ConfigMapSource {
    /// During a (re)list: the good documents seen, and the ids whose new text was rejected.
    relist: Option<(Documents, Vec<String>)>,
}

const CONFIGMAP_PREFIX: &str = "configmap/";

fn configmap_prefix(cm: &ConfigMap) -> String {
    format!(
        "{CONFIGMAP_PREFIX}{}/{}/",
        cm.metadata.namespace.as_deref().unwrap_or(""),
        cm.metadata.name.as_deref().unwrap_or("")
    )
}

/// The policy documents of each key of a policy ConfigMap, by source id.
pub fn configmap_documents(
    cm: &ConfigMap,
) -> Vec<(String, Result<Vec<PolicyDocument>, PolicyError>)> {
    let prefix = configmap_prefix(cm);
    cm.data
        .iter()
        .flatten()
        .filter(|(key, _)| [".yaml", ".yml", ".json"].iter().any(|e| key.ends_with(e)))
        .map(|(key, text)| {
            let id = format!("{prefix}{key}");
            let parsed = parse_documents(text, &id);
            (id, parsed)
        })
        .collect()
}

impl ConfigMapSource {
    /// Applies one watcher event to the store.
    pub fn handle(&mut self, store: &PolicyStore, event: watcher::Event<ConfigMap>) {
        match event {
            watcher::Event::Apply(cm) => {
                store.set_prefixed(&configmap_prefix(&cm), configmap_documents(&cm));
            }
            watcher::Event::Delete(cm) => {
                let prefix = configmap_prefix(&cm);
                for id in store
                    .source_ids()
                    .into_iter()
                    .filter(|id| id.starts_with(&prefix))
                {
                    store.remove_source(&id);
                }
            }
            watcher::Event::Init => self.relist = Some(Default::default()),
            watcher::Event::InitApply(cm) => {
                let (good, rejected) = self.relist.get_or_insert_with(Default::default);
                for (id, parsed) in configmap_documents(&cm) {
                    match parsed {
                        Ok(docs) => {
                            good.insert(id, docs);
                        }
                        Err(error) => {
                            store.reject(&error);
                            rejected.push(id);
                        }
                    }
                }
            }
            watcher::Event::InitDone => {
                let (mut fresh, rejected) = self.relist.take().unwrap_or_default();
                // A key rejected during the relist keeps its last good documents; keys of
                // ConfigMaps deleted meanwhile are gone.
                {
                    let kept = store.lock();
                    for id in rejected {
                        if let Some(docs) = kept.get(&id) {
                            fresh.insert(id, docs.clone());
                        }
                    }
                }
                store.replace_prefixed(CONFIGMAP_PREFIX, fresh);
            }
        }
    }

    /// Watches the labelled ConfigMaps of `namespace` until the process ends.
    pub async fn watch(mut self, client: kube::Client, namespace: String, store: Arc<PolicyStore>) {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, &namespace);
        let stream =
            watcher(api, watcher::Config::default().labels(CONFIGMAP_LABEL)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => self.handle(&store, event),
                Err(error) => tracing::warn!(%error, "policy ConfigMap watch error; retrying"),
            }
        }
    }
}
