//! Logging setup: text or JSON, filtered by an EnvFilter expression.
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::cli::{LogArgs, LogFormat};
use crate::cluster::health::{KUBE_CLIENT_TARGET, KubeFailures};

pub fn init(args: &LogArgs) {
    // kube's client logs an ERROR for every failed API attempt it retries; an outage is
    // reported by `cluster::health` instead, once when it starts and once when it ends.
    let quiet = format!("{KUBE_CLIENT_TARGET}=off");
    let filter =
        EnvFilter::try_new(format!("{},{quiet}", args.log_filter)).unwrap_or_else(|error| {
            eprintln!(
                "invalid --log-filter {:?} ({error}); using info",
                args.log_filter
            );
            EnvFilter::new(format!("info,{quiet}"))
        });
    let output = fmt::layer().with_writer(std::io::stderr);
    let output = match args.log_format {
        LogFormat::Json => output.json().flatten_event(true).boxed(),
        LogFormat::Text => output.boxed(),
    };
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(
            KubeFailures
                .with_filter(Targets::new().with_target(KUBE_CLIENT_TARGET, tracing::Level::ERROR)),
        )
        .init();
}
