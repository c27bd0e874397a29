//! Command-line interface. Every flag of `serve` also reads an environment variable.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::admission::Uninterpretable;

#[derive(Debug, Parser)]
#[command(
    name = "stateful-guard",
    version,
    about = "Admission webhook that makes stateful workloads (StatefulSets, PVCs) safe by default"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the mutating (/mutate) and validating (/validate) webhooks over HTTPS.
    Serve(Box<ServeArgs>),
    /// Write a CA and a serving certificate for the webhook's Service.
    Certs(CertsArgs),
    /// Evaluate manifests (offline) or what a cluster runs (`--cluster`, read-only) against the
    /// policies (exit 1 when an enforced rule fails).
    Check(CheckArgs),
}

/// A duration, or `0` for off (zero).
fn duration_or_off(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    duration(s)
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 1m)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterMode {
    /// Use in-cluster config or a kubeconfig when one is found; run without cluster otherwise.
    Auto,
    /// Never talk to a cluster (rules needing cluster state warn instead of denying).
    Off,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the HTTPS listener (webhooks, /healthz, /readyz, /metrics).
    #[arg(long, env = "SG_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,

    /// PEM certificate chain (leaf first). Without it, a CA and a localhost certificate are
    /// generated at start.
    #[arg(long, env = "SG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "SG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Where to write the generated CA certificate when no --tls-cert is given.
    #[arg(long, env = "SG_GENERATED_CA", default_value_os_t = std::env::temp_dir().join("stateful-guard-ca.crt"))]
    pub generated_ca: PathBuf,

    /// In a cluster: create and rotate the serving certificate in a Secret, and put its CA into
    /// the webhook configurations' caBundle (no manual certificate step). Serves from --cert-dir.
    #[arg(long, env = "SG_CERT_BOOTSTRAP", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub cert_bootstrap: bool,

    /// With --cert-bootstrap: the Secret (in --namespace) holding the CA and serving certificate.
    #[arg(long, env = "SG_CERT_SECRET", default_value = "stateful-guard-tls")]
    pub cert_secret: String,

    /// The Service name the certificate is for (NAME.NAMESPACE.svc): with --cert-bootstrap, the
    /// name it is issued for; with --tls-cert, the name it must be valid for.
    #[arg(long, env = "SG_SERVICE", default_value = "stateful-guard")]
    pub service: String,

    /// With --tls-cert: the name the certificate must be valid for (default
    /// SERVICE.NAMESPACE.svc, the name kube-apiserver verifies; empty: not checked). A pair that
    /// is expired, not yet valid or not valid for it is refused at start-up and on reload.
    #[arg(long, env = "SG_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    /// With --cert-bootstrap: the name of both webhook configurations to put the caBundle into.
    #[arg(long, env = "SG_WEBHOOK_NAME", default_value = "stateful-guard")]
    pub webhook_name: String,

    /// With --cert-bootstrap: where the certificate files are written (an emptyDir).
    #[arg(long, env = "SG_CERT_DIR", default_value = "/run/stateful-guard/tls")]
    pub cert_dir: PathBuf,

    /// With --cert-bootstrap: how often the Secret and the caBundles are checked (rotation
    /// happens 30 days before expiry).
    #[arg(long, env = "SG_CERT_CHECK_INTERVAL", default_value = "10m", value_parser = duration)]
    pub cert_check_interval: Duration,

    /// With a cluster connection: re-evaluate every StatefulSet and PVC that exists this often,
    /// and shortly after any of them changes; the results are served at /report and as
    /// `stateful_guard_existing_findings`. `0` turns it off (and with it the PVC watch and
    /// the change notifications it needs).
    #[arg(long, env = "SG_BACKGROUND_AUDIT", default_value = "10m", value_parser = duration_or_off)]
    pub background_audit: Duration,

    /// Resize the existing claims of a StatefulSet whose claim template grew (volume-growth
    /// recorded a larger size): the replica holding the Lease patches each Bound claim below its
    /// recorded size. Needs `get` and `patch` on PersistentVolumeClaims (the chart's
    /// volumeGrowth.enabled grants them).
    #[arg(long, env = "SG_GROW_VOLUMES")]
    pub grow_volumes: bool,

    /// How often certificate and policy files are checked for changes (Secret and ConfigMap
    /// volumes change by an atomic `..data` symlink swap, which polling always sees).
    #[arg(long, env = "SG_RELOAD_INTERVAL", default_value = "5s", value_parser = duration)]
    pub reload_interval: Duration,

    /// Policy file or directory. Default: policies/default.yaml when present, else the
    /// embedded default policy.
    #[arg(long, env = "SG_POLICY")]
    pub policy: Option<PathBuf>,

    /// Also load policies from ConfigMaps in --namespace labelled stateful-guard.io/policy=true.
    #[arg(long, env = "SG_POLICY_CONFIGMAPS")]
    pub policy_configmaps: bool,

    /// The webhook's own namespace: never evaluated, and where policy ConfigMaps live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "stateful-guard")]
    pub namespace: String,

    /// Whether to connect to a cluster for PodDisruptionBudgets, StorageClasses and Namespaces.
    #[arg(long, env = "SG_CLUSTER", value_enum, default_value = "auto")]
    pub cluster: ClusterMode,

    /// Answer for a review the webhook cannot interpret (unknown kind, undecodable object).
    #[arg(long, env = "SG_UNINTERPRETABLE", value_enum, default_value = "allow")]
    pub uninterpretable: Uninterpretable,

    /// Usernames of the StatefulSet controller (comma-separated). A PVC one of them creates
    /// for a StatefulSet of its namespace (`<template>-<statefulset>-<ordinal>`) gets exactly
    /// what the claim template says: the StatefulSet's admission already decided, opt-outs
    /// included.
    #[arg(
        long,
        env = "SG_STATEFULSET_CONTROLLERS",
        value_delimiter = ',',
        default_values_t = crate::admission::DEFAULT_STATEFULSET_CONTROLLERS.map(String::from)
    )]
    pub statefulset_controllers: Vec<String>,

    /// Largest accepted request body; larger ones get HTTP 413.
    #[arg(long, env = "SG_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Time a client has to send its request headers (TLS handshake included) before the
    /// connection is closed.
    #[arg(long, env = "SG_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,

    /// Time a client has to send the whole request body once its headers arrived; a client that
    /// announces a body and never sends it is answered 408 and its connection closed.
    #[arg(long, env = "SG_BODY_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub body_read_timeout: Duration,

    /// Reviews evaluated at once; one more is answered 503 at once (and counted), never queued
    /// without limit. A slot is taken once the body has arrived.
    #[arg(long, env = "SG_MAX_IN_FLIGHT", default_value_t = 32)]
    pub max_in_flight: usize,

    /// Bytes of memory reviews may reserve while they are read and evaluated (a sixth of it is
    /// the lane of bodies up to 64 KiB). A review reserves 24 times its body before it is
    /// decoded, and waits for room up to half its timeout (503 past it).
    #[arg(long, env = "SG_MEMORY_BUDGET", default_value_t = 96 * 1024 * 1024)]
    pub memory_budget: usize,

    /// Open connections; one more is closed at once (and counted).
    #[arg(long, env = "SG_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// Open connections from one client address; one more is closed at once (and counted), so
    /// that no client can hold every connection.
    #[arg(long, env = "SG_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 32)]
    pub max_connections_per_client: usize,

    /// Networks (CIDRs, comma-separated) whose clients --max-connections-per-client does not
    /// count: the apiserver's addresses, when known.
    #[arg(long, env = "SG_UNLIMITED_CLIENTS", value_delimiter = ',')]
    pub unlimited_clients: Vec<ipnet::IpNet>,

    /// A connection with no request for this long is closed (HTTP/2: GOAWAY). PINGs do not
    /// count as requests.
    #[arg(long, env = "SG_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,

    /// Also serve /healthz and /readyz over plain HTTP on this address (e.g. `0.0.0.0:8081` in a
    /// pod), for kubelet's probes: no client of the webhook port can starve them.
    #[arg(long, env = "SG_PROBE_LISTEN")]
    pub probe_listen: Option<std::net::SocketAddr>,

    /// Serve /metrics and /report on this address (HTTPS, the serving certificate) instead of
    /// the webhook port, each request authorized by the apiserver (TokenReview, then
    /// SubjectAccessReview of `get` on the path); without a cluster connection, loopback only.
    #[arg(long, env = "SG_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Require a client certificate signed by this CA (PEM) on the webhook port: only the
    /// apiserver, configured with one in its AdmissionConfiguration kubeconfig, gets through.
    /// The probes then need --probe-listen, and /metrics --metrics-listen.
    #[arg(long, env = "SG_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// With --client-ca: the client certificate's common name or a DNS name in it must be one
    /// of these (comma-separated).
    #[arg(
        long,
        env = "SG_CLIENT_NAMES",
        value_delimiter = ',',
        requires = "client_ca"
    )]
    pub client_names: Vec<String>,

    /// Answer reviews only at /mutate/TOKEN and /validate/TOKEN, TOKEN being one of this
    /// file's (1 to 4, whitespace-separated, each 32 to 253 of a-z 0-9, e.g. `openssl rand -hex
    /// 32`; two while one replaces the other), re-read every --reload-interval: the webhook
    /// configurations' paths must name one. --cert-bootstrap makes and sets one itself.
    #[arg(long, env = "SG_WEBHOOK_TOKEN_FILE", conflicts_with = "cert_bootstrap")]
    pub webhook_token_file: Option<PathBuf>,

    /// A client that reads nothing of its answer for this long loses its connection.
    #[arg(long, env = "SG_WRITE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub write_timeout: Duration,

    /// HTTP/2 streams per connection.
    #[arg(long, env = "SG_MAX_CONCURRENT_STREAMS", default_value_t = 32)]
    pub max_concurrent_streams: u32,

    /// After SIGTERM, how long /readyz reports not-ready before the listener closes, so that
    /// endpoints stop routing here.
    #[arg(long, env = "SG_SHUTDOWN_DELAY", default_value = "0s", value_parser = duration)]
    pub shutdown_delay: Duration,

    /// After the listener closes, how long in-flight requests may take to finish.
    #[arg(long, env = "SG_SHUTDOWN_GRACE", default_value = "25s", value_parser = duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "SG_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. `info` or `stateful_guard=debug`.
    #[arg(long, env = "SG_LOG", default_value = "info")]
    pub log_filter: String,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Name of the webhook's Service.
    #[arg(long, default_value = "stateful-guard")]
    pub service: String,
    /// Namespace of the webhook's Service.
    #[arg(long, default_value = "stateful-guard")]
    pub namespace: String,
    /// Directory to write ca.crt, ca.key, tls.crt and tls.key to (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Validity of the serving certificate, in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Validity of the CA certificate, in days.
    #[arg(long, default_value_t = 3650)]
    pub ca_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    Yaml,
    /// SARIF 2.1.0, for GitHub code scanning and other SARIF readers.
    Sarif,
    /// JUnit XML: a test case per object and rule, a failure per deny or warn.
    Junit,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Files or directories (recursive) of YAML/JSON manifests; `-` reads standard input.
    #[arg(
        short = 'f',
        long = "filename",
        num_args = 1..,
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub files: Vec<PathBuf>,
    /// Evaluate what a cluster already runs (its StatefulSets and PVCs, with its PDBs,
    /// StorageClasses, PriorityClasses and Namespaces), read-only, through the kubeconfig or the
    /// in-cluster config.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: every namespace instead of `-n`.
    #[arg(long, short = 'A', requires = "cluster")]
    pub all_namespaces: bool,
    /// Policy file or directory (default: the embedded default policy).
    #[arg(long, conflicts_with = "policy_configmaps")]
    pub policy: Option<PathBuf>,
    /// With --cluster: the policies in the cluster's policy ConfigMaps (labelled
    /// `stateful-guard.io/policy=true` in --policy-namespace), as the webhook serves them.
    #[arg(long, requires = "cluster")]
    pub policy_configmaps: bool,
    /// The namespace of the policy ConfigMaps (the webhook's own namespace).
    #[arg(long, default_value = "stateful-guard")]
    pub policy_namespace: String,
    /// Namespace of objects that name none; with --cluster, the namespace to check.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Report format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Print the input objects with the mutations applied (YAML), ready for `kubectl apply -f -`.
    #[arg(long, conflicts_with = "cluster")]
    pub fix: bool,
}

impl ServeArgs {
    /// The background audit's interval; `None` when it is off.
    pub fn background_audit_interval(&self) -> Option<Duration> {
        Some(self.background_audit).filter(|d| !d.is_zero())
    }

    /// The name a given --tls-cert must be valid for.
    pub fn tls_server_name(&self) -> String {
        self.tls_server_name
            .clone()
            .unwrap_or_else(|| format!("{}.{}.svc", self.service, self.namespace))
    }
}
