//! The `provisioner` binary: parses arguments, sets up logging, runs the command, and turns the
//! outcome into an exit code (0 success, 1 invalid input such as a bad catalog, 2 usage or I/O
//! error), printing the whole cause chain of an error.

use std::process::ExitCode;

use provisioner::cli::{self, Cli};

fn main() -> ExitCode {
    provisioner::memory::bound_arenas();
    let cli = match Cli::parse_args() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(message) = cli::init_logging(cli.log_format) {
        eprintln!("error: {message}");
        return ExitCode::from(cli::EXIT_USAGE);
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            cli::report_error(&e);
            ExitCode::from(cli::EXIT_USAGE)
        }
    }
}

/// `provisioner catalog show | head` closes stdout early; that is not an error worth printing.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
