//! `node-local-storage`: a StatefulSet whose data dies with its node.
//!
//! Why: "don't depend on your nodes to live forever". Data on a `hostPath`, on a local
//! PersistentVolume (a StorageClass with `kubernetes.io/no-provisioner`) or in an `emptyDir`
//! used as the data directory is tied to one node: when that node is drained for good or
//! replaced, the pod cannot move (a local volume pins it, so it stays Pending) and the data is
//! gone. Workloads that replicate their own data across nodes (Cassandra on local NVMe) can be
//! listed in the policy and pass.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

use super::{ValidationRule, Context, Finding, Part, RuleId, display_name};
use crate::labels;
use crate::policy::action::ValidateAction;

/// The provisioner of statically created local PersistentVolumes.
const LOCAL_PROVISIONER: &str = "kubernetes.io/no-provisioner";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub action: ValidateAction,
    /// Mount paths where an `emptyDir` holds data (e.g. `/var/lib/postgresql/data`); none by
    /// default (`require-persistent-storage` covers a StatefulSet with no volume at all).
    pub data_paths: Vec<String>,
    /// Namespaces whose workloads replicate their own data: they pass.
    pub replicated_namespaces: Vec<String>,
    /// StatefulSets (by their labels) that replicate their own data: they pass.
    pub replicated_selectors: Vec<LabelSelector>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: ValidateAction::Warn,
            data_paths: Vec::new(),
            replicated_namespaces: Vec::new(),
            replicated_selectors: Vec::new(),
        }
    }
}

impl super::RuleConfig for Config {
    type Action = ValidateAction;
    fn action(&self) -> ValidateAction {
        self.action
    }
    fn check(&self) -> Result<(), String> {
        for (i, selector) in self.replicated_selectors.iter().enumerate() {
            labels::check(selector, &format!("replicatedSelectors[{i}]"))?;
        }
        Ok(())
    }
}

const LOST: &str = "when the node is replaced the pod cannot move and the data is gone";

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct NodeLocalStorage;

impl ValidationRule for NodeLocalStorage {
    type Config = Config;
    fn validate(sts: &StatefulSet, cfg: &Config, ctx: &Context) -> Vec<Finding> {
        let empty = Default::default();
        let own = sts.metadata.labels.as_ref().unwrap_or(&empty);
        if cfg.replicated_namespaces.iter().any(|n| n == ctx.namespace)
            || cfg.replicated_selectors.iter().any(|s| labels::matches(s, own))
        {
            return vec![];
        }
        let name = display_name(&sts.metadata, ctx.namespace);
        let mut findings = Vec::new();
        let pod = sts.spec.template.spec.as_ref();
        let on_the_node = |volume: &str, what: String| {
            Finding::new(
                RuleId::NodeLocalStorage,
                Part::Volume(volume.to_owned()),
                format!("volume {volume:?} of StatefulSet {name} is {what}; {LOST}"),
            )
        };
        for volume in pod.and_then(|p| p.volumes.as_ref()).into_iter().flatten() {
            if let Some(host) = &volume.host_path {
                findings.push(on_the_node(
                    &volume.name,
                    format!("a hostPath ({}): its data lives on one node's disk", host.path),
                ));
            }
            if volume.empty_dir.is_some() {
                let mounted_as_data = pod
                    .into_iter()
                    .flat_map(|p| p.containers.iter())
                    .flat_map(|c| c.volume_mounts.iter().flatten())
                    .filter(|m| m.name == volume.name)
                    .find(|m| cfg.data_paths.iter().any(|p| m.mount_path.trim_end_matches('/') == p.trim_end_matches('/')));
                if let Some(mount) = mounted_as_data {
                    findings.push(on_the_node(
                        &volume.name,
                        format!(
                            "an emptyDir mounted at the data path {}: the data lives on the node and goes with the pod",
                            mount.mount_path
                        ),
                    ));
                }
            }
        }
        if ctx.cluster.storage_classes_known() {
            for template in sts.spec.volume_claim_templates.iter().flatten() {
                let class = match template.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()) {
                    Some("") => continue,
                    Some(class) => ctx.cluster.storage_class(class),
                    None => ctx.cluster.default_storage_class(),
                };
                if let Some(class) = class.filter(|c| c.provisioner == LOCAL_PROVISIONER) {
                    let template_name = template.metadata.name.as_deref().unwrap_or("?");
                    findings.push(Finding::new(
                        RuleId::NodeLocalStorage,
                        Part::ClaimTemplate(template_name.to_owned()),
                        format!(
                            "claim template {template_name:?} of StatefulSet {name} uses local PersistentVolumes (StorageClass {:?}, {LOCAL_PROVISIONER}): each pod is pinned to the node holding its volume; {LOST} (list the workload in replicatedSelectors if it replicates its own data)",
                            class.metadata.name.as_deref().unwrap_or("?")
                        ),
                    ));
                }
            }
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Snapshot;
    use crate::rules::Operation;
    use crate::rules::testing::{basic_sts, ctx, sts};

    fn with_volumes(volumes: &str) -> StatefulSet {
        sts(&format!(
            r#"
metadata: {{name: db, labels: {{app: db}}}}
spec:
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers: [{{name: db, image: db, volumeMounts: [{{name: data, mountPath: /var/lib/db}}]}}]
      volumes: [{volumes}]
"#
        ))
    }

    fn subjects(s: &StatefulSet, cfg: &Config, cluster: &Snapshot) -> Vec<String> {
        NodeLocalStorage::validate(s, cfg, &ctx(Operation::Create, cluster))
            .into_iter()
            .map(|f| f.part.to_string())
            .collect()
    }

    #[test]
    fn host_paths_and_empty_dirs_at_data_paths_are_findings() {
        let cluster = Snapshot::unknown();
        let host = with_volumes("{name: data, hostPath: {path: /mnt/db}}");
        assert_eq!(subjects(&host, &Config::default(), &cluster), ["volume/data"]);
        let empty = with_volumes("{name: data, emptyDir: {}}");
        assert!(subjects(&empty, &Config::default(), &cluster).is_empty(), "no data path listed");
        let cfg = Config {
            data_paths: vec!["/var/lib/db/".into()],
            ..Config::default()
        };
        assert_eq!(subjects(&empty, &cfg, &cluster), ["volume/data"]);
        let replicated = Config {
            replicated_selectors: vec![serde_yaml_ng::from_str("matchLabels: {app: db}").unwrap()],
            ..Config::default()
        };
        assert!(subjects(&host, &replicated, &cluster).is_empty());
        let namespace = Config {
            replicated_namespaces: vec!["default".into()],
            ..Config::default()
        };
        assert!(subjects(&host, &namespace, &cluster).is_empty());
    }

    #[test]
    fn claim_templates_on_local_volumes_are_findings_when_the_class_is_known() {
        let local: k8s_openapi::api::storage::v1::StorageClass = serde_yaml_ng::from_str(
            "metadata: {name: local, annotations: {storageclass.kubernetes.io/is-default-class: 'true'}}\nprovisioner: kubernetes.io/no-provisioner",
        )
        .unwrap();
        let cluster = Snapshot::known(vec![], vec![local], vec![]);
        let f = NodeLocalStorage::validate(&basic_sts(), &Config::default(), &ctx(Operation::Create, &cluster));
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("pinned to the node"), "{}", f[0].message);
        assert!(NodeLocalStorage::validate(&basic_sts(), &Config::default(), &ctx(Operation::Create, &Snapshot::unknown())).is_empty());
    }
}
