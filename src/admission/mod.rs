//! The AdmissionReview protocol: decode a review, dispatch on its kind, evaluate, and answer
//! with `kube::core::admission` types (never hand-built JSON).
//!
//! Decoding is one pass in the common case: the body is decoded straight into the k8s-openapi
//! object of the kind the body's first bytes name (a PVC where kube-apiserver writes
//! `request.kind`, else a StatefulSet: [`names_a_pvc`], a hint, never trusted). A decode is used
//! only when the review is
//! `admission.k8s.io/v1` and its request names that kind on no subresource. Anything else (another
//! kind, a subresource, an object that does not match its kind's schema, another version) takes
//! the careful path: a peek at `request.kind` (everything else skipped) decides, and a review
//! that cannot be evaluated is decoded generically, to answer with its uid. The typed decode
//! keeps `managedFields[].fieldsV1` as text ([`decode`]).
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::core::admission::{self as kadm, AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::{DynamicObject, Resource};
use serde::de::DeserializeOwned;

use crate::cluster::cache::ClusterCache;
use crate::cluster::{ClaimOwner, ClusterView, WithLive};
use crate::engine::{self, Evaluation, Input, Object, Phase};
use crate::policy::PolicySet;
use crate::rules::{Operation, RuleId, display_name};
use decode::{Boxed, PVC, Peek, STATEFULSET, decode_as, generic_request, is, names_a_pvc};

pub mod decode;
pub mod response;

/// What to answer for a review the webhook cannot interpret (a kind it does not handle, or an
/// object that does not decode as its kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Uninterpretable {
    /// Admit, with a warning (fail open: the webhook is not a schema validator).
    #[default]
    Allow,
    /// Deny with the reason.
    Deny,
}

/// A body that is not an AdmissionReview at all: answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("request body is not a JSON AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported AdmissionReview apiVersion {0:?}: only admission.k8s.io/v1 is served")]
    Version(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// Everything a review needs besides its body.
pub struct Reviewer<'a> {
    pub policies: &'a PolicySet,
    pub cluster: &'a dyn ClusterView,
    /// For the one live list of PDBs before a `require-pdb` denial.
    pub live: Option<&'a ClusterCache>,
    pub uninterpretable: Uninterpretable,
    /// Identities of the StatefulSet controller: a PVC one of them creates for a known
    /// StatefulSet gets what the StatefulSet's claim template says.
    pub statefulset_controllers: &'a [String],
    /// Whether a claim whose StatefulSet the cache does not know yet may be looked up live. The
    /// requester's name is only as trustworthy as the caller: any client that reaches the port
    /// can write the controller's name into a review, so this is true only when callers are
    /// authenticated (`--client-ca`: only the apiserver gets through); otherwise the cache
    /// alone answers.
    pub live_claim_owners: bool,
}

/// The StatefulSet controller's identity, with and without
/// `--use-service-account-credentials` on kube-controller-manager.
pub const DEFAULT_STATEFULSET_CONTROLLERS: [&str; 2] = [
    "system:serviceaccount:kube-system:statefulset-controller",
    "system:kube-controller-manager",
];

/// What the answer to a review was, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted unchanged.
    Allowed,
    /// Admitted with a patch.
    Patched,
    Denied,
    /// Not evaluated (exempt namespace, no policy, subresource, ...).
    Skipped,
    /// A kind it does not handle, or an object that does not decode.
    Uninterpretable,
}

impl Decision {
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Patched => "patched",
            Decision::Denied => "denied",
            Decision::Skipped => "skipped",
            Decision::Uninterpretable => "uninterpretable",
        }
    }
}

/// What a review decided, for logs and metrics.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub uid: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub operation: &'static str,
    pub decision: Decision,
    pub evaluation: Option<Evaluation>,
    /// The JSON Patch that was not applied (audit), as recorded in the audit annotations.
    pub would_patch: Option<String>,
}

impl Reviewer<'_> {
    /// Answers one review body. `Err` only for bodies that are not an AdmissionReview.
    pub async fn review(&self, phase: Phase, body: &[u8]) -> Result<(Reply, Outcome), BadReview> {
        let (mut review, outcome) = self.answer(phase, body).await?;
        if let (Some(why), Some(response)) =
            (self.policies.orphaned_warning(), review.response.as_mut())
        {
            response
                .warnings
                .get_or_insert_with(Vec::new)
                .push(format!("stateful-guard: {why}"));
        }
        Ok((review, outcome))
    }

    async fn answer(&self, phase: Phase, body: &[u8]) -> Result<(Reply, Outcome), BadReview> {
        if body.len() >= decode::COUNT_CONTAINERS_FROM
            && decode::may_hold_many_containers(body)
            && let Some(n) = decode::containers(body)
            && n > decode::MAX_CONTAINERS
        {
            return self.uninterpretable(
                body,
                format!(
                    "the pod template has {n} containers, more than the {} stateful-guard evaluates",
                    decode::MAX_CONTAINERS
                ),
            );
        }
        if names_a_pvc(body) {
            if let Some(review) = decode_as::<PersistentVolumeClaim>(body, PVC) {
                return self
                    .evaluate_decoded(phase, review, |o| Object::Pvc(o))
                    .await;
            }
        } else if let Some(review) = decode_as::<StatefulSet>(body, STATEFULSET) {
            return self
                .evaluate_decoded(phase, review, |o| Object::StatefulSet(o))
                .await;
        }
        let peek: Peek = serde_json::from_slice(body)?;
        if peek.api_version != kadm::META_API_VERSION_V1 {
            return Err(BadReview::Version(peek.api_version));
        }
        let Some(head) = peek.request else {
            return Err(BadReview::NoRequest);
        };
        let kind = head.kind;
        if head.sub_resource.is_some_and(|s| !s.is_empty()) {
            // Subresources (status, scale) carry other kinds of objects; nothing to check.
            return self.passthrough(body, "subresource: not evaluated");
        }
        if is(&kind, STATEFULSET) {
            self.decoded(phase, body, |o| Object::StatefulSet(o)).await
        } else if is(&kind, PVC) {
            self.decoded(phase, body, |o| Object::Pvc(o)).await
        } else {
            let reason = format!(
                "stateful-guard does not handle {}/{} {}",
                bounded(&kind.group),
                bounded(&kind.version),
                bounded(&kind.kind)
            );
            self.uninterpretable(body, reason)
        }
    }

    /// A review of a kind the webhook handles, on the careful path: evaluated if its object
    /// decodes as its kind, else uninterpretable, with the decode's error.
    async fn decoded<K>(
        &self,
        phase: Phase,
        body: &[u8],
        wrap: fn(&K) -> Object<'_>,
    ) -> Result<(Reply, Outcome), BadReview>
    where
        Boxed<K>: Resource + DeserializeOwned,
    {
        match decode::from_slice(body) {
            Ok(review) => self.evaluate_decoded(phase, review, wrap).await,
            Err(error) => self.uninterpretable(
                body,
                format!("the object does not decode as its kind: {error}"),
            ),
        }
    }

    async fn evaluate_decoded<K>(
        &self,
        phase: Phase,
        mut review: decode::Review<K>,
        wrap: fn(&K) -> Object<'_>,
    ) -> Result<(Reply, Outcome), BadReview>
    where
        Boxed<K>: Resource,
    {
        // What kube's `TryFrom<AdmissionReview>` does, without moving the request (kilobytes of
        // k8s-openapi structs) out of its box.
        let types = review.types.clone();
        let req = review.request.as_mut().ok_or(BadReview::NoRequest)?;
        req.types = types;
        let req = &*req;
        let namespace = req.namespace.clone().unwrap_or_default();
        let mut outcome = Outcome {
            uid: bounded(&req.uid),
            kind: bounded(&req.kind.kind),
            namespace: bounded(&namespace),
            name: bounded(&req.name),
            operation: operation_name(&req.operation),
            decision: Decision::Allowed,
            evaluation: None,
            would_patch: None,
        };
        let operation = match req.operation {
            kadm::Operation::Create => Operation::Create,
            kadm::Operation::Update => Operation::Update,
            _ => return Ok((reply(AdmissionResponse::from(req)), outcome)),
        };
        let Some(object) = req.object.as_ref() else {
            return Ok((reply(AdmissionResponse::from(req)), outcome));
        };
        if outcome.name.is_empty() {
            outcome.name = bounded(&display_name(object.meta(), &namespace));
        }
        let object = wrap(object);
        let claim_owner = match object {
            Object::Pvc(pvc) if operation == Operation::Create => {
                self.claim_owner(&req.user_info.username, &namespace, pvc)
                    .await
            }
            _ => None,
        };
        let input = Input {
            operation,
            namespace: &namespace,
            object,
            old: req.old_object.as_deref().map(wrap),
            claim_owner: claim_owner.as_ref(),
            written: None,
        };
        let mut view = WithLive::new(self.cluster, &namespace);
        if let Some(live) = self.live
            && self.policies.selects_by_namespace_labels()
            && self.cluster.is_known()
            && self.cluster.namespace_labels(&namespace).is_none()
        {
            // A namespace created or relabelled a moment ago: read its labels before choosing
            // the policy, rather than fall through to a weaker one.
            match Box::pin(live.live_namespace_labels(&namespace)).await {
                Ok(labels) => view.namespace_labels = labels.map(|l| (*l).clone()),
                Err(error) => {
                    tracing::warn!(uid = %req.uid, %error, "live Namespace read failed; using the cache")
                }
            }
        }
        let mut eval = engine::evaluate(phase, &input, self.policies, &view);
        if let Some(live) = self.live
            && eval
                .findings
                .iter()
                .any(|r| r.finding.rule == RuleId::RequirePdb && !r.finding.unverified)
        {
            // The cache may lag a PDB created a moment ago: one live list before denying.
            match Box::pin(live.live_pdbs(&namespace)).await {
                Ok(pdbs) => {
                    view.pdbs = Some((*pdbs).clone());
                    eval = engine::evaluate(phase, &input, self.policies, &view);
                }
                Err(error) => {
                    tracing::warn!(uid = %req.uid, %error, "live PodDisruptionBudget list failed; using the cache")
                }
            }
        }
        let resp = response::build(AdmissionResponse::from(req), &eval, object.meta());
        outcome.decision = if !resp.allowed {
            Decision::Denied
        } else if resp.patch.is_some() {
            Decision::Patched
        } else if eval.skipped.is_some() {
            Decision::Skipped
        } else {
            Decision::Allowed
        };
        outcome.evaluation = Some(eval);
        outcome.would_patch = resp.audit_annotations.get("would-patch").cloned();
        Ok((reply(resp), outcome))
    }

    /// For a PVC the StatefulSet controller creates: the StatefulSet it is for. The cache
    /// first; on a miss, one bounded live list (the StatefulSet may be seconds old).
    async fn claim_owner(
        &self,
        requester: &Option<String>,
        namespace: &str,
        pvc: &PersistentVolumeClaim,
    ) -> Option<ClaimOwner> {
        let requester = requester.as_deref()?;
        if !self.statefulset_controllers.iter().any(|c| c == requester) {
            return None;
        }
        let claim = pvc.metadata.name.as_deref()?;
        if let Some(owner) = self.cluster.claim_owner(namespace, claim) {
            return Some(owner);
        }
        if !self.live_claim_owners {
            tracing::debug!(
                namespace,
                claim,
                "claim of a StatefulSet the cache does not know; no live look-up for unauthenticated callers"
            );
            return None;
        }
        match Box::pin(self.live?.live_claim_owner(namespace, claim)).await {
            Ok(owner) => owner,
            Err(error) => {
                tracing::warn!(%error, namespace, claim, "live StatefulSet list failed; the claim is evaluated as any other");
                None
            }
        }
    }

    fn passthrough(&self, body: &[u8], why: &str) -> Result<(Reply, Outcome), BadReview> {
        let req = generic_request(body)?;
        let outcome = outcome_of(&req, Decision::Skipped);
        tracing::debug!(uid = %req.uid, why, "not evaluated");
        Ok((reply(AdmissionResponse::from(&req)), outcome))
    }

    fn uninterpretable(&self, body: &[u8], reason: String) -> Result<(Reply, Outcome), BadReview> {
        let req = generic_request(body)?;
        let outcome = outcome_of(&req, Decision::Uninterpretable);
        let reason = response::truncate(&reason, response::limits::ITEM);
        let resp = AdmissionResponse::from(&req);
        let resp = match self.uninterpretable {
            Uninterpretable::Allow => {
                let mut resp = resp;
                resp.warnings = Some(vec![format!(
                    "stateful-guard: {reason}; admitted unchecked (--uninterpretable=allow)"
                )]);
                resp
            }
            Uninterpretable::Deny => {
                resp.deny(format!("stateful-guard: {reason} (--uninterpretable=deny)"))
            }
        };
        tracing::warn!(uid = %req.uid, %reason, "uninterpretable review");
        Ok((reply(resp), outcome))
    }
}

/// The review sent back: kube's `AdmissionReview` around the response, boxed. It is 2 KB (its
/// `request`, empty here, is inline), returned through each level of the review's futures: a
/// pointer moves instead.
pub type Reply = Box<AdmissionReview<DynamicObject>>;

fn reply(response: AdmissionResponse) -> Reply {
    Box::new(response.into_review())
}

/// A string from the request, bounded before it reaches logs, metrics and warnings (Kubernetes
/// names are at most 253 characters; a hostile request may send megabytes).
fn bounded(s: &str) -> String {
    response::truncate(s, 253).into_owned()
}

/// The kinds the webhook handles, as a metric label; anything else is `other`, so a request
/// can never add a label value of its own.
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "StatefulSet" => "StatefulSet",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        _ => "other",
    }
}

/// The operation as kube-apiserver spells it.
fn operation_name(op: &kadm::Operation) -> &'static str {
    match op {
        kadm::Operation::Create => "CREATE",
        kadm::Operation::Update => "UPDATE",
        kadm::Operation::Delete => "DELETE",
        kadm::Operation::Connect => "CONNECT",
    }
}

fn outcome_of(req: &AdmissionRequest<DynamicObject>, decision: Decision) -> Outcome {
    Outcome {
        uid: bounded(&req.uid),
        kind: bounded(&req.kind.kind),
        namespace: bounded(req.namespace.as_deref().unwrap_or_default()),
        name: bounded(&req.name),
        operation: operation_name(&req.operation),
        decision,
        evaluation: None,
        would_patch: None,
    }
}
