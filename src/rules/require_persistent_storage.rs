//! `require-persistent-storage`: a database's data directory is on a PersistentVolume.
//!
//! Why: data in an `emptyDir` or in the container's own filesystem is lost whenever the pod is
//! rescheduled. But a StatefulSet is also how charts run tiers that hold no data and want a
//! stable name (Elasticsearch coordinating and ingest nodes, Pulsar brokers and proxies, core
//! NATS, a MongoDB arbiter): for those, no volume is the right design, and a warning is noise.
//!
//! So the rule reports data that would really be lost: a container running a known database
//! image (by image name, see `DATABASES`) whose data directory is on an `emptyDir` or on no
//! volume at all, unless its role says it keeps no data (an Elasticsearch or OpenSearch node
//! whose roles include neither data nor master, a MongoDB arbiter, a Redis sentinel). A
//! StatefulSet with claim templates or a PVC volume is not looked at. An unknown image is not
//! guessed at: `node-local-storage`'s `dataPaths` names data paths of your own.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Container;

use super::{ValidationRule, Context, Finding, Part, RuleId, display_name, probes};

/// Only an action (default `warn`).
pub type Config = super::ActionOnly<super::WarnByDefault>;

/// Database images (the last part of the image's repository, without tag or digest) and their
/// data directories, as their official and Bitnami images set them.
const DATABASES: &[(&[&str], &[&str])] = &[
    (
        &["postgres", "postgresql", "postgresql-repmgr", "postgis", "timescaledb"],
        &["/var/lib/postgresql/data", "/bitnami/postgresql"],
    ),
    (
        &["mysql", "mysql-server", "mariadb", "mariadb-galera", "percona-server"],
        &["/var/lib/mysql", "/bitnami/mysql", "/bitnami/mariadb"],
    ),
    (
        &["mongo", "mongodb", "mongodb-sharded"],
        &["/data/db", "/bitnami/mongodb"],
    ),
    (
        &["redis", "redis-cluster", "valkey", "valkey-cluster", "redis-stack-server"],
        &["/data", "/bitnami/redis/data", "/bitnami/valkey/data"],
    ),
    (&["cassandra"], &["/var/lib/cassandra", "/bitnami/cassandra"]),
    (
        &["elasticsearch", "opensearch"],
        &[
            "/usr/share/elasticsearch/data",
            "/usr/share/opensearch/data",
            "/bitnami/elasticsearch/data",
            "/bitnami/opensearch/data",
        ],
    ),
    (
        &["zookeeper"],
        &["/data", "/datalog", "/var/lib/zookeeper", "/bitnami/zookeeper"],
    ),
    (&["rabbitmq"], &["/var/lib/rabbitmq", "/bitnami/rabbitmq/mnesia"]),
    (&["etcd"], &["/var/lib/etcd", "/bitnami/etcd"]),
    (
        &["kafka", "cp-kafka"],
        &["/var/lib/kafka", "/bitnami/kafka"],
    ),
    (
        &["clickhouse", "clickhouse-server"],
        &["/var/lib/clickhouse", "/bitnami/clickhouse"],
    ),
    (&["qdrant"], &["/qdrant/storage"]),
    (&["cockroach"], &["/cockroach/cockroach-data"]),
    (&["neo4j"], &["/data"]),
    (&["influxdb"], &["/var/lib/influxdb", "/var/lib/influxdb2"]),
];

/// The image's name: `docker.io/bitnami/postgresql:16@sha256:...` is `postgresql`.
fn image_name(image: &str) -> String {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(':').next().unwrap_or(last).to_ascii_lowercase()
}

/// The data directories of the database `c` runs, when it runs one that keeps data.
fn data_directories(c: &Container) -> Option<Vec<String>> {
    let name = image_name(c.image.as_deref().unwrap_or(""));
    let (_, dirs) = DATABASES.iter().find(|(names, _)| names.contains(&name.as_str()))?;
    if keeps_no_data(c) {
        return None;
    }
    let mut dirs: Vec<String> = dirs.iter().map(|d| (*d).to_owned()).collect();
    // PostgreSQL's images honour PGDATA.
    if let Some(pgdata) = env(c, "PGDATA") {
        dirs.push(pgdata.trim_end_matches('/').to_owned());
    }
    Some(dirs)
}

fn env<'c>(c: &'c Container, name: &str) -> Option<&'c str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// What the container's own settings say about its role: a node that keeps no data.
fn keeps_no_data(c: &Container) -> bool {
    // Elasticsearch and OpenSearch roles (`node.roles`, the Bitnami images' variables).
    let roles = ["node.roles", "ELASTICSEARCH_NODE_ROLES", "OPENSEARCH_NODE_ROLES"]
        .iter()
        .find_map(|n| env(c, n));
    if let Some(roles) = roles
        && !["data", "master", "cluster_manager"]
            .iter()
            .any(|r| roles.contains(r))
    {
        return true;
    }
    if ["ELASTICSEARCH_NODE_TYPE", "OPENSEARCH_NODE_TYPE"]
        .iter()
        .filter_map(|n| env(c, n))
        .any(|t| matches!(t, "coordinating" | "ingest"))
    {
        return true;
    }
    // A MongoDB arbiter votes and holds no data.
    if env(c, "MONGODB_REPLICA_SET_MODE") == Some("arbiter") {
        return true;
    }
    // A Redis sentinel runs from the Redis image and keeps no data.
    c.command
        .iter()
        .chain(c.args.iter())
        .flatten()
        .any(|a| a.contains("sentinel"))
}

/// Whether a mount at `mount` holds `dir`.
fn covers(mount: &str, dir: &str) -> bool {
    let mount = mount.trim_end_matches('/');
    dir == mount || dir.starts_with(&format!("{mount}/")) || mount.starts_with(&format!("{dir}/"))
}

/// The rule, as the registry in `rules/mod.rs` lists it.
pub struct RequirePersistentStorage;

impl ValidationRule for RequirePersistentStorage {
    type Config = Config;
    fn validate(sts: &StatefulSet, _cfg: &Config, ctx: &Context) -> Vec<Finding> {
        let spec = &sts.spec;
        let pod = spec.template.spec.as_ref();
        let has_templates = spec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|v| !v.is_empty());
        let has_pvc_volume = pod
            .and_then(|p| p.volumes.as_ref())
            .is_some_and(|vols| vols.iter().any(|v| v.persistent_volume_claim.is_some()));
        if has_templates || has_pvc_volume {
            return vec![];
        }
        let name = display_name(&sts.metadata, ctx.namespace);
        let volumes = pod.and_then(|p| p.volumes.as_deref()).unwrap_or_default();
        let mut findings: Vec<Finding> = Vec::new();
        for c in probes::long_running_containers(sts) {
            let Some(dirs) = data_directories(c) else {
                continue;
            };
            let mounts: Vec<_> = c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| dirs.iter().any(|d| covers(&m.mount_path, d)))
                .collect();
            if mounts.is_empty() {
                findings.push(Finding::new(
                    RuleId::RequirePersistentStorage,
                    Part::Container(c.name.clone()),
                    format!(
                        "container {:?} of StatefulSet {name} runs {} with its data directory ({}) on the container's own filesystem: the data is lost whenever the pod is rescheduled; add spec.volumeClaimTemplates and mount the claim there",
                        c.name,
                        image_name(c.image.as_deref().unwrap_or("")),
                        dirs.join(" or ")
                    ),
                ));
                continue;
            }
            for m in mounts {
                let on_empty_dir = volumes
                    .iter()
                    .any(|v| v.name == m.name && v.empty_dir.is_some());
                let part = Part::Volume(m.name.clone());
                if on_empty_dir && !findings.iter().any(|f| f.part == part) {
                    findings.push(Finding::new(
                        RuleId::RequirePersistentStorage,
                        part,
                        format!(
                            "volume {:?} of StatefulSet {name} is an emptyDir holding the data directory of container {:?} ({}): the data is lost whenever the pod is rescheduled; replace it with a volumeClaimTemplate of the same name",
                            m.name, c.name, m.mount_path
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
    use crate::rules::testing::{basic_sts, ctx, sts_with_pod};

    fn findings(sts: &StatefulSet) -> Vec<Finding> {
        let cluster = Snapshot::unknown();
        RequirePersistentStorage::validate(sts, &Config::default(), &ctx(Operation::Create, &cluster))
    }

    #[test]
    fn a_database_on_an_empty_dir_or_its_own_filesystem_is_found() {
        let f = findings(&sts_with_pod("cache", r#"
volumes: [{name: data, emptyDir: {}}]
containers:
- {name: redis, image: "redis:7", volumeMounts: [{name: data, mountPath: /data}]}
- {name: sentinel, image: "redis:7", command: [redis-sentinel], volumeMounts: [{name: data, mountPath: /data}]}
"#));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].part, Part::Volume("data".into()));
        assert!(f[0].message.contains("emptyDir holding the data directory"));
        let f = findings(&sts_with_pod("pg", r#"
containers: [{name: pg, image: "docker.io/library/postgres:16@sha256:abc"}]
"#));
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("own filesystem"), "{}", f[0].message);
    }

    #[test]
    fn tiers_that_keep_no_data_pass() {
        for container in [
            // An Elasticsearch coordinating node.
            r#"{name: es, image: "elasticsearch:8", env: [{name: node.roles, value: ""}]}"#,
            r#"{name: es, image: "bitnami/elasticsearch:8", env: [{name: ELASTICSEARCH_NODE_ROLES, value: "ingest"}], volumeMounts: [{name: data, mountPath: /bitnami/elasticsearch/data}]}"#,
            // A MongoDB arbiter.
            r#"{name: arbiter, image: "bitnami/mongodb:7", env: [{name: MONGODB_REPLICA_SET_MODE, value: arbiter}]}"#,
            // A broker or a proxy: no database image.
            r#"{name: broker, image: "apachepulsar/pulsar:3", volumeMounts: [{name: data, mountPath: /data}]}"#,
            r#"{name: nats, image: "nats:2.10"}"#,
        ] {
            let f = findings(&sts_with_pod(
                "tier",
                &format!("volumes: [{{name: data, emptyDir: {{}}}}]\ncontainers: [{container}]"),
            ));
            assert!(f.is_empty(), "{container}: {f:?}");
        }
    }

    #[test]
    fn claim_templates_or_pvc_volumes_pass() {
        let cluster = Snapshot::unknown();
        assert!(
            RequirePersistentStorage::validate(
                &basic_sts(),
                &Config::default(),
                &ctx(Operation::Create, &cluster)
            )
            .is_empty()
        );
        let f = findings(&sts_with_pod("db", r#"
volumes: [{name: data, persistentVolumeClaim: {claimName: shared}}]
containers: [{name: c, image: postgres, volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]}]
"#));
        assert!(f.is_empty());
    }
}
