//! `serve --cert-bootstrap`: the serving certificate from the cluster, kept current.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;

use crate::certs::bootstrap::{self, Material, Settings};
use crate::cli::ServeArgs;
use crate::server::tls::CertFiles;

/// Everything the bootstrap needs, read from the flags once.
pub struct Bootstrap {
    settings: Settings,
    cert_dir: PathBuf,
    webhook_name: String,
    interval: Duration,
}

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

    async fn inject(&self, client: &kube::Client, material: &Material) {
        if let Err(error) =
            bootstrap::inject_ca_bundle(client, &self.webhook_name, material.ca_bundle.as_bytes())
                .await
        {
            tracing::warn!(%error, "cannot set the webhooks' caBundle; will retry");
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
    pub async fn run(self, client: kube::Client, files: Arc<CertFiles>, ready: Arc<AtomicBool>) {
        match self.initial(&client).await {
            Ok(()) => match files.reload() {
                Ok(_) => {
                    ready.store(true, Ordering::Release);
                    tracing::info!("serving the certificate from the Secret");
                }
                Err(error) => {
                    tracing::error!(%error, "cannot load the bootstrapped certificate; will retry");
                }
            },
            Err(error) => tracing::error!(
                error = format!("{error:#}"),
                "cannot write the bootstrapped certificate; will retry"
            ),
        }
        // The file watcher reloads later changes; readiness waits for the first good load.
        let ready_files = (!ready.load(Ordering::Acquire)).then_some((files, ready));
        self.keep_current(client, ready_files).await;
    }

    /// The Secret is made valid and its certificate written, retrying with backoff while the
    /// API is unreachable (the pod is not ready meanwhile).
    async fn initial(&self, client: &kube::Client) -> anyhow::Result<()> {
        let api = self.secrets(client);
        let mut delay = Duration::from_millis(500);
        let material = loop {
            match bootstrap::ensure(&api, &self.settings).await {
                Ok(m) => break m,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "certificate bootstrap failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        };
        write(&self.cert_dir, &material)?;
        self.inject(client, &material).await;
        Ok(())
    }

    /// Every interval: rotate when due, refresh the files (the file watcher reloads them), and
    /// make sure both webhook configurations carry the CA bundle.
    /// `pending` holds the files and the readiness flag while the first load has not succeeded.
    async fn keep_current(
        self,
        client: kube::Client,
        mut pending: Option<(Arc<CertFiles>, Arc<AtomicBool>)>,
    ) {
        let api = self.secrets(&client);
        loop {
            tokio::time::sleep(self.interval).await;
            match bootstrap::ensure(&api, &self.settings).await {
                Ok(material) => {
                    match write(&self.cert_dir, &material) {
                        Ok(true) => tracing::info!("serving certificate updated from the Secret"),
                        Ok(false) => {}
                        Err(error) => tracing::error!(
                            error = format!("{error:#}"),
                            "cannot write the certificate files"
                        ),
                    }
                    if let Some((files, ready)) = &pending
                        && files.reload().is_ok()
                    {
                        ready.store(true, Ordering::Release);
                        tracing::info!("serving the certificate from the Secret");
                        pending = None;
                    }
                    self.inject(&client, &material).await;
                }
                Err(error) => tracing::warn!(%error, "certificate check failed; will retry"),
            }
        }
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
