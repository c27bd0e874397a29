//! Objects by namespace, then name: what the rules ask for is one namespace's PDBs or
//! StatefulSets, and a review must not walk the whole cluster's. kube-runtime's `Store` keeps
//! one flat map (reading a namespace is a filter over every object), so the namespaced caches
//! keep an [`Indexed`] store instead, fed by the same watcher events. What they keep of each
//! object is a type of `super::cached`, made when the event arrives.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use kube::Resource;
use kube::runtime::watcher;

/// What is kept of objects, by their namespace and name. Within a namespace it comes out by
/// name.
#[derive(Debug)]
pub struct ByNamespace<V> {
    namespaces: HashMap<String, BTreeMap<String, Arc<V>>>,
}

impl<V> Default for ByNamespace<V> {
    fn default() -> Self {
        Self {
            namespaces: HashMap::new(),
        }
    }
}

impl<V> Clone for ByNamespace<V> {
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

impl<V> ByNamespace<V> {
    /// Adds or replaces a value made by [`kept`]; gives back the one it replaces.
    fn insert(&mut self, (namespace, name, value): Kept<V>) -> Option<Arc<V>> {
        self.namespaces
            .entry(namespace)
            .or_default()
            .insert(name, value)
    }

    /// Removes the value kept for `obj`'s namespace and name, and gives it back.
    fn remove<K: Resource>(&mut self, obj: &K) -> Option<Arc<V>> {
        let (namespace, name) = key(obj);
        let objects = self.namespaces.get_mut(namespace)?;
        let removed = objects.remove(name);
        if objects.is_empty() {
            self.namespaces.remove(namespace);
        }
        removed
    }

    /// Every value that `keep` selects, with its namespace.
    pub fn select(&self, keep: impl Fn(&V) -> bool) -> Vec<(String, Arc<V>)> {
        self.namespaces
            .iter()
            .flat_map(|(ns, objects)| {
                objects
                    .values()
                    .filter(|v| keep(v))
                    .map(move |v| (ns.clone(), v.clone()))
            })
            .collect()
    }

    /// The values of one namespace, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<V>> {
        self.namespaces
            .get(namespace)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.namespaces.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// What `keep` makes of each of `objects`, by their namespace and name.
    pub fn kept<K: Resource>(objects: impl IntoIterator<Item = K>, keep: impl Fn(K) -> V) -> Self {
        let mut index = Self::default();
        for obj in objects {
            index.insert(kept(obj, &keep));
        }
        index
    }
}

/// A value to keep, with the namespace and name it is kept under.
type Kept<V> = (String, String, Arc<V>);

/// What `keep` makes of `obj`, with its namespace and name (read before `keep` takes it).
fn kept<K: Resource, V>(obj: K, keep: impl FnOnce(K) -> V) -> Kept<V> {
    let (namespace, name) = key(&obj);
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    (namespace, name, Arc::new(keep(obj)))
}

/// A [`ByNamespace`] kept by a watch: [`Indexed::apply`] takes its events as kube-runtime's
/// store does (a relist is collected apart and replaces the whole content at once, so objects
/// deleted while the watch was down go away). Cheap to clone; clones share the content.
pub struct Indexed<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for Indexed<V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<V> {
    state: RwLock<State<V>>,
    /// True once the first list is complete.
    ready: tokio::sync::watch::Sender<bool>,
}

struct State<V> {
    live: ByNamespace<V>,
    /// A relist in progress (between `Init` and `InitDone`).
    relist: Option<ByNamespace<V>>,
}

impl<V> Default for Indexed<V> {
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

impl<V> Indexed<V> {
    /// Takes one watcher event, keeping what `keep` makes of its object. The object is
    /// converted, and what it (or a relist) replaces is dropped, outside the lock that reviews
    /// read under.
    pub fn apply<K: Resource>(&self, event: watcher::Event<K>, keep: impl FnOnce(K) -> V) {
        match event {
            watcher::Event::Apply(obj) => {
                let value = kept(obj, keep);
                let replaced = self.write().live.insert(value);
                drop(replaced);
            }
            watcher::Event::Delete(obj) => {
                let removed = self.write().live.remove(&obj);
                drop((removed, obj));
            }
            watcher::Event::Init => {
                let abandoned = self.write().relist.replace(ByNamespace::default());
                drop(abandoned);
            }
            watcher::Event::InitApply(obj) => {
                let value = kept(obj, keep);
                let replaced = self
                    .write()
                    .relist
                    .get_or_insert_with(ByNamespace::default)
                    .insert(value);
                drop(replaced);
            }
            watcher::Event::InitDone => {
                let previous = {
                    let mut state = self.write();
                    let relisted = state.relist.take().unwrap_or_default();
                    std::mem::replace(&mut state.live, relisted)
                };
                drop(previous);
                self.shared.ready.send_replace(true);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State<V>> {
        self.shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The values of one namespace, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<V>> {
        self.read(|live| live.in_namespace(namespace))
    }

    /// Reads the current content.
    pub fn read<T>(&self, f: impl FnOnce(&ByNamespace<V>) -> T) -> T {
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
    use crate::cluster::cached::Pdb;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use watcher::Event;

    fn pdb(namespace: &str, name: &str, budget: i32) -> PodDisruptionBudget {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"maxUnavailable": budget},
        }))
        .unwrap()
    }

    fn names(objects: &[Arc<Pdb>]) -> Vec<(String, i32)> {
        objects
            .iter()
            .map(|p| {
                let budget = match &p.max_unavailable {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => *n,
                    _ => -1,
                };
                (p.name.clone(), budget)
            })
            .collect()
    }

    #[test]
    fn a_namespace_holds_its_own_objects_by_name() {
        let index = ByNamespace::kept(
            [pdb("a", "z", 1), pdb("b", "x", 1), pdb("a", "m", 2)],
            Pdb::from,
        );
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
        let store = Indexed::<Pdb>::default();
        let apply = |event| store.apply(event, Pdb::from);
        assert!(!store.is_ready());
        apply(Event::Init);
        apply(Event::InitApply(pdb("a", "one", 1)));
        apply(Event::InitApply(pdb("a", "two", 1)));
        // Not visible (nor ready) before the list is complete.
        assert!(store.in_namespace("a").is_empty());
        assert!(!store.is_ready());
        apply(Event::InitDone);
        store.wait_until_ready().await;
        assert_eq!(names(&store.in_namespace("a")).len(), 2);

        apply(Event::Apply(pdb("a", "one", 3)));
        apply(Event::Apply(pdb("b", "three", 1)));
        apply(Event::Delete(pdb("a", "two", 1)));
        assert_eq!(names(&store.in_namespace("a")), [("one".into(), 3)]);
        assert_eq!(names(&store.in_namespace("b")), [("three".into(), 1)]);

        // A relist replaces everything: "three" was deleted while the watch was down.
        apply(Event::Init);
        apply(Event::InitApply(pdb("a", "one", 3)));
        assert_eq!(names(&store.in_namespace("b")).len(), 1, "until InitDone");
        apply(Event::InitDone);
        assert!(store.in_namespace("b").is_empty());
        assert_eq!(store.read(ByNamespace::len), 1);
        assert!(store.is_ready());
    }
}
