//! The hot path in a loop, for `scripts/profile`: one captured review, request body to response
//! body (decode, evaluate, encode), N times, with the embedded default policy.
//!
//!   cargo run --release --example hot_path -- REVIEW.json [N]
#[path = "../benches/common/mod.rs"]
#[allow(dead_code)]
mod common;

/// The allocator the binary ships with (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .unwrap_or_else(|| "statefulset-zookeeper-create.mutating.json".to_owned());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(200);
    let (_, phase) = common::CASES
        .iter()
        .find(|(case, _)| *case == name)
        .copied()
        .unwrap_or((
            "",
            if name.contains("validating") {
                stateful_guard::engine::Phase::Validate
            } else {
                stateful_guard::engine::Phase::Mutate
            },
        ));
    let body = common::fixture(&name);
    let hot = common::HotPath::new();
    let mut bytes = 0;
    for _ in 0..n {
        bytes += hot.review(phase, &body).len();
    }
    println!("{n} reviews of {name}: {bytes} response bytes");
}
