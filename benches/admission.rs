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

/// The typed decode alone (the body into kube's `AdmissionReview` of k8s-openapi's object, as the
/// webhook decodes it, and dropped), beside a generic parse of the same body into a
/// `serde_json::Value` (what the no-op webhook of `scripts/load` does): the floor under the
/// hot path's time while its objects are k8s-openapi's structs.
fn decode(c: &mut Criterion) {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use stateful_guard::admission::decode::{Review, from_slice};
    for (name, _) in common::CASES {
        let body = common::fixture(name);
        let typed: fn(&[u8]) -> bool = if name.starts_with("pvc-") {
            |body| from_slice::<Review<PersistentVolumeClaim>>(body).is_ok()
        } else {
            |body| from_slice::<Review<StatefulSet>>(body).is_ok()
        };
        assert!(typed(&body), "{name} decodes");
        c.bench_function(&format!("typed decode alone, {name}"), |b| {
            b.iter(|| typed(std::hint::black_box(&body)))
        });
        c.bench_function(&format!("generic parse (the no-op's), {name}"), |b| {
            b.iter(|| {
                serde_json::from_slice::<serde_json::Value>(std::hint::black_box(&body)).is_ok()
            })
        });
    }
}

/// One review's log event, in its span (the fields `server::routes` logs for a patched PVC),
/// written as a JSON line to a sink: by tracing-subscriber's JSON format, and by the one the
/// binary uses (`telemetry::json`), which writes the same text.
fn log_event(c: &mut Criterion) {
    use tracing_subscriber::fmt::{self, format::JsonFields};
    use tracing_subscriber::layer::SubscriberExt;
    let messages: Vec<String> = Vec::new();
    let emit = || {
        let span = tracing::info_span!("review", endpoint = "mutate");
        let _entered = span.enter();
        tracing::info!(
            uid = "17692271-d8b9-4d46-b037-492b2cc5a408",
            kind = "PersistentVolumeClaim",
            namespace = "default",
            name = "nosc-with-default",
            operation = "CREATE",
            decision = "patched",
            policy = Some("default"),
            mode = Some("enforce"),
            skipped = None::<&str>,
            mutations = Some("fast-storage-class"),
            findings = Some(""),
            messages = Some(tracing::field::debug(&messages)),
            "admission review"
        );
    };
    let theirs = fmt::layer()
        .json()
        .flatten_event(true)
        .with_span_list(false)
        .with_writer(std::io::sink);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(theirs), || {
        c.bench_function("log event, tracing-subscriber's JSON format", |b| {
            b.iter(emit)
        });
    });
    let ours = fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(stateful_guard::telemetry::json::JsonLines)
        .with_writer(std::io::sink);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(ours), || {
        c.bench_function("log event, stateful-guard's JSON format", |b| b.iter(emit));
    });
}

criterion_group!(benches, bench, decode, log_event);
criterion_main!(benches);

/// The allocator the binary ships with (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
