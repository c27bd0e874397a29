//! stateful-guard: an admission webhook that makes stateful workloads safe by default.
//!
//! The layout follows the path of a request:
//!
//! - [`server`]: the HTTPS edge (rustls, certificate reload, routes, health, graceful shutdown)
//! - [`admission`]: the AdmissionReview protocol (decode, dispatch by kind, build the response)
//! - [`engine`]: runs the rules of the applicable policy over one object and collects the outcome
//! - [`rules`]: one module per rule, each a pure function of (object, parameters, cluster view)
//! - [`policy`]: the policy model, its compilation, and its loading from files and ConfigMaps
//! - [`cluster`]: the read-only view of cluster state (reflector caches, or a static snapshot)
//! - [`certs`]: serving-certificate generation with rcgen
//! - [`check`]: the `check` command (the same engine over manifests, or what a cluster runs)
//! - [`audit`]: the background audit in `serve` (the same engine over what the caches hold)
//! - [`grow`]: with `serve --grow-volumes`, the resize of existing claims after a template grew
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod certs;
pub mod check;
pub mod claim_sizes;
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod grow;
pub mod labels;
pub mod metrics;
pub mod policy;
pub mod rules;
pub mod server;
pub mod telemetry;

/// Annotation and label prefix of everything stateful-guard reads or writes on objects.
pub const ANNOTATION_PREFIX: &str = "stateful-guard.io/";
