//! The engine: for one object, choose the policy, run its rules, and decide what each outcome
//! does under the rule's action and the policy's mode. The webhook and `check` share it.
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use json_patch::PatchOperation;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cluster::{ClaimOwner, ClusterView};
use crate::policy::{
    Mode, MutateAction, Policy, PolicySet, Selection, UpdateValidation, ValidateAction,
};
use crate::rules::{
    Context, Detail, Finding, Mutation, MutationRule, MutationVisitor, Operation, Part, Provided,
    RuleConfig, RuleId, Rules, ValidationRule, ValidationVisitor, patch,
};

/// The annotation listing the mutation rules applied to an object.
pub const MUTATED_ANNOTATION: &str = "stateful-guard.io/mutated";

/// An object the rules know.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    StatefulSet(&'a StatefulSet),
    Pvc(&'a PersistentVolumeClaim),
}

impl Object<'_> {
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::StatefulSet(s) => &s.metadata,
            Object::Pvc(p) => &p.metadata,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Object::StatefulSet(_) => "StatefulSet",
            Object::Pvc(_) => "PersistentVolumeClaim",
        }
    }
}

/// Which webhook is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Mutate,
    Validate,
}

/// One request to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub operation: Operation,
    pub namespace: &'a str,
    pub object: Object<'a>,
    /// The stored object, on UPDATE.
    pub old: Option<Object<'a>>,
    /// For a PVC the StatefulSet controller creates: the StatefulSet and claim template it is
    /// for (see [`crate::cluster::ClaimOwner`]).
    pub claim_owner: Option<&'a ClaimOwner>,
    /// The object as its author wrote it, when it was read from a manifest (`check`).
    pub written: Option<&'a serde_json::Value>,
}

/// A mutation rule's outcome and whether it is applied.
#[derive(Debug, Clone)]
pub struct RuleMutation {
    pub rule: RuleId,
    pub action: MutateAction,
    /// True when the patch is sent to the apiserver (action `mutate`, mode `enforce`; always
    /// for a kept decision).
    pub applied: bool,
    /// A decision made at CREATE that an UPDATE tried to revert, put back (see
    /// [`keep_decisions`]); not a new mutation.
    pub kept: bool,
    pub mutation: Mutation,
}

/// A validation finding and the action it takes.
#[derive(Debug, Clone)]
pub struct RuleFinding {
    pub finding: Finding,
    /// The rule's action; `enforce` becomes `warn` when the rule could not verify.
    pub action: ValidateAction,
}

/// Everything the engine decided about one object.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub policy: Option<Arc<Policy>>,
    pub mode: Mode,
    /// Why nothing was evaluated (exempt namespace, no policy), if so.
    pub skipped: Option<String>,
    /// Rules the object exempted itself from.
    pub exempted: Vec<RuleId>,
    /// On UPDATE, the [`MUTATED_ANNOTATION`] of the stored object: the record of what was
    /// decided at CREATE, which the updated object keeps.
    pub recorded: Option<String>,
    pub mutations: Vec<RuleMutation>,
    pub findings: Vec<RuleFinding>,
}

impl Evaluation {
    pub fn policy_name(&self) -> &str {
        self.policy.as_deref().map_or("", |p| p.name.as_str())
    }

    /// Findings that deny the request.
    pub fn denials(&self) -> impl Iterator<Item = &RuleFinding> {
        let enforcing = self.mode == Mode::Enforce;
        self.findings
            .iter()
            .filter(move |r| enforcing && r.action == ValidateAction::Enforce)
    }

    /// The JSON Patch sent to the apiserver: applied mutations plus the annotation listing them.
    /// The rules' operations are borrowed: the patch is serialized once and dropped.
    pub fn patch(&self, meta: &ObjectMeta) -> Vec<Cow<'_, PatchOperation>> {
        self.build_patch(meta, |m| m.applied, self.recorded.as_deref())
    }

    /// The patch that would be sent if every mutation rule in `mutate` or `audit` were applied
    /// in enforce mode: what audit mode reports.
    pub fn would_be_patch(&self, meta: &ObjectMeta) -> Vec<Cow<'_, PatchOperation>> {
        self.build_patch(meta, |m| !m.applied, None)
    }

    fn build_patch(
        &self,
        meta: &ObjectMeta,
        pick: impl Fn(&RuleMutation) -> bool,
        recorded: Option<&str>,
    ) -> Vec<Cow<'_, PatchOperation>> {
        let chosen: Vec<&RuleMutation> = self
            .mutations
            .iter()
            .filter(|m| !m.mutation.ops.is_empty() && pick(m))
            .collect();
        if chosen.is_empty() && recorded.is_none() {
            return vec![];
        }
        let mut ops: Vec<Cow<'_, PatchOperation>> = chosen
            .iter()
            .flat_map(|m| m.mutation.ops.iter().map(Cow::Borrowed))
            .collect();
        // A rule's own annotation may have created the annotations object in this patch.
        let created = ops.iter().any(|op| {
            matches!(op.as_ref(), PatchOperation::Add(add) if add.path.as_str() == "/metadata/annotations")
        });
        if let Some(op) = mutated_annotation(meta, chosen.iter().map(|m| m.rule), recorded, created)
        {
            ops.push(Cow::Owned(op));
        }
        ops
    }
}

/// The entries of a [`MUTATED_ANNOTATION`] value.
fn recorded_entries(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The annotation value on `meta`, if any.
fn recorded_on(meta: &ObjectMeta) -> Option<&String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(MUTATED_ANNOTATION))
}

/// The operation that records `rules` in the [`MUTATED_ANNOTATION`], merged with what an
/// earlier invocation recorded (reinvocation must stay consistent) and, on UPDATE, with what the
/// stored object recorded (an update that drops the annotation does not erase the record).
fn mutated_annotation(
    meta: &ObjectMeta,
    rules: impl Iterator<Item = RuleId>,
    recorded: Option<&str>,
    created: bool,
) -> Option<PatchOperation> {
    let existing = recorded_on(meta);
    let mut all: BTreeSet<&str> = existing
        .map(|v| recorded_entries(v.as_str()))
        .into_iter()
        .flatten()
        .chain(recorded.map(recorded_entries).into_iter().flatten())
        .collect();
    for rule in rules {
        all.insert(rule.as_str());
    }
    if all.is_empty() {
        return None;
    }
    let value = all.into_iter().collect::<Vec<_>>().join(",");
    if existing == Some(&value) {
        return None;
    }
    let op = if meta.annotations.is_some() || created {
        patch::set(
            &["metadata", "annotations", MUTATED_ANNOTATION],
            existing.is_some(),
            &value,
        )
    } else {
        patch::add_creating(&["metadata"], &["annotations", MUTATED_ANNOTATION], &value)
    };
    op.ok()
}

/// Why kube-apiserver's own validation refuses this StatefulSet whatever the webhooks answer,
/// in its words: then there is nothing to mutate or report (the mutating webhook runs before
/// that validation, so it does see such objects).
pub fn apiserver_rejects(sts: &StatefulSet) -> Option<String> {
    let selector = &sts.spec.selector;
    if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
    {
        return Some(
            "spec.selector: Invalid value: empty selector is invalid for statefulset".into(),
        );
    }
    let labels = sts
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if !crate::labels::matches(selector, &labels) {
        return Some(format!(
            "spec.template.metadata.labels: Invalid value: {labels:?}: `selector` does not match template `labels`"
        ));
    }
    None
}

/// Evaluates one object under the policy that governs its namespace.
pub fn evaluate(
    phase: Phase,
    input: &Input,
    policies: &PolicySet,
    cluster: &dyn ClusterView,
) -> Evaluation {
    if let (Object::Pvc(pvc), Some(owner)) = (input.object, input.claim_owner) {
        // The StatefulSet's own admission decided its claims' class, with its opt-outs; and a
        // size recorded since (volume-growth) is the one a new replica's claim gets.
        let grown = crate::rules::volume_growth::claim_size(pvc, owner);
        let mutations = if grown.is_empty() {
            Vec::new()
        } else {
            vec![RuleMutation {
                rule: RuleId::VolumeGrowth,
                action: MutateAction::Mutate,
                applied: true,
                kept: false,
                mutation: grown,
            }]
        };
        return Evaluation {
            mutations,
            skipped: Some(format!(
                "PersistentVolumeClaim {} is created by the StatefulSet controller from claim template {:?} of StatefulSet {}: it gets what that template says, decided when the StatefulSet was admitted",
                pvc.metadata.name.as_deref().unwrap_or("?"),
                owner.template,
                owner.statefulset
            )),
            ..Default::default()
        };
    }
    if let Object::StatefulSet(sts) = input.object
        && let Some(why) = apiserver_rejects(sts)
    {
        return Evaluation {
            skipped: Some(format!(
                "not evaluated: kube-apiserver rejects this StatefulSet ({why})"
            )),
            ..Default::default()
        };
    }
    let selection = policies.select(input.namespace, cluster);
    // Decisions made at CREATE are kept whatever the policy says now: keeping one is not a new
    // mutation, and an immutable field reverted would make the update fail.
    let (kept, recorded) = match (phase, input.object, input.old) {
        (Phase::Mutate, Object::StatefulSet(new), Some(Object::StatefulSet(old)))
            if input.operation == Operation::Update =>
        {
            let rules = match &selection {
                Selection::Policy(p) => Some(&p.spec.rules),
                _ => None,
            };
            (
                keep_decisions(new, old, rules),
                recorded_on(&old.metadata).cloned(),
            )
        }
        _ => (Vec::new(), None),
    };
    let policy = match selection {
        Selection::Policy(p) => p,
        Selection::Exempt(reason) => {
            return Evaluation {
                skipped: Some(reason),
                mutations: kept,
                recorded,
                ..Default::default()
            };
        }
        Selection::NoPolicy => {
            return Evaluation {
                skipped: Some(format!(
                    "no policy applies to namespace {}",
                    input.namespace
                )),
                mutations: kept,
                recorded,
                ..Default::default()
            };
        }
    };
    if policy.spec.mode == Mode::Off {
        return Evaluation {
            skipped: Some(format!("policy {} has mode: off", policy.name)),
            mode: Mode::Off,
            mutations: kept,
            recorded,
            ..Default::default()
        };
    }
    let exempted = policy.object_exemptions(input.object.meta().annotations.as_ref());
    let ctx = Context {
        operation: input.operation,
        namespace: input.namespace,
        cluster,
        mutate_template_on_update: policy.spec.updates.mutate_template,
        written: input.written,
        detail: Detail::Full,
        old: match input.old {
            Some(Object::StatefulSet(old)) => Some(old),
            _ => None,
        },
    };
    let mut eval = Evaluation {
        policy: Some(policy.clone()),
        mode: policy.spec.mode,
        exempted,
        recorded,
        ..Default::default()
    };
    match phase {
        Phase::Mutate => {
            let new = mutate(input.object, policy, &eval, &kept, &ctx);
            eval.mutations = kept;
            eval.mutations.extend(new);
        }
        Phase::Validate => eval.findings = validate(input, policy, &eval, &ctx),
    }
    eval
}

/// The decisions recorded on the stored object (its [`MUTATED_ANNOTATION`]) that an UPDATE
/// reverted, put back: each mutation rule's `keep`, in the order the rules run. `rules` is the
/// governing policy's, if any.
fn keep_decisions(
    new: &StatefulSet,
    old: &StatefulSet,
    rules: Option<&Rules>,
) -> Vec<RuleMutation> {
    let Some(recorded) = recorded_on(&old.metadata) else {
        return Vec::new();
    };
    struct Keep<'a> {
        new: &'a StatefulSet,
        old: &'a StatefulSet,
        recorded: &'a str,
        configured: bool,
        out: Vec<RuleMutation>,
    }
    impl<'r> MutationVisitor<'r> for Keep<'_> {
        fn visit<R: MutationRule>(&mut self, rule: RuleId, config: &'r R::Config) {
            if !recorded_entries(self.recorded).any(|r| r == rule.as_str()) {
                return;
            }
            match R::keep(self.new, self.old, self.configured.then_some(config)) {
                Ok(mutation) if !mutation.ops.is_empty() => self.out.push(RuleMutation {
                    rule,
                    action: MutateAction::Mutate,
                    applied: true,
                    kept: true,
                    mutation,
                }),
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%rule, %error, "rule failed to build the patch that keeps its decision")
                }
            }
        }
    }
    let defaults;
    let (rules, configured) = match rules {
        Some(rules) => (rules, true),
        None => {
            defaults = Rules::default();
            (&defaults, false)
        }
    };
    let mut keep = Keep {
        new,
        old,
        recorded,
        configured,
        out: Vec::new(),
    };
    rules.each_mutation(&mut keep);
    keep.out
}

/// Runs every active mutation rule, in the registry's order, each seeing what earlier ones
/// provide ([`Provided`]).
fn mutate(
    object: Object,
    policy: &Policy,
    eval: &Evaluation,
    kept: &[RuleMutation],
    ctx: &Context,
) -> Vec<RuleMutation> {
    struct Mutate<'a, 'r> {
        object: Object<'a>,
        eval: &'a Evaluation,
        kept: &'a [RuleMutation],
        ctx: &'a Context<'a>,
        earlier: Provided<'r>,
        out: Vec<RuleMutation>,
    }
    impl<'r> MutationVisitor<'r> for Mutate<'_, 'r> {
        fn visit<R: MutationRule>(&mut self, rule: RuleId, config: &'r R::Config) {
            let action = config.action();
            // A rule whose earlier decision was just kept has nothing new to add.
            if action == MutateAction::Off
                || self.eval.exempted.contains(&rule)
                || self.kept.iter().any(|k| k.rule == rule)
            {
                return;
            }
            let applied = action == MutateAction::Mutate && self.eval.mode == Mode::Enforce;
            let result = match self.object {
                Object::StatefulSet(sts) => R::mutate(sts, config, &self.earlier, self.ctx),
                Object::Pvc(pvc) => R::mutate_pvc(pvc, config, self.ctx),
            };
            if applied {
                R::provide(config, &mut self.earlier);
            }
            let mutation = result.unwrap_or_else(|error| {
                tracing::error!(%rule, %error, "rule failed to build its patch");
                Mutation::note(format!("internal error, no change made: {error}"))
            });
            if !mutation.is_empty() {
                self.out.push(RuleMutation {
                    rule,
                    action,
                    applied,
                    kept: false,
                    mutation,
                });
            }
        }
    }
    let mut visitor = Mutate {
        object,
        eval,
        kept,
        ctx,
        earlier: Provided::default(),
        out: Vec::new(),
    };
    policy.spec.rules.each_mutation(&mut visitor);
    visitor.out
}

/// Runs every active validation rule on a StatefulSet; each finding with its rule's action.
fn findings_of(
    sts: &StatefulSet,
    policy: &Policy,
    eval: &Evaluation,
    ctx: &Context,
) -> Vec<RuleFinding> {
    struct Validate<'a> {
        sts: &'a StatefulSet,
        exempted: &'a [RuleId],
        ctx: &'a Context<'a>,
        out: Vec<RuleFinding>,
    }
    impl<'r> ValidationVisitor<'r> for Validate<'_> {
        fn visit<R: ValidationRule>(&mut self, rule: RuleId, config: &'r R::Config) {
            let action = config.action();
            if action == ValidateAction::Off || self.exempted.contains(&rule) {
                return;
            }
            let found = R::validate(self.sts, config, self.ctx);
            self.out.extend(found.into_iter().filter_map(|finding| {
                let action = R::action_of(config, &finding);
                (action != ValidateAction::Off).then_some(RuleFinding { finding, action })
            }));
        }
    }
    let mut visitor = Validate {
        sts,
        exempted: &eval.exempted,
        ctx,
        out: Vec::new(),
    };
    policy.spec.rules.each_validation(&mut visitor);
    visitor.out
}

/// The names of the containers (and init containers) this update adds or changes, in linear
/// time (a map of the old ones by name).
fn changed_containers<'a>(old: &StatefulSet, new: &'a StatefulSet) -> HashSet<&'a str> {
    fn all(sts: &StatefulSet) -> impl Iterator<Item = &k8s_openapi::api::core::v1::Container> {
        sts.spec.template.spec.iter().flat_map(|pod| {
            pod.containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
        })
    }
    let before: HashMap<&str, &k8s_openapi::api::core::v1::Container> =
        all(old).map(|c| (c.name.as_str(), c)).collect();
    all(new)
        .filter(|c| before.get(c.name.as_str()) != Some(c))
        .map(|c| c.name.as_str())
        .collect()
}

fn validate(input: &Input, policy: &Policy, eval: &Evaluation, ctx: &Context) -> Vec<RuleFinding> {
    let Object::StatefulSet(sts) = input.object else {
        return vec![];
    };
    let mut found = if input.operation == Operation::Update
        && policy.spec.updates.validate == UpdateValidation::NewFindings
        && let Some(Object::StatefulSet(old)) = input.old
    {
        // An existing workload must stay operable (scalable during an incident): report only
        // what this update introduces, or what it touches (a container it changes).
        // Linear: one set of the old findings, one lookup per new finding. Both objects are
        // judged for comparison only (no costly message parts); a finding kept with an
        // abridged message is then asked for in full.
        let compared = Context {
            detail: Detail::Compared,
            ..*ctx
        };
        let before: HashSet<(RuleId, Part)> = findings_of(old, policy, eval, &compared)
            .into_iter()
            .map(|r| (r.finding.rule, r.finding.part))
            .collect();
        let changed = changed_containers(old, sts);
        let is_new = |r: &RuleFinding| {
            let f = &r.finding;
            // A borrowed key would need a second enum; the clone is one small string per
            // finding of the new object.
            let existed = before.contains(&(f.rule, f.part.clone()));
            !existed || matches!(&f.part, Part::Container(name) if changed.contains(name.as_str()))
        };
        let mut found = findings_of(sts, policy, eval, &compared);
        found.retain(is_new);
        if found.iter().any(|r| r.finding.abridged) {
            found = findings_of(sts, policy, eval, ctx);
            found.retain(is_new);
        }
        found
    } else {
        findings_of(sts, policy, eval, ctx)
    };
    // A rule that could not verify (no cluster state), or that only advises, never denies.
    for r in &mut found {
        if (r.finding.unverified || r.finding.advisory) && r.action == ValidateAction::Enforce {
            r.action = ValidateAction::Warn;
        }
    }
    found
}
