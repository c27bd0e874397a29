//! `serve --cert-bootstrap`: the serving certificate from the cluster, kept current.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;

use crate::certs::bootstrap::{self, Material, Settings};
use crate::cli::ServeArgs;

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

    /// Before the socket is bound: the Secret is made valid and its certificate written,
    /// retrying with backoff while the API is unreachable (the pod is not ready meanwhile).
    pub async fn initial(&self, client: &kube::Client) -> anyhow::Result<()> {
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
    pub async fn keep_current(self, client: kube::Client) {
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
