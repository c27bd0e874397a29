//! Logging setup: text or JSON ([`json`]), filtered by an EnvFilter expression, written by
//! [`batch`].
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

pub mod batch;
pub mod json;

use crate::cli::{LogArgs, LogFormat};
use crate::cluster::health::{KUBE_CLIENT_TARGET, KubeFailures};
pub use batch::FlushGuard;

/// Lines the log writer had to drop because its batch was full (it never blocks a request).
static DROPPED: std::sync::OnceLock<batch::BatchWriter> = std::sync::OnceLock::new();

/// Log lines dropped so far.
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, |w| w.dropped_lines())
}

/// The most bytes of log lines held while their reader is slow. A review's event is a few KiB
/// at most, so this holds about a thousand reviews' lines; past it, lines are dropped.
pub const BUFFERED_BYTES: usize = 4 * 1024 * 1024;

/// Sets up logging. Lines go to stderr through [`batch`], written by a thread of its own, so
/// that a slow log reader never delays a response: past [`BUFFERED_BYTES`], lines are dropped
/// and counted (`stateful_guard_log_lines_dropped`). Keep the guard until exit: dropping it
/// writes what is buffered. Without a thread for the writer, lines go to stderr directly.
pub fn init(args: &LogArgs) -> Option<FlushGuard> {
    let (writer, guard) = match batch::spawn(std::io::stderr(), BUFFERED_BYTES) {
        Ok((writer, guard)) => {
            let _ = DROPPED.set(writer.clone());
            (Output::Batch(writer), Some(guard))
        }
        Err(error) => {
            eprintln!("cannot start the log writer's thread ({error}); logging to stderr directly");
            (Output::Stderr, None)
        }
    };
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
            .fmt_fields(fmt::format::JsonFields::new())
            .event_format(json::JsonLines)
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

/// Where log lines go: the batch, or stderr when its thread could not start.
enum Output {
    Batch(batch::BatchWriter),
    Stderr,
}

impl<'a> fmt::MakeWriter<'a> for Output {
    type Writer = fmt::writer::EitherWriter<batch::Line<'a>, std::io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Output::Batch(writer) => fmt::writer::EitherWriter::A(writer.make_writer()),
            Output::Stderr => fmt::writer::EitherWriter::B(std::io::stderr()),
        }
    }
}
