//! The hot path, body in to body out: decode the AdmissionReview, evaluate, encode the response.
//! `cargo bench --bench admission`.
use criterion::{Criterion, criterion_group, criterion_main};
use stateful_guard::admission::{Reviewer, Uninterpretable, response};
use stateful_guard::cluster::Snapshot;
use stateful_guard::engine::Phase;
use stateful_guard::policy::PolicySet;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../shared/fixtures/admission-reviews/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let policies = PolicySet::embedded_default(vec!["stateful-guard".into()]).unwrap();
    let cluster = Snapshot::known(vec![], vec![], vec![]);
    let reviewer = Reviewer {
        policies: &policies,
        cluster: &cluster,
        live: None,
        uninterpretable: Uninterpretable::Allow,
    };
    for (name, phase) in [
        ("statefulset-zookeeper-create.mutating.json", Phase::Mutate),
        (
            "statefulset-zookeeper-update.validating.json",
            Phase::Validate,
        ),
        (
            "pvc-create-default-class-filled.mutating.json",
            Phase::Mutate,
        ),
    ] {
        let body = fixture(name);
        c.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let (review, _) = reviewer.review(phase, &body).await.unwrap();
                    response::to_wire(review).unwrap()
                })
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
