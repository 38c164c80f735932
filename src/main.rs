//! The `provisioner` binary: parses arguments, sets up logging, runs the command, and turns the
//! outcome into an exit code (0 success, 1 invalid input such as a bad catalog, 2 usage or I/O
//! error), printing the whole cause chain of an error.

use std::process::ExitCode;

use provisioner::cli::{self, Cli};

fn main() -> ExitCode {
    bound_malloc_arenas();
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

/// glibc gives threads malloc arenas of their own, up to eight per core, and keeps what each
/// freed: the database drivers' threads and the runtime's would each hold a listing's worth of
/// freed memory, making the daemon's resident size vary from run to run. Two arenas keep it
/// steady (as `MALLOC_ARENA_MAX=2` does, which still overrides this).
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called before any other
        // thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
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
