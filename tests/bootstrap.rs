//! Certificate bootstrap: the plan (create, keep, rotate with CA overlap) and replicas racing
//! for the Secret, with the Secret operations' real semantics (create fails with AlreadyExists
//! when the name is taken; replace fails with Conflict on a stale resourceVersion).
use std::sync::Mutex;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::core::Status;
use stateful_guard::certs::bootstrap::{
    self, Material, Plan, SecretApi, Settings, Trust, material_of,
};
use time::{Duration, OffsetDateTime};

fn settings() -> Settings {
    Settings {
        secret: "stateful-guard-tls".into(),
        namespace: "stateful-guard".into(),
        service: "stateful-guard".into(),
        leaf_days: 365,
        ca_days: 3650,
        renew_before: Duration::days(30),
    }
}

/// One Secret with apiserver semantics for create and replace (optimistic concurrency).
#[derive(Default)]
struct OneSecret {
    stored: Mutex<Option<Secret>>,
    version: Mutex<u64>,
    writes: Mutex<usize>,
}

fn api_error(code: u16, reason: &str) -> kube::Error {
    kube::Error::Api(Status::failure(reason, reason).with_code(code).boxed())
}

impl SecretApi for OneSecret {
    async fn get_secret(&self, _: &str) -> Result<Option<Secret>, kube::Error> {
        tokio::task::yield_now().await;
        Ok(self.stored.lock().unwrap().clone())
    }
    async fn create_secret(&self, secret: &Secret) -> Result<Secret, kube::Error> {
        tokio::task::yield_now().await;
        let mut stored = self.stored.lock().unwrap();
        if stored.is_some() {
            return Err(api_error(409, "AlreadyExists"));
        }
        let mut v = self.version.lock().unwrap();
        *v += 1;
        let mut s = secret.clone();
        s.metadata.resource_version = Some(v.to_string());
        *stored = Some(s.clone());
        *self.writes.lock().unwrap() += 1;
        Ok(s)
    }
    async fn replace_secret(&self, _: &str, secret: &Secret) -> Result<Secret, kube::Error> {
        tokio::task::yield_now().await;
        let mut stored = self.stored.lock().unwrap();
        let current = stored
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone());
        if current != secret.metadata.resource_version {
            return Err(api_error(409, "Conflict"));
        }
        let mut v = self.version.lock().unwrap();
        *v += 1;
        let mut s = secret.clone();
        s.metadata.resource_version = Some(v.to_string());
        *stored = Some(s.clone());
        *self.writes.lock().unwrap() += 1;
        Ok(s)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_end_up_with_the_same_certificate() {
    for _ in 0..10 {
        let api = OneSecret::default();
        let s = settings();
        let (a, b) = tokio::join!(bootstrap::ensure(&api, &s), bootstrap::ensure(&api, &s));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b, "both replicas serve the stored certificate");
        assert_eq!(
            *api.writes.lock().unwrap(),
            1,
            "exactly one replica wrote the Secret"
        );
        let stored = material_of(api.stored.lock().unwrap().as_ref().unwrap()).unwrap();
        assert_eq!(stored, a);
    }
}

#[tokio::test]
async fn a_valid_secret_is_kept_as_it_is() {
    let api = OneSecret::default();
    let first = bootstrap::ensure(&api, &settings()).await.unwrap();
    let again = bootstrap::ensure(&api, &settings()).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(*api.writes.lock().unwrap(), 1);
}

fn leaf_names(m: &Material) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(m.cert.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_leaf_is_renewed_before_expiry_from_the_same_ca() {
    let s = settings();
    let Plan::Write(first) = bootstrap::plan(None, &s, OffsetDateTime::now_utc()).unwrap() else {
        panic!()
    };
    assert!(leaf_names(&first).contains("DNS:stateful-guard.stateful-guard.svc"));
    // 340 days later the 365-day leaf is within 30 days of its end.
    let later = OffsetDateTime::now_utc() + Duration::days(340);
    let Plan::Write(renewed) = bootstrap::plan(Some(&first), &s, later).unwrap() else {
        panic!("renewal due")
    };
    assert_ne!(renewed.cert, first.cert);
    assert_eq!(
        renewed.ca_bundle, first.ca_bundle,
        "same CA: nothing to change in caBundle"
    );
    assert_eq!(renewed.ca_key, first.ca_key);
    // Not due yet: kept.
    assert!(matches!(
        bootstrap::plan(
            Some(&first),
            &s,
            OffsetDateTime::now_utc() + Duration::days(100)
        )
        .unwrap(),
        Plan::Keep(_)
    ));
}

#[test]
fn a_ca_near_its_end_is_replaced_and_the_old_one_stays_trusted() {
    let s = settings();
    let Plan::Write(first) = bootstrap::plan(None, &s, OffsetDateTime::now_utc()).unwrap() else {
        panic!()
    };
    let later = OffsetDateTime::now_utc() + Duration::days(3650 - 10);
    let Plan::Write(rotated) = bootstrap::plan(Some(&first), &s, later).unwrap() else {
        panic!("CA rotation due")
    };
    assert_ne!(rotated.ca_key, first.ca_key);
    assert!(
        rotated.ca_bundle.ends_with(&first.ca_bundle),
        "old CA kept during the overlap"
    );
    assert_eq!(rotated.ca_bundle.matches("BEGIN CERTIFICATE").count(), 2);
    // The new leaf chains to the new CA (first in the bundle), checked by openssl.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &rotated.ca_bundle).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &rotated.cert).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "ca.pem", "leaf.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn garbage_in_the_secret_is_replaced() {
    let junk = Material {
        ca_bundle: "x".into(),
        ca_key: "y".into(),
        cert: "z".into(),
        key: "w".into(),
        webhook_token: String::new(),
    };
    assert!(matches!(
        bootstrap::plan(Some(&junk), &settings(), OffsetDateTime::now_utc()).unwrap(),
        Plan::Write(_)
    ));
}

fn base_mutating() -> MutatingWebhookConfiguration {
    serde_yaml_ng::from_str(
        include_str!("../deploy/base/webhooks.yaml")
            .split("---")
            .find(|d| d.contains("MutatingWebhookConfiguration"))
            .unwrap(),
    )
    .unwrap()
}

fn paths(config: &MutatingWebhookConfiguration) -> Vec<Option<String>> {
    config
        .webhooks
        .iter()
        .flatten()
        .map(|h| h.client_config.service.as_ref().unwrap().path.clone())
        .collect()
}

#[test]
fn ca_bundle_and_token_go_into_every_webhook_once() {
    let config = base_mutating();
    assert!(
        paths(&config).iter().all(Option::is_none),
        "deploy/base leaves the path to the bootstrap: no apply claims it"
    );
    let trust = Trust {
        ca_bundle: b"CA",
        token: "tok",
        previous: None,
    };
    let done = bootstrap::with_trust_mutating(config, trust);
    assert!(done.foreign.is_none());
    let updated = done.updated.expect("caBundle and path were empty");
    for hook in updated.webhooks.as_ref().unwrap() {
        assert_eq!(hook.client_config.ca_bundle.as_ref().unwrap().0, b"CA");
    }
    assert!(
        paths(&updated)
            .iter()
            .all(|p| p.as_deref() == Some("/mutate/tok"))
    );
    let again = bootstrap::with_trust_mutating(updated.clone(), trust);
    assert!(
        again.updated.is_none() && again.foreign.is_none(),
        "nothing to update twice"
    );
    // A new token (the old one's key deleted from the Secret) moves the path the replica had
    // set; the CA stays.
    let renewed = bootstrap::with_trust_mutating(
        updated.clone(),
        Trust {
            token: "new",
            previous: Some("tok"),
            ..trust
        },
    )
    .updated
    .expect("the token changed");
    assert!(
        paths(&renewed)
            .iter()
            .all(|p| p.as_deref() == Some("/mutate/new"))
    );
}

/// Only a path that is missing (the manifests leave it out; a `replace` drops it) or that names
/// the token this replica replaced is rewritten. A path someone else set is left as it is and
/// reported: after a rollback to a release whose manifests say `/mutate`, or a switch to the
/// chart's `webhook.token`, a replica still running must not put back a path the others do not
/// answer.
#[test]
fn a_path_someone_else_set_is_left_as_it_is() {
    let trust = Trust {
        ca_bundle: b"CA",
        token: "tok",
        previous: Some("old"),
    };
    for (configured, expected) in [
        (None, Ok(Some("/validate/tok".to_owned()))),
        (Some("/"), Ok(Some("/validate/tok".to_owned()))),
        (Some("/validate/tok"), Ok(None)),
        (Some("/validate/old"), Ok(Some("/validate/tok".to_owned()))),
        // A bootstrap's token from a Secret deleted while no replica ran: still the
        // bootstrap's to move.
        (
            Some(format!("/validate/sg{}", "0".repeat(64)).as_str()),
            Ok(Some("/validate/tok".to_owned())),
        ),
        (
            Some(format!("/validate/{}", "0".repeat(64)).as_str()),
            Err(format!("/validate/{}", "0".repeat(64))),
        ),
        (Some("/validate"), Err("/validate".to_owned())),
        (
            Some("/validate/users-own-token"),
            Err("/validate/users-own-token".to_owned()),
        ),
        (Some("/mutate/tok"), Err("/mutate/tok".to_owned())),
    ] {
        assert_eq!(
            bootstrap::webhook_path(configured, "validate", trust),
            expected,
            "{configured:?}"
        );
    }
    // In a configuration: the caBundle is still given, the path kept and reported.
    let mut config = base_mutating();
    for hook in config.webhooks.iter_mut().flatten() {
        hook.client_config.service.as_mut().unwrap().path = Some("/mutate".into());
    }
    let done = bootstrap::with_trust_mutating(config, trust);
    assert_eq!(done.foreign.as_deref(), Some("/mutate"));
    let updated = done.updated.expect("the caBundle");
    assert!(
        paths(&updated)
            .iter()
            .all(|p| p.as_deref() == Some("/mutate"))
    );
}

/// k8s.io/apimachinery's IsDNS1123Subdomain: at most 253 characters, dot-separated labels of
/// `a-z 0-9 -` that start and end with a letter or digit.
fn is_rfc1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[test]
fn a_secret_from_before_tokens_gets_one_and_keeps_its_certificates() {
    let s = settings();
    let Plan::Write(first) = bootstrap::plan(None, &s, OffsetDateTime::now_utc()).unwrap() else {
        panic!()
    };
    assert!(bootstrap::is_token(&first.webhook_token));
    // Stored by a version without tokens: the key is absent.
    let mut secret = bootstrap::secret_of(&first, &s, None);
    secret.data.as_mut().unwrap().remove("webhook-token");
    let old = material_of(&secret).expect("certificates are still read");
    assert_eq!(old.webhook_token, "");
    let Plan::Write(upgraded) = bootstrap::plan(Some(&old), &s, OffsetDateTime::now_utc()).unwrap()
    else {
        panic!("a token is added")
    };
    assert!(bootstrap::is_token(&upgraded.webhook_token));
    // The apiserver takes a service path only when each segment is a lowercase RFC 1123
    // subdomain (ValidateWebhookService): a token it refused would leave the webhooks on the
    // old path for good.
    let path = bootstrap::webhook_path(None, "mutate", upgraded.trust())
        .unwrap()
        .unwrap();
    for segment in path.trim_start_matches('/').split('/') {
        assert!(is_rfc1123_subdomain(segment), "{segment} in {path}");
    }
    assert_ne!(
        upgraded.webhook_token, first.webhook_token,
        "a new random one"
    );
    assert_eq!(
        (&upgraded.ca_bundle, &upgraded.cert, &upgraded.key),
        (&first.ca_bundle, &first.cert, &first.key),
        "the certificates are kept: nothing changes for the apiserver's verification"
    );
    // Rotations keep the token, so the webhook configurations' paths stay.
    let later = OffsetDateTime::now_utc() + Duration::days(3650 - 10);
    let Plan::Write(rotated) = bootstrap::plan(Some(&upgraded), &s, later).unwrap() else {
        panic!("CA rotation due")
    };
    assert_eq!(rotated.webhook_token, upgraded.webhook_token);
}
