//! The hot path, body in to body out: decode the AdmissionReview, evaluate, encode the response.
//! `cargo bench --bench admission`.
use criterion::{Criterion, criterion_group, criterion_main};

mod common;

fn bench(c: &mut Criterion) {
    let hot = common::HotPath::new();
    for (name, phase) in common::CASES {
        let body = common::fixture(name);
        c.bench_function(name, |b| b.iter(|| hot.review(phase, &body)));
    }
    // With 10,000 PDBs cached in 2,000 namespaces: what a review that reads its namespace's
    // PDBs or StatefulSets costs in a large cluster.
    let hot = common::HotPath::at_scale();
    for (name, phase) in common::AT_SCALE {
        let body = common::fixture(name);
        c.bench_function(&format!("{name} with 10,000 PDBs cached"), |b| {
            b.iter(|| hot.review(phase, &body))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// The allocator the binary ships with (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
