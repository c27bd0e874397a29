//! TLS: certificates loaded before the socket is bound, then reloaded without restart.
//!
//! The server's rustls config resolves its certificate per handshake from an [`ArcSwap`], so a
//! reload is one atomic pointer swap: in-flight and concurrent connections never fail. The
//! reloader polls the files' contents, which also sees Kubernetes' Secret-volume updates (an
//! atomic swap of the `..data` symlink; the file names never change). A broken new pair is
//! logged and counted, and the old pair keeps serving.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::{Metrics, ResultLabels};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found: {source}")]
    BadCertificatePem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: no PEM certificate found: the file holds no CERTIFICATE block")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no usable PEM private key found: {source}")]
    NoKey {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// Expired, not yet valid, or not for the name kube-apiserver verifies: `detail` says which.
    #[error("{path}: {detail}")]
    Unusable { path: PathBuf, detail: String },
    #[error("{cert} and {key}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The CA certificates of `--client-ca`.
pub fn client_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let pem = read(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|source| TlsError::BadCertificatePem {
            path: path.to_owned(),
            source,
        })?;
        roots.add(cert).map_err(|e| TlsError::Unusable {
            path: path.to_owned(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(Arc::new(roots))
}

/// The names a client certificate holds: its subject's common names and its DNS names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

/// One certificate chain and its key, as read from disk.
#[derive(Clone, PartialEq, Eq)]
struct PemPair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses a chain (leaf first, intermediates after) and its key, and checks they belong
/// together.
fn certified_key(
    provider: &CryptoProvider,
    pair: &PemPair,
    cert_path: &Path,
    key_path: &Path,
    server_name: Option<&str>,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&pair.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificatePem {
            path: cert_path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&pair.key).map_err(|source| TlsError::NoKey {
        path: key_path.to_owned(),
        source,
    })?;
    let ck = CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })?;
    if let Some(leaf) = ck.cert.first() {
        usable(leaf.as_ref(), server_name).map_err(|detail| TlsError::Unusable {
            path: cert_path.to_owned(),
            detail,
        })?;
    }
    Ok(ck)
}

/// Whether a leaf certificate can serve now, for `server_name` (the name kube-apiserver
/// verifies, `SERVICE.NAMESPACE.svc`): not expired, already valid, and naming it. A pair that is
/// not would make every TLS handshake fail, so admission would silently stop (failurePolicy
/// Ignore).
fn usable(der: &[u8], server_name: Option<&str>) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now < validity.not_before {
        return Err(format!(
            "the certificate is not valid yet (not before {})",
            validity.not_before
        ));
    }
    if now > validity.not_after {
        return Err(format!(
            "the certificate expired (not after {})",
            validity.not_after
        ));
    }
    let Some(name) = server_name.filter(|n| !n.is_empty()) else {
        return Ok(());
    };
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let matches = |pattern: &str| {
        pattern.eq_ignore_ascii_case(name)
            || pattern.strip_prefix("*.").is_some_and(|suffix| {
                name.split_once('.')
                    .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(suffix))
            })
    };
    if names.iter().any(|n| matches(n)) {
        Ok(())
    } else {
        Err(format!(
            "the certificate is not valid for {name:?} (it names {}); kube-apiserver would refuse the handshake",
            if names.is_empty() {
                "no DNS name".to_owned()
            } else {
                names.join(", ")
            }
        ))
    }
}

/// The certificate currently served; swapped atomically on reload.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStore")
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Certificate files and the store they feed.
pub struct CertFiles {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    store: Arc<CertStore>,
    last: std::sync::Mutex<PemPair>,
    /// The name every loaded leaf must be valid for (`None`: not checked).
    server_name: Option<String>,
}

/// The crypto provider, installed once per process (style: explicit, never implicit).
pub fn provider() -> Arc<CryptoProvider> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Ignored if another part of the process installed one first; ours is passed explicitly.
    let _ = CryptoProvider::install_default((*provider).clone());
    provider
}

impl CertFiles {
    /// Loads the pair; a missing or bad file, or a certificate that is expired, not yet valid
    /// or not valid for `server_name`, is an error naming the file.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        server_name: Option<String>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let pair = PemPair {
            cert: read(cert_path)?,
            key: read(key_path)?,
        };
        let ck = certified_key(
            &provider,
            &pair,
            cert_path,
            key_path,
            server_name.as_deref(),
        )?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            store: Arc::new(CertStore {
                current: ArcSwap::from_pointee(ck),
            }),
            last: std::sync::Mutex::new(pair),
            server_name,
        })
    }

    /// A rustls server config resolving through the store: TLS 1.2 and 1.3, ALPN h2 and
    /// http/1.1.
    pub fn server_config(&self) -> Result<ServerConfig, rustls::Error> {
        self.server_config_for(None)
    }

    /// The server's config; with `clients`, a client certificate signed by one of them is
    /// required (`--client-ca`).
    pub fn server_config_for(
        &self,
        clients: Option<Arc<rustls::RootCertStore>>,
    ) -> Result<ServerConfig, rustls::Error> {
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots,
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(self.store.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Re-reads the files; swaps in a changed, valid pair. Returns whether it changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let pair = PemPair {
            cert: read(&self.cert_path)?,
            key: read(&self.key_path)?,
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == pair {
            return Ok(false);
        }
        let ck = certified_key(
            &self.provider,
            &pair,
            &self.cert_path,
            &self.key_path,
            self.server_name.as_deref(),
        )?;
        self.store.current.store(Arc::new(ck));
        *last = pair;
        Ok(true)
    }

    /// Expiry of the served leaf, seconds since the epoch (for the metric).
    pub fn not_after(&self) -> Option<i64> {
        let current = self.store.current.load();
        let leaf = current.cert.first()?;
        x509_not_after(leaf.as_ref())
    }

    /// Polls the files every `interval` until the process ends. Never panics: every failure
    /// is logged and counted, and the old pair keeps serving.
    pub async fn watch(self: Arc<Self>, interval: Duration, metrics: Arc<Metrics>) {
        let mut last_error: Option<String> = None;
        loop {
            tokio::time::sleep(interval).await;
            match self.reload() {
                Ok(true) => {
                    last_error = None;
                    metrics
                        .cert_reloads
                        .get_or_create(&ResultLabels { result: "ok" })
                        .inc();
                    if let Some(t) = self.not_after() {
                        metrics.cert_not_after.set(t);
                    }
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                }
                Ok(false) => {
                    last_error = None;
                    // The certificate bootstrap reloads the pair itself; keep the gauge current.
                    if let Some(t) = self.not_after() {
                        metrics.cert_not_after.set(t);
                    }
                }
                Err(error) => {
                    let text = error.to_string();
                    // Log a persistent problem once, not every poll; count every attempt.
                    if last_error.as_deref() != Some(&text) {
                        tracing::error!(%error, "new certificate rejected; still serving the previous one");
                    }
                    metrics
                        .cert_reloads
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    last_error = Some(text);
                }
            }
        }
    }
}

/// notAfter of a DER certificate, seconds since the epoch.
fn x509_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_of_a_generated_certificate() {
        let bundle = crate::certs::generate(&["localhost".into()], 30, 60).unwrap();
        let der = CertificateDer::from_pem_slice(bundle.cert.as_bytes()).unwrap();
        let t = x509_not_after(der.as_ref()).unwrap();
        let expected =
            (time::OffsetDateTime::now_utc() + time::Duration::days(30)).unix_timestamp();
        assert!((t - expected).abs() < 120, "{t} vs {expected}");
    }

    #[test]
    fn expired_future_and_misnamed_certificates_are_refused() {
        let now =
            crate::certs::generate(&["stateful-guard.stateful-guard.svc".into()], 1, 1).unwrap();
        let der = CertificateDer::from_pem_slice(now.cert.as_bytes()).unwrap();
        assert_eq!(
            usable(der.as_ref(), Some("stateful-guard.stateful-guard.svc")),
            Ok(())
        );
        assert_eq!(usable(der.as_ref(), None), Ok(()));
        let err = usable(der.as_ref(), Some("other.example")).unwrap_err();
        assert!(err.contains("not valid for \"other.example\""), "{err}");
        let wildcard = crate::certs::generate(&["*.stateful-guard.svc".into()], 1, 1).unwrap();
        let der = CertificateDer::from_pem_slice(wildcard.cert.as_bytes()).unwrap();
        assert_eq!(
            usable(der.as_ref(), Some("stateful-guard.stateful-guard.svc")),
            Ok(())
        );
        assert!(usable(der.as_ref(), Some("a.b.stateful-guard.svc")).is_err());
        let ip = crate::certs::generate(&["127.0.0.1".into()], 1, 1).unwrap();
        let der = CertificateDer::from_pem_slice(ip.cert.as_bytes()).unwrap();
        assert_eq!(usable(der.as_ref(), Some("127.0.0.1")), Ok(()));

        // Expired yesterday, and valid only from tomorrow (rcgen, with explicit dates).
        let dated = |from: time::OffsetDateTime, to: time::OffsetDateTime| {
            let mut params = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap();
            params.not_before = from;
            params.not_after = to;
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let day = time::Duration::days(1);
        let now = time::OffsetDateTime::now_utc();
        let err = usable(&dated(now - day * 10, now - day), None).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        let err = usable(&dated(now + day, now + day * 10), None).unwrap_err();
        assert!(err.contains("not valid yet"), "{err}");
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let err = CertFiles::load(&cert, &key, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tls.crt"), "{err}");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let err = CertFiles::load(&cert, &key, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("tls.crt") && err.contains("no PEM certificate"),
            "{err}"
        );
        let a = crate::certs::generate(&["a".into()], 1, 1).unwrap();
        let b = crate::certs::generate(&["b".into()], 1, 1).unwrap();
        std::fs::write(&cert, &a.cert).unwrap();
        std::fs::write(&key, &b.key).unwrap();
        let err = CertFiles::load(&cert, &key, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tls.key"), "{err}");
    }
}
