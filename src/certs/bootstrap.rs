//! Certificate bootstrap in a cluster, with no manual step.
//!
//! Every replica runs [`ensure`] at start and then periodically. The serving certificate and its
//! CA live in one Secret of the webhook's namespace; the first replica to create it wins (create
//! is atomic), later writes use the Secret's resourceVersion (optimistic concurrency), and a
//! replica that loses a race reads and uses the winner's material. So two replicas starting at
//! once end up serving the same certificate.
//!
//! Rotation happens before expiry: a leaf within `renew_before` of its end is replaced by one
//! from the same CA; a CA within `renew_before` of its end is replaced by a new one, and the old
//! CA stays in `ca.crt` (and so in the webhooks' `caBundle`) until it expires, so replicas still
//! serving the old leaf stay trusted during the overlap.
//!
//! The Secret also holds the webhook token: a random path segment the webhook configurations
//! call (`/mutate/<token>`). Only readers of the webhook configurations (cluster admins) and
//! of the Secret know it, so a tenant who reaches the webhook's port cannot have its reviews
//! answered: the webhook would otherwise tell anyone what it knows of every namespace (its
//! PDBs, its policy). It is made once and kept across rotations.
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use super::{generate_ca, generate_leaf, service_names};

/// What the bootstrap manages.
#[derive(Debug, Clone)]
pub struct Settings {
    pub secret: String,
    pub namespace: String,
    pub service: String,
    pub leaf_days: u32,
    pub ca_days: u32,
    pub renew_before: Duration,
}

/// The certificate material kept in the Secret (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The current CA first, then older CAs still valid (the overlap).
    pub ca_bundle: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    /// The path segment after `/mutate/` and `/validate/` (`sg` and 64 lowercase hex digits).
    pub webhook_token: String,
}

/// What the webhook configurations carry for the apiserver to reach this webhook: the CA
/// bundle to verify it and the token in their paths.
#[derive(Debug, Clone, Copy)]
pub struct Trust<'a> {
    pub ca_bundle: &'a [u8],
    pub token: &'a str,
    /// A token this replica served before this one: paths that name it are moved to `token`.
    pub previous: Option<&'a str>,
}

impl Material {
    pub fn trust(&self) -> Trust<'_> {
        Trust {
            ca_bundle: self.ca_bundle.as_bytes(),
            token: &self.webhook_token,
            previous: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("the Secret kept changing under us ({0} attempts); retrying later")]
    Contended(usize),
    #[error("no random bytes for the webhook token")]
    Random,
}

const KEYS: [&str; 5] = ["ca.crt", "ca.key", "tls.crt", "tls.key", "webhook-token"];

/// What every token the bootstrap makes starts with: a path naming one that is not this
/// replica's (the Secret was deleted and made again while no replica ran) is still the
/// bootstrap's to move, unlike `/mutate` or a token of the user's own.
const TOKEN_PREFIX: &str = "sg";

/// `sg` and 32 random bytes as 64 lowercase hex digits: a path segment nobody guesses, and one
/// the apiserver accepts (each segment of a webhook's service path must be a lowercase RFC 1123
/// subdomain, so base64's capitals and `_` would be refused).
fn new_token() -> Result<String, BootstrapError> {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| BootstrapError::Random)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{TOKEN_PREFIX}{hex}"))
}

/// A token [`new_token`] could have made (a Secret from before tokens, or edited, has none).
pub fn is_token(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Reads the material from a Secret; `None` when a certificate's key is missing or not UTF-8
/// (a missing token is empty: [`plan`] adds one).
pub fn material_of(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(Material {
        ca_bundle: get(KEYS[0])?,
        ca_key: get(KEYS[1])?,
        cert: get(KEYS[2])?,
        key: get(KEYS[3])?,
        webhook_token: get(KEYS[4]).unwrap_or_default(),
    })
}

/// The Secret holding `m` (type `kubernetes.io/tls`, so tools recognise tls.crt/tls.key).
pub fn secret_of(m: &Material, s: &Settings, resource_version: Option<String>) -> Secret {
    let values = [&m.ca_bundle, &m.ca_key, &m.cert, &m.key, &m.webhook_token];
    Secret {
        metadata: ObjectMeta {
            name: Some(s.secret.clone()),
            namespace: Some(s.namespace.clone()),
            resource_version,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "stateful-guard".to_owned(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            KEYS.iter()
                .zip(values)
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

struct Parsed {
    not_after: OffsetDateTime,
    dns_names: Vec<String>,
}

/// Each certificate of a PEM bundle, as its own PEM text, with what the plan needs.
fn parse_all(pem: &str) -> Vec<(String, Parsed)> {
    const END: &str = "-----END CERTIFICATE-----";
    pem.split_inclusive(END)
        .filter(|block| block.contains(END))
        .filter_map(|block| {
            let block = format!("{}\n", block.trim_start());
            let der = CertificateDer::from_pem_slice(block.as_bytes()).ok()?;
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            let not_after =
                OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()?;
            let dns_names = cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some((
                block,
                Parsed {
                    not_after,
                    dns_names,
                },
            ))
        })
        .collect()
}

/// What to do with the material found in the Secret.
#[derive(Debug)]
pub enum Plan {
    /// It is good: serve it.
    Keep(Material),
    /// Write this (new, or rotated) material.
    Write(Material),
}

/// Decides, from the current material (if any) and the time, whether to keep it or what to
/// write instead. Pure apart from key and token generation.
pub fn plan(
    current: Option<&Material>,
    s: &Settings,
    now: OffsetDateTime,
) -> Result<Plan, BootstrapError> {
    let names = service_names(&s.service, &s.namespace);
    // The token is kept whatever happens to the certificates: the webhook configurations'
    // paths stay as they are.
    let token = match current.map(|m| &m.webhook_token) {
        Some(t) if is_token(t) => t.clone(),
        _ => new_token()?,
    };
    let fresh = || -> Result<Material, BootstrapError> {
        let (ca, ca_key) = generate_ca(s.ca_days)?;
        let (cert, key) = generate_leaf(&names, s.leaf_days, &ca, &ca_key)?;
        Ok(Material {
            ca_bundle: ca,
            ca_key,
            cert,
            key,
            webhook_token: token.clone(),
        })
    };
    let Some(m) = current else {
        return Ok(Plan::Write(fresh()?));
    };
    let cas = parse_all(&m.ca_bundle);
    let leaf = parse_all(&m.cert);
    let (Some((ca_pem, ca)), Some((_, leaf))) = (cas.first(), leaf.first()) else {
        return Ok(Plan::Write(fresh()?));
    };
    // CAs still valid, current first: the overlap kept in the caBundle.
    let valid_cas = |extra: Option<&str>| -> String {
        extra
            .into_iter()
            .map(str::to_owned)
            .chain(
                cas.iter()
                    .filter(|(_, c)| c.not_after > now)
                    .map(|(p, _)| p.clone()),
            )
            .collect()
    };
    if ca.not_after - now < s.renew_before {
        let (new_ca, new_key) = generate_ca(s.ca_days)?;
        let (cert, key) = generate_leaf(&names, s.leaf_days, &new_ca, &new_key)?;
        return Ok(Plan::Write(Material {
            ca_bundle: valid_cas(Some(&new_ca)),
            ca_key: new_key,
            cert,
            key,
            webhook_token: token,
        }));
    }
    let names_ok = names.iter().all(|n| leaf.dns_names.contains(n));
    if leaf.not_after - now < s.renew_before || !names_ok {
        let (cert, key) = generate_leaf(&names, s.leaf_days, ca_pem, &m.ca_key)?;
        return Ok(Plan::Write(Material {
            ca_bundle: valid_cas(None),
            ca_key: m.ca_key.clone(),
            cert,
            key,
            webhook_token: token,
        }));
    }
    let kept = Material {
        ca_bundle: valid_cas(None),
        webhook_token: token,
        ..m.clone()
    };
    Ok(if kept == *m {
        Plan::Keep(kept)
    } else {
        Plan::Write(kept)
    })
}

/// The Secret operations the bootstrap needs, as `kube::Api<Secret>` provides them.
pub trait SecretApi {
    fn get_secret(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Secret>, kube::Error>> + Send;
    fn create_secret(
        &self,
        secret: &Secret,
    ) -> impl Future<Output = Result<Secret, kube::Error>> + Send;
    fn replace_secret(
        &self,
        name: &str,
        secret: &Secret,
    ) -> impl Future<Output = Result<Secret, kube::Error>> + Send;
}

impl SecretApi for kube::Api<Secret> {
    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, kube::Error> {
        self.get_opt(name).await
    }
    async fn create_secret(&self, secret: &Secret) -> Result<Secret, kube::Error> {
        self.create(&Default::default(), secret).await
    }
    async fn replace_secret(&self, name: &str, secret: &Secret) -> Result<Secret, kube::Error> {
        self.replace(name, &Default::default(), secret).await
    }
}

fn lost_race(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_already_exists() || status.is_conflict())
}

/// Makes the Secret hold valid material and returns it. Safe with many replicas at once.
pub async fn ensure(api: &impl SecretApi, s: &Settings) -> Result<Material, BootstrapError> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let current = api.get_secret(&s.secret).await?;
        let material = current.as_ref().and_then(material_of);
        match plan(material.as_ref(), s, OffsetDateTime::now_utc())? {
            Plan::Keep(m) => return Ok(m),
            Plan::Write(m) => {
                let result = match &current {
                    None => api.create_secret(&secret_of(&m, s, None)).await,
                    Some(existing) => {
                        let rv = existing.metadata.resource_version.clone();
                        api.replace_secret(&s.secret, &secret_of(&m, s, rv)).await
                    }
                };
                match result {
                    Ok(_) => {
                        tracing::info!(secret = %s.secret, "serving certificate written");
                        return Ok(m);
                    }
                    // Another replica wrote first: read and use what it wrote.
                    Err(e) if lost_race(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(BootstrapError::Contended(ATTEMPTS))
}

/// A webhook configuration given what it lacked of a [`Trust`].
#[derive(Debug)]
pub struct Reconciled<T> {
    /// The configuration with the caBundle and paths it lacked; `None` when it lacked nothing
    /// it may be given.
    pub updated: Option<T>,
    /// A path someone else set (an older release's `/mutate` after a rollback, the token of an
    /// install without the bootstrap): left as it is, and the apiserver does not call us there.
    pub foreign: Option<String>,
}

/// Makes every webhook of a MutatingWebhookConfiguration carry `trust`, as far as it may.
pub fn with_trust_mutating(
    mut config: MutatingWebhookConfiguration,
    trust: Trust<'_>,
) -> Reconciled<MutatingWebhookConfiguration> {
    let hooks = config.webhooks.iter_mut().flatten();
    let (changed, foreign) =
        set_client_configs(hooks.map(|h| &mut h.client_config), "mutate", trust);
    Reconciled {
        updated: changed.then_some(config),
        foreign,
    }
}

/// Makes every webhook of a ValidatingWebhookConfiguration carry `trust`, as far as it may.
pub fn with_trust_validating(
    mut config: ValidatingWebhookConfiguration,
    trust: Trust<'_>,
) -> Reconciled<ValidatingWebhookConfiguration> {
    let hooks = config.webhooks.iter_mut().flatten();
    let (changed, foreign) =
        set_client_configs(hooks.map(|h| &mut h.client_config), "validate", trust);
    Reconciled {
        updated: changed.then_some(config),
        foreign,
    }
}

/// What to do with the path of the webhook at `endpoint` (`mutate`, `validate`), configured as
/// `configured`, for `trust`: `Ok(None)` when it is ours; `Ok(Some(path))` to set when it has
/// none (the rendered manifests leave it to the bootstrap, so that no apply, server-side apply
/// or GitOps sync claims it; a `replace` drops it) or names a bootstrap's token (the one this
/// replica replaced, or one of a Secret deleted since); `Err(configured)` when someone else set
/// it. Only a path that is missing or was the bootstrap's is ever rewritten: after a rollback to
/// a release without tokens (its manifests say `/mutate`), or a switch to `webhook.token`, a
/// replica of this release that is still running must not put back a path that the remaining
/// replicas do not answer.
pub fn webhook_path(
    configured: Option<&str>,
    endpoint: &str,
    trust: Trust<'_>,
) -> Result<Option<String>, String> {
    let ours = format!("/{endpoint}/{}", trust.token);
    match configured {
        Some(path) if path == ours => Ok(None),
        None | Some("" | "/") => Ok(Some(ours)),
        Some(path)
            if path
                .strip_prefix('/')
                .and_then(|p| p.strip_prefix(endpoint))
                .and_then(|p| p.strip_prefix('/'))
                .is_some_and(|token| is_token(token) || trust.previous == Some(token)) =>
        {
            Ok(Some(ours))
        }
        Some(path) => Err(path.to_owned()),
    }
}

/// Sets `caBundle` and, for a Service, the tokened path on each client config where
/// [`webhook_path`] allows; whether any changed, and a path left as someone else set it.
fn set_client_configs<'a>(
    configs: impl Iterator<Item = &'a mut WebhookClientConfig>,
    endpoint: &str,
    trust: Trust<'_>,
) -> (bool, Option<String>) {
    let mut changed = false;
    let mut foreign = None;
    for config in configs {
        if config
            .ca_bundle
            .as_ref()
            .is_none_or(|b| b.0 != trust.ca_bundle)
        {
            config.ca_bundle = Some(ByteString(trust.ca_bundle.to_vec()));
            changed = true;
        }
        if let Some(service) = config.service.as_mut() {
            match webhook_path(service.path.as_deref(), endpoint, trust) {
                Ok(None) => {}
                Ok(Some(path)) => {
                    service.path = Some(path);
                    changed = true;
                }
                Err(path) => foreign = Some(path),
            }
        }
    }
    (changed, foreign)
}

/// Whether both webhook configurations named `name` carry `trust` already (two GETs).
pub async fn webhooks_carry(
    client: &kube::Client,
    name: &str,
    trust: Trust<'_>,
) -> Result<bool, kube::Error> {
    let mutating: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(client.clone());
    let validating: kube::Api<ValidatingWebhookConfiguration> = kube::Api::all(client.clone());
    let carries = |updated: bool, foreign: &Option<String>| !updated && foreign.is_none();
    let m = with_trust_mutating(mutating.get(name).await?, trust);
    let v = with_trust_validating(validating.get(name).await?, trust);
    Ok(carries(m.updated.is_some(), &m.foreign) && carries(v.updated.is_some(), &v.foreign))
}

/// Puts the CA bundle and the tokened paths into both webhook configurations named `name`
/// (get, then replace with the resourceVersion read; retried on conflict). `Ok(Some(path))`:
/// a path someone else set, left as it is (the apiserver does not call us there).
pub async fn trust_webhooks(
    client: &kube::Client,
    name: &str,
    trust: Trust<'_>,
) -> Result<Option<String>, kube::Error> {
    let mutating: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(client.clone());
    let validating: kube::Api<ValidatingWebhookConfiguration> = kube::Api::all(client.clone());
    for attempt in 0..5 {
        let result = async {
            let m = with_trust_mutating(mutating.get(name).await?, trust);
            if let Some(updated) = m.updated {
                mutating
                    .replace(name, &Default::default(), &updated)
                    .await?;
            }
            let v = with_trust_validating(validating.get(name).await?, trust);
            if let Some(updated) = v.updated {
                validating
                    .replace(name, &Default::default(), &updated)
                    .await?;
            }
            Ok::<_, kube::Error>(m.foreign.or(v.foreign))
        }
        .await;
        match result {
            Err(e) if lost_race(&e) && attempt < 4 => continue,
            other => return other,
        }
    }
    Ok(None)
}
