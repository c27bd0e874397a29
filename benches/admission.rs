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
}

criterion_group!(benches, bench);
criterion_main!(benches);
