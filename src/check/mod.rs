//! `stateful-guard check`: the webhook's engine over manifests, offline, or over what a cluster
//! runs (`--cluster`).
//!
//! Each StatefulSet and PVC is evaluated as a CREATE after the defaults kube-apiserver would
//! apply, first by the mutation rules, then (on the mutated object, as the validating webhook
//! sees it) by the validation rules. PodDisruptionBudgets, StorageClasses, PriorityClasses and
//! Namespaces in the input are the cluster state: the input is taken as the whole of its
//! namespaces' PDBs, and StorageClass (PriorityClass) questions are answered only when the input
//! holds StorageClasses (PriorityClasses).
//!
//! The parts: [`input`] (reading documents, the cluster state they describe), [`evaluate`]
//! (the two webhook passes per object), [`report`] (the verdicts and their rendering) and
//! [`cluster`] (`check --cluster`: the objects a cluster already runs).
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::{CheckArgs, OutputFormat};
use crate::policy::PolicySet;
use crate::policy::source::{FileSource, PolicyStore};

pub mod ci;
pub mod cluster;
pub mod evaluate;
pub mod input;
pub mod report;
pub mod yaml;

pub use evaluate::{Checked, check};
pub use input::{
    Document, InputError, ObjectAt, parse_stream, read_inputs, read_stream, snapshot, snapshot_of,
};
pub use report::{ObjectReport, Report, ReportFinding, ReportMutation, Summary, render_text};

/// The policies of `--policy` (a file or a directory), or the embedded default; never applied to
/// the namespaces of `always_exempt`.
fn load_policies(
    path: Option<&Path>,
    always_exempt: Vec<String>,
) -> Result<Arc<PolicySet>, InputError> {
    let Some(path) = path else {
        return PolicySet::embedded_default(always_exempt)
            .map(Arc::new)
            .map_err(InputError::Policy);
    };
    // The same loader as `serve --policy`: a file or a directory.
    let store = PolicyStore::new(always_exempt, Arc::new(crate::metrics::Metrics::new()));
    let mut source = FileSource::new(path.to_owned());
    if let Some(error) = source.sync(&store).into_iter().next() {
        return Err(InputError::Policy(error));
    }
    let set = store.current();
    if set.is_empty() {
        return Err(InputError::NoPolicy(path.to_owned()));
    }
    Ok(set)
}

/// `check --cluster`: lists what the cluster runs, then evaluates it as `check -f` does.
fn check_cluster(args: &CheckArgs) -> anyhow::Result<Checked> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = cluster::client().await?;
        let policies = if args.policy_configmaps {
            cluster::policies(&client, &args.policy_namespace).await?
        } else {
            load_policies(args.policy.as_deref(), vec![args.policy_namespace.clone()])?
        };
        let scope = if args.all_namespaces {
            cluster::Scope::All
        } else {
            cluster::Scope::Namespace(args.namespace.clone())
        };
        let listed = cluster::read(&client, &scope).await?;
        Ok(evaluate::evaluate_all(
            &listed.documents,
            &policies,
            &args.namespace,
            &listed.cluster,
            evaluate::Origin::Cluster,
        ))
    })
}

/// `check -f`: every document that reads is evaluated, whatever the others do.
fn check_files(args: &CheckArgs) -> Result<Checked, InputError> {
    let policies = load_policies(args.policy.as_deref(), vec![])?;
    let (docs, mut errors) = read_inputs(&args.files);
    let mut checked = check(&docs, &policies, &args.namespace);
    errors.append(&mut checked.errors);
    checked.errors = errors;
    Ok(checked)
}

/// `stateful-guard check`: exit 0 when nothing enforced is violated, 1 when something is, 2 on
/// usage or input errors. Input errors are reported after everything that did evaluate.
pub fn run(args: &CheckArgs) -> ExitCode {
    let result = if args.cluster {
        check_cluster(args)
    } else {
        check_files(args).map_err(anyhow::Error::from)
    };
    let Checked {
        report,
        fixed,
        errors,
    } = match result {
        Ok(r) => r,
        Err(error) => {
            // Each error's message includes its cause.
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if args.fix {
        for value in &fixed {
            print!("---\n{}", yaml::write(value));
        }
        eprint!("{}", render_text(&report));
    } else {
        let rendered = match args.output {
            OutputFormat::Text => Ok(render_text(&report)),
            OutputFormat::Json => serde_json::to_string_pretty(&report)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string()),
            OutputFormat::Yaml => serde_yaml_ng::to_string(&report).map_err(|e| e.to_string()),
            OutputFormat::Sarif => ci::sarif(&report, &errors),
            OutputFormat::Junit => ci::junit(&report, &errors),
        };
        match rendered {
            Ok(text) => print!("{text}"),
            Err(error) => {
                eprintln!("error: cannot render the report: {error}");
                return ExitCode::from(2);
            }
        }
    }
    for error in &errors {
        eprintln!("error: {error}");
    }
    if !errors.is_empty() {
        eprintln!(
            "error: {} document(s) could not be evaluated; every other one is reported above",
            errors.len()
        );
        return ExitCode::from(2);
    }
    let enforced_violation = report.objects.iter().any(|o| !o.allowed);
    if enforced_violation {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
