//! `octomil`: the operator CLI. Thin: the commands live in `octomil_cloud::cli`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use octomil_cloud::cli::{self, Cli, Out};
use octomil_common::{Clock, SystemClock};

fn main() -> ExitCode {
    // ring is the only provider compiled in; Err only means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Usage errors exit 2 and --help/--version exit 0, printed by clap.
    let args = Cli::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; a command's own failure is printed here and becomes its exit code,
/// while `Err` is left for failures of the process itself.
fn run(args: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    let mut out = Out::new(
        &mut stdout,
        &mut stderr,
        args.global.json,
        SystemClock.now_secs(),
    );
    let result = runtime.block_on(cli::run(args, &mut out));
    stdout.flush().context("writing to stdout")?;
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            // Best effort: if stderr itself is gone there is no one left to tell.
            let _ = writeln!(stderr, "error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}
