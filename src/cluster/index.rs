//! Objects by namespace, then name: what the rules ask for is one namespace's PDBs or
//! StatefulSets, and a review must not walk the whole cluster's. kube-runtime's `Store` keeps
//! one flat map (reading a namespace is a filter over every object), so the namespaced caches
//! keep an [`Indexed`] store instead, fed by the same watcher events.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use kube::Resource;
use kube::runtime::watcher;

/// Objects by namespace and name. Within a namespace they come out by name.
#[derive(Debug)]
pub struct ByNamespace<K> {
    namespaces: HashMap<String, BTreeMap<String, Arc<K>>>,
}

impl<K> Default for ByNamespace<K> {
    fn default() -> Self {
        Self {
            namespaces: HashMap::new(),
        }
    }
}

impl<K> Clone for ByNamespace<K> {
    fn clone(&self) -> Self {
        Self {
            namespaces: self.namespaces.clone(),
        }
    }
}

/// Where an object is kept: its namespace (`default` when the object names none, as the
/// apiserver would place it) and its name.
fn key<K: Resource>(obj: &K) -> (&str, &str) {
    let meta = obj.meta();
    (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    )
}

impl<K: Resource> ByNamespace<K> {
    /// Adds or replaces the object of that namespace and name.
    pub fn insert(&mut self, obj: Arc<K>) {
        let (namespace, name) = key(obj.as_ref());
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        self.namespaces
            .entry(namespace)
            .or_default()
            .insert(name, obj);
    }

    /// Removes the object of `obj`'s namespace and name.
    pub fn remove(&mut self, obj: &K) {
        let (namespace, name) = key(obj);
        if let Some(objects) = self.namespaces.get_mut(namespace) {
            objects.remove(name);
            if objects.is_empty() {
                self.namespaces.remove(namespace);
            }
        }
    }

    /// The objects of one namespace, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.namespaces
            .get(namespace)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many objects there are.
    pub fn len(&self) -> usize {
        self.namespaces.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }
}

impl<K: Resource> FromIterator<K> for ByNamespace<K> {
    fn from_iter<I: IntoIterator<Item = K>>(objects: I) -> Self {
        let mut index = Self::default();
        for obj in objects {
            index.insert(Arc::new(obj));
        }
        index
    }
}

/// A [`ByNamespace`] kept by a watch: [`Indexed::apply`] takes its events as kube-runtime's
/// store does (a relist is collected apart and replaces the whole content at once, so objects
/// deleted while the watch was down go away). Cheap to clone; clones share the content.
#[derive(Clone)]
pub struct Indexed<K> {
    shared: Arc<Shared<K>>,
}

struct Shared<K> {
    state: RwLock<State<K>>,
    /// True once the first list is complete.
    ready: tokio::sync::watch::Sender<bool>,
}

struct State<K> {
    live: ByNamespace<K>,
    /// A relist in progress (between `Init` and `InitDone`).
    relist: Option<ByNamespace<K>>,
}

impl<K: Resource> Default for Indexed<K> {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: RwLock::new(State {
                    live: ByNamespace::default(),
                    relist: None,
                }),
                ready: tokio::sync::watch::Sender::new(false),
            }),
        }
    }
}

impl<K: Resource> Indexed<K> {
    /// Takes one watcher event.
    pub fn apply(&self, event: watcher::Event<K>) {
        let mut state = self
            .shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Apply(obj) => state.live.insert(Arc::new(obj)),
            watcher::Event::Delete(obj) => state.live.remove(&obj),
            watcher::Event::Init => state.relist = Some(ByNamespace::default()),
            watcher::Event::InitApply(obj) => state
                .relist
                .get_or_insert_with(ByNamespace::default)
                .insert(Arc::new(obj)),
            watcher::Event::InitDone => {
                state.live = state.relist.take().unwrap_or_default();
                drop(state);
                self.shared.ready.send_replace(true);
            }
        }
    }

    /// The objects of one namespace, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.read(|live| live.in_namespace(namespace))
    }

    /// Reads the current content.
    pub fn read<T>(&self, f: impl FnOnce(&ByNamespace<K>) -> T) -> T {
        let state = self
            .shared
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&state.live)
    }

    /// Whether the first list is complete.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Waits until the first list is complete.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.shared.ready.subscribe();
        // The sender lives as long as `self`: this only ends when the list is complete.
        let _ = ready.wait_for(|ready| *ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use watcher::Event;

    fn pdb(namespace: &str, name: &str, budget: i32) -> PodDisruptionBudget {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"maxUnavailable": budget},
        }))
        .unwrap()
    }

    fn names(objects: &[Arc<PodDisruptionBudget>]) -> Vec<(String, i32)> {
        objects
            .iter()
            .map(|p| {
                let budget = match &p.spec.as_ref().unwrap().max_unavailable {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => *n,
                    _ => -1,
                };
                (p.metadata.name.clone().unwrap(), budget)
            })
            .collect()
    }

    #[test]
    fn a_namespace_holds_its_own_objects_by_name() {
        let index: ByNamespace<_> = [pdb("a", "z", 1), pdb("b", "x", 1), pdb("a", "m", 2)]
            .into_iter()
            .collect();
        assert_eq!(
            names(&index.in_namespace("a")),
            [("m".into(), 2), ("z".into(), 1)]
        );
        assert_eq!(names(&index.in_namespace("b")), [("x".into(), 1)]);
        assert!(index.in_namespace("c").is_empty());
        assert_eq!(index.len(), 3);
    }

    #[tokio::test]
    async fn watch_events_add_replace_delete_and_relist() {
        let store = Indexed::<PodDisruptionBudget>::default();
        assert!(!store.is_ready());
        store.apply(Event::Init);
        store.apply(Event::InitApply(pdb("a", "one", 1)));
        store.apply(Event::InitApply(pdb("a", "two", 1)));
        // Not visible (nor ready) before the list is complete.
        assert!(store.in_namespace("a").is_empty());
        assert!(!store.is_ready());
        store.apply(Event::InitDone);
        store.wait_until_ready().await;
        assert_eq!(names(&store.in_namespace("a")).len(), 2);

        store.apply(Event::Apply(pdb("a", "one", 3)));
        store.apply(Event::Apply(pdb("b", "three", 1)));
        store.apply(Event::Delete(pdb("a", "two", 1)));
        assert_eq!(names(&store.in_namespace("a")), [("one".into(), 3)]);
        assert_eq!(names(&store.in_namespace("b")), [("three".into(), 1)]);

        // A relist replaces everything: "three" was deleted while the watch was down.
        store.apply(Event::Init);
        store.apply(Event::InitApply(pdb("a", "one", 3)));
        assert_eq!(names(&store.in_namespace("b")).len(), 1, "until InitDone");
        store.apply(Event::InitDone);
        assert!(store.in_namespace("b").is_empty());
        assert_eq!(store.read(ByNamespace::len), 1);
        assert!(store.is_ready());
    }
}
