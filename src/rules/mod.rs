//! The rules: one module each, each a pure function of (object, parameters, cluster view).
//!
//! Mutation rules return a [`Mutation`] (JSON Patch operations, a summary of what they change,
//! and notes when they chose not to); validation rules return [`Finding`]s. Neither knows about
//! HTTP, policies' actions or modes: the [`crate::engine`] decides what each outcome does.
use std::fmt;
use std::marker::PhantomData;

use json_patch::PatchOperation;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterView;
use crate::policy::action::{MutateAction, ValidateAction};

pub mod explicit;
pub mod patch;
pub mod probes;
#[macro_use]
mod registry;

// ---------------------------------------------------------------------------------------------
// THE RULES. To add one:
// 1. write `src/rules/<module>.rs`: its `//!` docs (the first paragraph says what it asks, the
//    rest why: SARIF and `check` show them), a unit struct, and one `impl` of [`MutationRule`]
//    or [`ValidationRule`] with `type Config` ([`ActionOnly`] or a struct of your own
//    implementing [`RuleConfig`]); `require_liveness_probe.rs` is the smallest;
// 2. add its line below;
// 3. add it to policies/default.yaml, policies/README.md and the README's table
//    (`tests/registry.rs` checks all three).
// Everything else is derived from this list: the [`RuleId`] and its name, the policy's `rules:`
// schema ([`Rules`], with the defaults), the action lookup, the configuration checks and the
// engine's loops. Mutation rules run in the order listed.
// ---------------------------------------------------------------------------------------------
registry! {
    mutations: [
        FastStorageClass => fast_storage_class: "fast-storage-class",
        VolumeGrowth => volume_growth: "volume-growth",
        PodAntiAffinity => pod_anti_affinity: "pod-anti-affinity",
        TopologySpread => topology_spread: "topology-spread",
        ParallelPodManagement => parallel_pod_management: "parallel-pod-management",
        PriorityClass => priority_class: "priority-class",
    ],
    validations: [
        RequirePdb => require_pdb: "require-pdb",
        PdbAllowsDisruption => pdb_allows_disruption: "pdb-allows-disruption",
        RequireReadinessProbe => require_readiness_probe: "require-readiness-probe",
        RequireLivenessProbe => require_liveness_probe: "require-liveness-probe",
        ProbesDiffer => probes_differ: "probes-differ",
        RequirePersistentStorage => require_persistent_storage: "require-persistent-storage",
        PdbKeepsQuorum => pdb_keeps_quorum: "pdb-keeps-quorum",
        DataRetention => data_retention: "data-retention",
        RequireResources => require_resources: "require-resources",
        SelectorsMatchPods => selectors_match_pods: "selectors-match-pods",
        NodeLocalStorage => node_local_storage: "node-local-storage",
        RequirePriorityClass => require_priority_class: "require-priority-class",
    ],
}

/// A rule's parameters, as a policy's `rules:` section holds them (with their defaults): the
/// action they set, and what their values must satisfy beyond their types. A rule with only an
/// action uses [`ActionOnly`]; a rule whose section may be left out (absent means off) uses
/// `Option<C>`.
pub trait RuleConfig:
    Default + Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned
{
    /// [`MutateAction`] or [`ValidateAction`].
    type Action: ActionKind;
    fn action(&self) -> Self::Action;
    /// Checks the parameters beyond their types (ranges, required values); the error starts
    /// with the field's name.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The two kinds of action, and their `off`.
pub trait ActionKind: Copy + PartialEq + fmt::Debug + Serialize + DeserializeOwned {
    const OFF: Self;
}

impl ActionKind for MutateAction {
    const OFF: Self = MutateAction::Off;
}

impl ActionKind for ValidateAction {
    const OFF: Self = ValidateAction::Off;
}

impl<D: DefaultAction> RuleConfig for ActionOnly<D> {
    type Action = D::Action;
    fn action(&self) -> D::Action {
        self.action
    }
}

/// A section that may be left out of a policy: absent means off.
impl<C: RuleConfig> RuleConfig for Option<C> {
    type Action = C::Action;
    fn action(&self) -> C::Action {
        self.as_ref().map_or(C::Action::OFF, RuleConfig::action)
    }
    fn check(&self) -> Result<(), String> {
        self.as_ref().map_or(Ok(()), RuleConfig::check)
    }
}

/// A rule that changes objects: a pure function from the object to a [`Mutation`].
pub trait MutationRule {
    type Config: RuleConfig<Action = MutateAction>;
    /// On a StatefulSet CREATE (and UPDATE, for pod-template rules with
    /// `updates.mutateTemplate`).
    fn mutate(
        sts: &StatefulSet,
        config: &Self::Config,
        earlier: &Provided,
        ctx: &Context,
    ) -> Result<Mutation, serde_json::Error>;
    /// On a PVC CREATE.
    fn mutate_pvc(
        _pvc: &PersistentVolumeClaim,
        _config: &Self::Config,
        _ctx: &Context,
    ) -> Result<Mutation, serde_json::Error> {
        Ok(Mutation::none())
    }
    /// On UPDATE of a StatefulSet this rule changed at CREATE: put back what the update
    /// reverted (see the README's Day 2 section). `config` is `None` when no policy governs the
    /// namespace any more.
    fn keep(
        _new: &StatefulSet,
        _old: &StatefulSet,
        _config: Option<&Self::Config>,
    ) -> Result<Mutation, serde_json::Error> {
        Ok(Mutation::none())
    }
    /// What later rules may read of this one (their declared input, [`Provided`]), when it
    /// applies its changes.
    fn provide<'a>(_config: &'a Self::Config, _earlier: &mut Provided<'a>) {}
}

/// A rule that reports problems: a pure function from the object to [`Finding`]s.
pub trait ValidationRule {
    type Config: RuleConfig<Action = ValidateAction>;
    fn validate(sts: &StatefulSet, config: &Self::Config, ctx: &Context) -> Vec<Finding>;
    /// The action of one of its findings, for a rule whose findings do not all weigh the same
    /// (`require-priority-class`: a class that does not exist, or none at all). The rule runs
    /// unless its config's action is `off`; a finding whose action is `off` is dropped.
    fn action_of(config: &Self::Config, _finding: &Finding) -> ValidateAction {
        config.action()
    }
}

/// What earlier mutation rules provide to later ones (filled by [`MutationRule::provide`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Provided<'a> {
    /// `fast-storage-class` applies, with these parameters: the classes pods will really use
    /// (`topology-spread` reads their binding mode).
    pub storage: Option<&'a fast_storage_class::Config>,
}

/// The configuration of a rule that has no parameter besides its action; `D` names the
/// default action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default, bound = "")]
pub struct ActionOnly<D: DefaultAction> {
    pub action: D::Action,
    #[serde(skip)]
    default: PhantomData<D>,
}

impl<D: DefaultAction> Default for ActionOnly<D> {
    fn default() -> Self {
        Self::new(D::ACTION)
    }
}

impl<D: DefaultAction> ActionOnly<D> {
    pub fn new(action: D::Action) -> Self {
        Self {
            action,
            default: PhantomData,
        }
    }
}

/// A rule's default action, as a type (see [`ActionOnly`]).
pub trait DefaultAction: fmt::Debug + Clone + PartialEq {
    type Action: ActionKind;
    const ACTION: Self::Action;
}

macro_rules! default_action {
    ($($name:ident: $ty:ident::$action:ident),* $(,)?) => {$(
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name;
        impl DefaultAction for $name {
            type Action = $ty;
            const ACTION: $ty = $ty::$action;
        }
    )*};
}

default_action! {
    MutateByDefault: MutateAction::Mutate,
    EnforceByDefault: ValidateAction::Enforce,
    WarnByDefault: ValidateAction::Warn,
}

/// A rule's action, of either kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Mutate(MutateAction),
    Validate(ValidateAction),
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Mutate(a) => a.as_str(),
            Action::Validate(a) => a.as_str(),
        }
    }
}

/// Visits each mutation rule with its configuration (borrowed for `'r`), in the order they run.
pub trait MutationVisitor<'r> {
    fn visit<R: MutationRule>(&mut self, id: RuleId, config: &'r R::Config);
}

/// Visits each validation rule with its configuration.
pub trait ValidationVisitor<'r> {
    fn visit<R: ValidationRule>(&mut self, id: RuleId, config: &'r R::Config);
}

impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        RuleId::parse(&name).ok_or_else(|| {
            let names: Vec<&str> = RuleId::ALL.iter().map(|r| r.as_str()).collect();
            serde::de::Error::custom(format!(
                "unknown rule {name:?}, expected one of {}",
                names.join(", ")
            ))
        })
    }
}

/// What a rule is for, from its module's documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The first paragraph, without the rule's name: what the rule asks for.
    pub summary: String,
    /// The rest: why, and what the rule does about it.
    pub help: String,
}

impl RuleId {
    /// The rule's description, read from its module's `//!` documentation (SARIF's rule
    /// metadata, `check`'s help).
    pub fn description(self) -> Description {
        let doc: Vec<&str> = self
            .source()
            .lines()
            .map_while(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect();
        let mut paragraphs = doc.split(|l| l.trim().is_empty()).map(|p| p.join(" "));
        let first = paragraphs.next().unwrap_or_default();
        let name = format!("`{}`:", self.as_str());
        let summary = first
            .strip_prefix(name.as_str())
            .unwrap_or(&first)
            .trim()
            .to_owned();
        let help = paragraphs.collect::<Vec<_>>().join("\n\n");
        Description { summary, help }
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The admission operation, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

/// What every rule may read besides the object itself.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub operation: Operation,
    pub namespace: &'a str,
    pub cluster: &'a dyn ClusterView,
    /// Whether mutation rules may change `spec.template` on UPDATE (it rolls every pod).
    pub mutate_template_on_update: bool,
    /// The object as its author wrote it, when known (`check` reads it from a file): every field
    /// present in it was chosen, as `kubectl apply` and server-side apply would show.
    pub written: Option<&'a serde_json::Value>,
    /// What the findings are for: reported, or only compared by rule and part.
    pub detail: Detail,
    /// On UPDATE, the stored StatefulSet the update replaces.
    pub old: Option<&'a StatefulSet>,
}

/// What a validation's findings are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Reported to people: every message whole.
    Full,
    /// Only compared, by rule and part, with those of another version of the object (the old
    /// object of an UPDATE, for `updates.validate: newFindings`): a rule may leave out of its
    /// messages what is costly to write and nobody will read.
    Compared,
}

impl Context<'_> {
    /// Whether a rule that changes the pod template may run for this request.
    pub fn may_change_template(&self) -> bool {
        self.operation == Operation::Create || self.mutate_template_on_update
    }
}

/// The result of one mutation rule on one object.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Mutation {
    /// JSON Patch operations, against the object as received.
    pub ops: Vec<PatchOperation>,
    /// What the operations change and why, for people (warnings, annotations, `check`).
    pub summary: String,
    /// Why the rule did not change something it would normally change, or what the user should
    /// know about the change.
    pub notes: Vec<String>,
    /// Why the request cannot be admitted as it is (`volume-growth`: a claim template that
    /// shrinks): the mutating webhook denies it with this, where the rule's action is `mutate`
    /// and the mode `enforce` (else it is reported as a would-be denial).
    pub refusal: Option<String>,
}

impl Mutation {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn note(note: impl Into<String>) -> Self {
        Self {
            notes: vec![note.into()],
            ..Self::default()
        }
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.notes.is_empty() && self.refusal.is_none()
    }

    /// A refusal (see [`Mutation::refusal`]).
    pub fn refuse(why: impl Into<String>) -> Self {
        Self {
            refusal: Some(why.into()),
            ..Self::default()
        }
    }
}

/// The part of a StatefulSet a finding is about. On UPDATE a finding whose (rule, part) the old
/// object already had is not new, unless the part is a container the update changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    /// A container or init container, by name.
    Container(String),
    /// A PodDisruptionBudget that selects the pods, by name.
    Pdb(String),
    /// A pod volume, by name.
    Volume(String),
    /// A volume claim template, by name.
    ClaimTemplate(String),
    /// A StorageClass a claim template uses, by name, and what about it.
    StorageClass(String, ClassAspect),
    /// A field the user wrote, by its path (`podAntiAffinity...[0]`).
    Field(String),
    /// Something of the StatefulSet as a whole.
    Whole(Aspect),
}

/// What about a StorageClass a finding concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClassAspect {
    Reclaim,
    Expansion,
}

/// What about the whole StatefulSet a finding concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aspect {
    /// No PodDisruptionBudget.
    Pdb,
    /// Several PodDisruptionBudgets.
    MultiplePdbs,
    /// No persistent storage.
    Storage,
    /// `persistentVolumeClaimRetentionPolicy.whenDeleted`.
    RetentionWhenDeleted,
    /// `persistentVolumeClaimRetentionPolicy.whenScaled`.
    RetentionWhenScaled,
    /// No PriorityClass.
    NoPriorityClass,
    /// A PriorityClass that does not exist.
    PriorityClassMissing,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Container(name) => write!(f, "container/{name}"),
            Part::Pdb(name) => write!(f, "pdb/{name}"),
            Part::Volume(name) => write!(f, "volume/{name}"),
            Part::ClaimTemplate(name) => write!(f, "claim/{name}"),
            Part::StorageClass(name, ClassAspect::Reclaim) => write!(f, "class/{name}/reclaim"),
            Part::StorageClass(name, ClassAspect::Expansion) => {
                write!(f, "class/{name}/expansion")
            }
            Part::Field(path) => f.write_str(path),
            Part::Whole(aspect) => f.write_str(match aspect {
                Aspect::Pdb => "pdb",
                Aspect::MultiplePdbs => "multiple-pdbs",
                Aspect::Storage => "storage",
                Aspect::RetentionWhenDeleted => "retention/whenDeleted",
                Aspect::RetentionWhenScaled => "retention/whenScaled",
                Aspect::NoPriorityClass => "no-priority-class",
                Aspect::PriorityClassMissing => "priority-class-missing",
            }),
        }
    }
}

/// A problem a validation rule found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: RuleId,
    /// The part of the object the finding is about.
    pub part: Part,
    /// What is wrong and exactly what to change.
    pub message: String,
    /// The rule could not verify (no cluster state): never deny on such a finding.
    pub unverified: bool,
    /// Advice rather than a violation (a risk the object partly covers): never deny on such a
    /// finding either; `enforce` reports it as a warning.
    pub advisory: bool,
    /// The message leaves out what only [`Detail::Full`] writes: the engine asks the rule again,
    /// in full, before it reports the finding.
    pub abridged: bool,
}

impl Finding {
    pub fn new(rule: RuleId, part: Part, message: impl Into<String>) -> Self {
        Self {
            rule,
            part,
            message: message.into(),
            unverified: false,
            advisory: false,
            abridged: false,
        }
    }

    /// The same finding as advice (see [`Finding::advisory`]).
    pub fn advisory(self) -> Self {
        Self {
            advisory: true,
            ..self
        }
    }
}

/// The labels of a StatefulSet's pods (its template's), empty when it has none.
pub fn pod_labels(sts: &StatefulSet) -> &std::collections::BTreeMap<String, String> {
    static EMPTY: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    sts.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .unwrap_or(&EMPTY)
}

/// `namespace/name` of an object, or its `generateName` prefix when it has no name yet.
pub fn display_name(meta: &ObjectMeta, namespace: &str) -> String {
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) => format!("{namespace}/{name}"),
        (None, Some(prefix)) => format!("{namespace}/{prefix}*"),
        (None, None) => format!("{namespace}/<unnamed>"),
    }
}

/// Whether an object carries `annotation` with `value` (case-insensitive value).
pub fn has_annotation(meta: &ObjectMeta, annotation: &str, value: &str) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(annotation))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders shared by the rules' unit tests.
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;

    use super::*;
    use crate::cluster::Snapshot;

    pub fn ctx<'a>(operation: Operation, cluster: &'a Snapshot) -> Context<'a> {
        Context {
            operation,
            namespace: "default",
            cluster,
            mutate_template_on_update: false,
            written: None,
            detail: Detail::Full,
            old: None,
        }
    }

    /// A StatefulSet as kube-apiserver would send it (defaulted), from YAML.
    pub fn sts(yaml: &str) -> StatefulSet {
        defaulted(serde_yaml_ng::from_str(yaml).expect("test YAML"))
    }

    /// A StatefulSet `name` (its pods labelled `app: <name>`) whose pod spec is `pod`, YAML.
    pub fn sts_with_pod(name: &str, pod: &str) -> StatefulSet {
        let pod: serde_json::Value = serde_yaml_ng::from_str(pod).expect("test YAML");
        let sts: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "serviceName": name,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
            },
        }))
        .expect("test StatefulSet");
        defaulted(sts)
    }

    fn defaulted(mut sts: StatefulSet) -> StatefulSet {
        sts.spec
            .pod_management_policy
            .get_or_insert_with(|| "OrderedReady".into());
        sts
    }

    /// The smallest StatefulSet of the Kubernetes docs, with overrides merged in.
    pub fn basic_sts() -> StatefulSet {
        sts(r#"
metadata: {name: db, namespace: default}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: postgres:16
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#)
    }

    /// A mutation rule's `mutate`, with nothing provided by earlier rules.
    pub fn mutate<R: MutationRule>(
        sts: &StatefulSet,
        config: &R::Config,
        ctx: &Context,
    ) -> Result<Mutation, serde_json::Error> {
        R::mutate(sts, config, &Provided::default(), ctx)
    }

    /// A mutation rule's `keep`, with no policy governing the namespace.
    pub fn keep<R: MutationRule>(
        new: &StatefulSet,
        old: &StatefulSet,
    ) -> Result<Mutation, serde_json::Error> {
        R::keep(new, old, None)
    }

    pub fn pvc(yaml: &str) -> PersistentVolumeClaim {
        serde_yaml_ng::from_str(yaml).expect("test YAML")
    }

    /// Applies a mutation's operations to the object, as the apiserver would.
    pub fn apply<T: serde::Serialize + serde::de::DeserializeOwned>(obj: &T, m: &Mutation) -> T {
        let mut doc = serde_json::to_value(obj).unwrap();
        json_patch::patch(&mut doc, &m.ops).expect("patch applies");
        serde_json::from_value(doc).expect("patched object decodes")
    }
}
