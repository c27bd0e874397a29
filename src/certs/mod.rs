//! Serving certificates made with rcgen: a CA, and an ECDSA P-256 leaf for the webhook Service.
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::cli::CertsArgs;

pub mod bootstrap;

/// A CA and a leaf it signed, PEM-encoded.
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

impl Bundle {
    /// The CA certificate base64-encoded, as a webhook configuration's `caBundle` wants it.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_cert)
    }
}

/// The names kube-apiserver and in-cluster clients may use for a Service. kube-apiserver
/// verifies `NAME.NS.svc`. Never pod IPs: they change with every restart.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A fresh CA, PEM certificate and key.
pub fn generate_ca(days: u32) -> Result<(String, String), rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let ca = ca_params(now, days)?;
    Ok((ca.self_signed(&ca_key)?.pem(), ca_key.serialize_pem()))
}

fn ca_params(now: OffsetDateTime, days: u32) -> Result<CertificateParams, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "stateful-guard webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Tolerate a few minutes of clock skew between this host and the verifier.
    ca.not_before = now - Duration::minutes(5);
    ca.not_after = now + Duration::days(i64::from(days));
    Ok(ca)
}

/// An ECDSA P-256 serving certificate for `names` (DNS names or IP addresses), signed by the
/// CA given as PEM certificate and key. Returns PEM certificate and key.
pub fn generate_leaf(
    names: &[String],
    days: u32,
    ca_cert: &str,
    ca_key: &str,
) -> Result<(String, String), rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::from_pem(ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name = DistinguishedName::new();
    if let Some(cn) = names.iter().find(|n| n.ends_with(".svc")).or(names.first()) {
        leaf.distinguished_name
            .push(DnType::CommonName, cn.as_str());
    }
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - Duration::minutes(5);
    leaf.not_after = now + Duration::days(i64::from(days));
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A fresh CA and a serving certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[String], days: u32, ca_days: u32) -> Result<Bundle, rcgen::Error> {
    let (ca_cert, ca_key) = generate_ca(ca_days)?;
    let (cert, key) = generate_leaf(names, days, &ca_cert, &ca_key)?;
    Ok(Bundle {
        ca_cert,
        ca_key,
        cert,
        key,
    })
}

/// Writes a file; `secret` files get mode 0600 from creation on (never world-readable).
pub fn write_file(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    if secret {
        // An existing file keeps its mode on open: tighten it explicitly.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set mode 0600 on {}", path.display()))?;
    }
    Ok(())
}

/// `stateful-guard certs`.
pub fn run(args: &CertsArgs) -> anyhow::Result<()> {
    let names = service_names(&args.service, &args.namespace);
    let bundle = generate(&names, args.days, args.ca_days).context("generating certificates")?;
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    write_file(&args.out.join("ca.crt"), &bundle.ca_cert, false)?;
    write_file(&args.out.join("ca.key"), &bundle.ca_key, true)?;
    write_file(&args.out.join("tls.crt"), &bundle.cert, false)?;
    write_file(&args.out.join("tls.key"), &bundle.key, true)?;
    eprintln!(
        "wrote {dir}/ca.crt, ca.key, tls.crt, tls.key for {names}",
        dir = args.out.display(),
        names = names.join(", ")
    );
    eprintln!("caBundle for the webhook configurations:");
    println!("{}", bundle.ca_bundle());
    Ok(())
}
