//! `serve --cert-bootstrap`: the serving certificate from the cluster, kept current.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;

use crate::certs::bootstrap::{self, Material, Settings, Trust};
use crate::cli::ServeArgs;
use crate::server::callers::Callers;
use crate::server::tls::CertFiles;

/// Everything the bootstrap needs, read from the flags once.
pub struct Bootstrap {
    settings: Settings,
    cert_dir: PathBuf,
    webhook_name: String,
    /// How often the Secret is checked (rotation when due).
    interval: Duration,
    /// How often the webhook configurations' caBundle is checked (and put back).
    bundle_interval: Duration,
    /// The path someone else set that was last warned about (said once, not every tick).
    foreign_said: std::sync::Mutex<Option<String>>,
}

/// Every call to the API here gets this long; a hung call is retried at the next tick.
const API_CALL_BUDGET: Duration = Duration::from_secs(10);

impl Bootstrap {
    pub fn from_args(args: &ServeArgs) -> Self {
        Self {
            settings: Settings {
                secret: args.cert_secret.clone(),
                namespace: args.namespace.clone(),
                service: args.service.clone(),
                leaf_days: 365,
                ca_days: 3650,
                renew_before: time::Duration::days(30),
            },
            cert_dir: args.cert_dir.clone(),
            webhook_name: args.webhook_name.clone(),
            interval: args.cert_check_interval,
            bundle_interval: args.reload_interval.max(Duration::from_secs(1)),
            foreign_said: Default::default(),
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.cert_dir.join("tls.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.cert_dir.join("tls.key")
    }

    fn secrets(&self, client: &kube::Client) -> kube::Api<Secret> {
        kube::Api::namespaced(client.clone(), &self.settings.namespace)
    }

    /// Makes both webhook configurations carry `trust`'s CA bundle and token; whether they do
    /// now (the apiserver can verify us, and calls the path we answer). A missing configuration,
    /// an unanswered call or a path someone else set (said once, loudly) is not.
    async fn inject(&self, client: &kube::Client, trust: Trust<'_>) -> bool {
        let call = bootstrap::trust_webhooks(client, &self.webhook_name, trust);
        match tokio::time::timeout(API_CALL_BUDGET, call).await {
            Ok(Ok(None)) => {
                *self.foreign_said.lock().unwrap_or_else(|e| e.into_inner()) = None;
                true
            }
            Ok(Ok(Some(path))) => {
                let mut said = self.foreign_said.lock().unwrap_or_else(|e| e.into_inner());
                if said.as_deref() != Some(path.as_str()) {
                    tracing::warn!(
                        %path,
                        "the webhook configurations call a path this replica did not set (a rollback to a release without the webhook token, or webhook.token?): left as it is; not ready while the apiserver does not call this replica's token"
                    );
                    *said = Some(path);
                }
                false
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot set the webhooks' caBundle and path; will retry");
                false
            }
            Err(_) => {
                tracing::warn!(budget = ?API_CALL_BUDGET, "setting the webhooks' caBundle and path timed out; will retry");
                false
            }
        }
    }

    /// Whether both webhook configurations carry `trust` already; `None` when the API did not
    /// say.
    async fn carried(&self, client: &kube::Client, trust: Trust<'_>) -> Option<bool> {
        let call = bootstrap::webhooks_carry(client, &self.webhook_name, trust);
        match tokio::time::timeout(API_CALL_BUDGET, call).await {
            Ok(Ok(carried)) => Some(carried),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the webhook configurations; will retry");
                None
            }
            Err(_) => None,
        }
    }

    /// What to serve until the Secret has been read: the files a previous run of this container
    /// left in the emptyDir, else a provisional self-signed certificate for the Service written
    /// there. The socket can then be bound at once: kubelet's HTTPS probes do not verify
    /// certificates, so liveness passes during an API outage (no restart loop), while readiness
    /// waits for [`Bootstrap::run`] (no apiserver traffic on the provisional certificate).
    /// The name kube-apiserver verifies: `SERVICE.NAMESPACE.svc`.
    fn server_name(&self) -> String {
        format!("{}.{}.svc", self.settings.service, self.settings.namespace)
    }

    pub fn provisional(&self) -> anyhow::Result<CertFiles> {
        if let Ok(files) = CertFiles::load(
            &self.cert_path(),
            &self.key_path(),
            Some(self.server_name()),
        ) {
            return Ok(files);
        }
        let names = crate::certs::service_names(&self.settings.service, &self.settings.namespace);
        let bundle = crate::certs::generate(&names, 1, 1)
            .context("generating the provisional certificate")?;
        write(
            &self.cert_dir,
            &Material {
                ca_bundle: bundle.ca_cert,
                ca_key: bundle.ca_key,
                cert: bundle.cert,
                key: bundle.key,
                webhook_token: String::new(),
            },
        )?;
        Ok(CertFiles::load(
            &self.cert_path(),
            &self.key_path(),
            Some(self.server_name()),
        )?)
    }

    /// After the socket is bound: the certificate from the Secret replaces the provisional one,
    /// `ready` turns true, and then the certificate is kept current until the process ends.
    /// The webhook token goes to `callers` before the webhook configurations name it.
    pub async fn run(
        self,
        client: kube::Client,
        files: Arc<CertFiles>,
        ready: Arc<AtomicBool>,
        callers: Arc<Callers>,
    ) {
        let mut loaded = false;
        let mut material = None;
        match self.initial(&client, &callers).await {
            Ok(m) => {
                match files.reload() {
                    Ok(_) => {
                        loaded = true;
                        tracing::info!("serving the certificate from the Secret");
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot load the bootstrapped certificate; will retry");
                    }
                }
                material = Some(m);
            }
            Err(error) => tracing::error!(
                error = format!("{error:#}"),
                "cannot write the bootstrapped certificate; will retry"
            ),
        }
        self.keep_current(client, files, ready, callers, loaded, material)
            .await;
    }

    /// The Secret is made valid and its certificate written, retrying with backoff while the
    /// API is unreachable (the pod is not ready meanwhile). The CA reaches the webhook
    /// configurations before the certificate it signs is served.
    async fn initial(&self, client: &kube::Client, callers: &Callers) -> anyhow::Result<Material> {
        let api = self.secrets(client);
        let mut delay = Duration::from_millis(500);
        let material = loop {
            let attempt =
                tokio::time::timeout(API_CALL_BUDGET, bootstrap::ensure(&api, &self.settings));
            match attempt.await {
                Ok(Ok(m)) => break m,
                Ok(Err(error)) => {
                    tracing::warn!(%error, retry_in = ?delay, "certificate bootstrap failed");
                }
                Err(_) => {
                    tracing::warn!(retry_in = ?delay, "certificate bootstrap timed out");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        };
        callers.set_tokens(std::slice::from_ref(&material.webhook_token));
        self.inject(client, material.trust()).await;
        write(&self.cert_dir, &material)?;
        Ok(material)
    }

    /// Every `bundle_interval`: both webhook configurations carry the CA bundle and the
    /// tokened paths (put back within seconds if a GitOps tool or a re-apply reset them, or if
    /// the configurations appear after the pod). Every `interval`, and whenever the
    /// configurations differ from what this replica holds: the Secret is read first, and the
    /// certificate rotated when due, its new CA bundle reaching the configurations before the
    /// new leaf is written (the file watcher then serves it). Reading the Secret before putting
    /// anything back is what keeps replicas from undoing each other: one that rotated the CA,
    /// or made a new token, is followed by the others within a tick instead of being reverted
    /// by their older copy until their next check. Readiness: the Secret's certificate is served
    /// and the configurations trust it, so the apiserver can verify us.
    async fn keep_current(
        self,
        client: kube::Client,
        files: Arc<CertFiles>,
        ready: Arc<AtomicBool>,
        callers: Arc<Callers>,
        mut loaded: bool,
        mut material: Option<Material>,
    ) {
        let api = self.secrets(&client);
        let mut since_check = Duration::ZERO;
        // The token this replica served before the current one, if it changed (its key was
        // deleted from the Secret): paths naming it are moved to the new one.
        let mut previous: Option<String> = None;
        let mut trusted = match &material {
            Some(m) => self.inject(&client, m.trust()).await,
            None => false,
        };
        loop {
            let now_ready = loaded && trusted;
            if ready.swap(now_ready, Ordering::AcqRel) != now_ready {
                if now_ready {
                    tracing::info!(
                        "ready: the webhook configurations trust the served certificate and call the webhook token's paths"
                    );
                } else {
                    tracing::warn!(
                        "not ready: the webhook configurations do not trust the served certificate or do not call the webhook token's paths (yet)"
                    );
                }
            }
            tokio::time::sleep(self.bundle_interval).await;
            since_check += self.bundle_interval;
            let carried = match &material {
                Some(m) => self.carried(&client, trust(m, &previous)).await,
                None => None,
            };
            if material.is_none() || since_check >= self.interval || carried == Some(false) {
                since_check = Duration::ZERO;
                match tokio::time::timeout(API_CALL_BUDGET, bootstrap::ensure(&api, &self.settings))
                    .await
                {
                    Ok(Ok(fresh)) => {
                        if let Some(old) = &material
                            && old.webhook_token != fresh.webhook_token
                        {
                            previous = Some(old.webhook_token.clone());
                        }
                        // The token before the paths name it; the CA before the certificate
                        // it signs.
                        callers.set_tokens(std::slice::from_ref(&fresh.webhook_token));
                        trusted = self.inject(&client, trust(&fresh, &previous)).await;
                        match write(&self.cert_dir, &fresh) {
                            Ok(true) => {
                                tracing::info!("serving certificate updated from the Secret")
                            }
                            Ok(false) => {}
                            Err(error) => tracing::error!(
                                error = format!("{error:#}"),
                                "cannot write the certificate files"
                            ),
                        }
                        if !loaded && files.reload().is_ok() {
                            loaded = true;
                            tracing::info!("serving the certificate from the Secret");
                        }
                        material = Some(fresh);
                        continue;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "certificate check failed; will retry")
                    }
                    Err(_) => tracing::warn!("certificate check timed out; will retry"),
                }
                if carried == Some(false) {
                    // The configurations differ from what this replica holds and the Secret
                    // could not be read: putting back its copy could undo another replica's
                    // newer CA or token. Not ready until the next tick reads the Secret.
                    trusted = false;
                    continue;
                }
            }
            if let Some(m) = &material {
                trusted = carried == Some(true) || self.inject(&client, trust(m, &previous)).await;
            }
        }
    }
}

/// What `m` asks of the webhook configurations, moving paths that name `previous`.
fn trust<'a>(m: &'a Material, previous: &'a Option<String>) -> Trust<'a> {
    Trust {
        previous: previous.as_deref(),
        ..m.trust()
    }
}

/// Writes tls.crt and tls.key into `dir`, each by an atomic rename, if they changed.
fn write(dir: &Path, m: &Material) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut changed = false;
    for (name, content, secret) in [("tls.crt", &m.cert, false), ("tls.key", &m.key, true)] {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        crate::certs::write_file(&tmp, content, secret)?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        changed = true;
    }
    Ok(changed)
}
