//! Parses the command line, runs the command, and is the one place that reports errors.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    nmt::ops::cpu::keep_freed_memory();
    let cli = nmt::cli::Cli::parse();
    match nmt::cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (e.g. `nmt translate ... | head -1`) is not a failure.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            nmt::progress::error_line(format_args!("nmt: error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}
