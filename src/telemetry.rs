//! Logging setup: text or JSON, filtered by an EnvFilter expression.
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::cli::{LogArgs, LogFormat};
use crate::cluster::health::{KUBE_CLIENT_TARGET, KubeFailures};

/// Lines the log writer had to drop because its buffer was full (it never blocks a request).
static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Log lines dropped so far.
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, |c| c.dropped_lines())
}

/// Lines the log buffer holds while its reader is slow. A review's event is bounded (a few KiB
/// at most), so a stalled reader costs at most tens of MiB (tracing-appender's default, 128k
/// lines, could reach the pod's memory limit).
pub const BUFFERED_LINES: usize = 8_192;

/// Sets up logging. Lines go to stderr through a buffered writer on its own thread, so a slow
/// log reader never delays a response: when its buffer ([`BUFFERED_LINES`]) is
/// full, lines are dropped and counted (`stateful_guard_log_lines_dropped`). Keep the guard until exit: dropping it
/// flushes what is buffered.
pub fn init(args: &LogArgs) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
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
    let output = fmt::layer().with_writer(writer);
    let output = match args.log_format {
        // The current span only (`"span":{"endpoint":..,"name":"review"}`): the list of every
        // enclosing span repeated it on each line.
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => output.boxed(),
    };
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(
            KubeFailures
                .with_filter(Targets::new().with_target(KUBE_CLIENT_TARGET, tracing::Level::ERROR)),
        )
        .init();
    guard
}
