#![forbid(unsafe_code)]
use clap::Parser;
use stateful_guard::cli::{Cli, Command};

/// mimalloc instead of glibc's allocator: a review's decode makes hundreds of small allocations,
/// which mimalloc serves from per-thread free lists. Built without transparent huge pages
/// (`no_thp`: they keep idle memory resident), and the image sets `MIMALLOC_PURGE_DELAY=10`
/// (Dockerfile) so freed pages go back soon, but not on every free. docs/performance.md has the
/// measurements behind both.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let _logs = stateful_guard::telemetry::init(&args.log);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(stateful_guard::server::run(*args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "stateful-guard stopped");
                    eprintln!("error: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Certs(args) => match stateful_guard::certs::run(&args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Check(args) => stateful_guard::check::run(&args),
    }
}
