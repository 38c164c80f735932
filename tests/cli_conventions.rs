//! The conventions an operator expects of a command-line tool, through the real binary: help
//! that lists the environment, README's synopsis kept true, completions, man pages, the
//! systemd unit and its notify protocol, log filters, colours and machine-readable errors.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_provisioner"));
    c.env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .env_remove("NO_COLOR");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run provisioner")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every leaf command, as words (`["instances", "list"]`).
fn leaves(cmd: &clap::Command, prefix: &[String], acc: &mut Vec<Vec<String>>) {
    let mut any = false;
    for sub in cmd.get_subcommands() {
        any = true;
        let mut p = prefix.to_vec();
        p.push(sub.get_name().to_owned());
        leaves(sub, &p, acc);
    }
    if !any && !prefix.is_empty() {
        acc.push(prefix.to_vec());
    }
}

#[test]
fn every_command_lists_the_environment_it_reads() {
    let cmd = provisioner::cli::command();
    let mut all = Vec::new();
    leaves(&cmd, &[], &mut all);
    let reads_database = |c: &[String]| {
        matches!(
            c[0].as_str(),
            "run" | "migrate" | "plan" | "tasks" | "instances" | "orphans" | "tokens"
        )
    };
    let reads_key = |c: &[String]| {
        matches!(
            c[0].as_str(),
            "run" | "migrate" | "demo" | "tasks" | "instances" | "orphans"
        )
    };
    let reads_tokens = |c: &[String]| {
        matches!(c[0].as_str(), "run" | "plan" | "catalog" | "orphans")
            || c == ["instances", "import"]
            || c == ["instances", "adopt"]
    };
    for c in &all {
        if matches!(c[0].as_str(), "completions" | "man") {
            continue;
        }
        let mut args: Vec<&str> = c.iter().map(String::as_str).collect();
        args.push("--help");
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{c:?}");
        let help = out(&o);
        for (needed, var) in [
            (reads_database(c), "DATABASE_URL"),
            (reads_database(c), "PGSSLMODE"),
            (reads_key(c), "PROVISIONER_SECRET_KEY_FILE"),
            (reads_tokens(c), "HCLOUD_TOKEN"),
            (true, "RUST_LOG"),
            (true, "NO_COLOR"),
        ] {
            if needed {
                assert!(
                    help.contains(var),
                    "`{}` --help does not list {var}:\n{help}",
                    c.join(" ")
                );
            }
        }
        for line in help.lines() {
            assert!(
                line.chars().count() <= 100,
                "`{}` --help is not wrapped: {line:?}",
                c.join(" ")
            );
        }
    }
    assert!(out(&run(&["run", "--help"])).contains("NOTIFY_SOCKET"));
}

/// README's command-line synopsis names exactly the options the binary has.
#[test]
fn the_readme_synopsis_matches_the_binary() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("## Command line")
        .expect("a Command line section");
    let block = &readme[start..];
    let block = &block[block.find("```").unwrap() + 3..];
    let block = &block[..block.find("```").unwrap()];
    // Lines of one command: `provisioner WORDS [--flags]`, continuation lines indented.
    let mut commands: Vec<String> = Vec::new();
    for line in block.lines() {
        if line.starts_with("provisioner ") {
            commands.push(line.to_owned());
        } else if let Some(last) = commands.last_mut() {
            last.push(' ');
            last.push_str(line.trim());
        }
    }
    let cmd = provisioner::cli::command();
    let mut all = Vec::new();
    leaves(&cmd, &[], &mut all);
    for c in &all {
        let name = format!("provisioner {}", c.join(" "));
        let Some(line) = commands.iter().find(|l| {
            let line = l.split('#').next().unwrap();
            line == name || line.starts_with(&format!("{name} "))
        }) else {
            panic!("README's synopsis lacks `{name}`");
        };
        let mut sub = &cmd;
        for w in c {
            sub = sub.find_subcommand(w).unwrap();
        }
        let flags: Vec<String> = sub
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .filter(|f| {
                !["--help", "--version", "--log-format", "--database-url"].contains(&f.as_str())
            })
            .collect();
        let line = line.split('#').next().unwrap();
        for f in &flags {
            assert!(
                line.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-'))
                    .any(|w| w == f),
                "README's `{name}` lacks {f}: {line}"
            );
        }
        for word in line.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-')) {
            if word.starts_with("--") {
                assert!(
                    flags.contains(&word.to_owned()),
                    "README's `{name}` has {word}, the binary does not"
                );
            }
        }
    }
    for outside in ["../shared", "git.example.com"] {
        assert!(
            !readme.contains(outside),
            "README points outside the repository: {outside}"
        );
    }
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef provisioner"),
        ("fish", "complete -c provisioner"),
    ] {
        let o = run(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0));
        let script = out(&o);
        assert!(script.contains(marker), "{shell}: {script:.200}");
        assert!(
            script.contains("detailed-exitcode"),
            "{shell} completes plan's flags"
        );
    }
    let o = run(&["man"]);
    assert!(out(&o).contains(".TH provisioner 1"), "{}", out(&o));
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let page = std::fs::read_to_string(dir.path().join("provisioner-instances-list.1")).unwrap();
    assert!(page.contains("\\-\\-limit"), "{page}");
    assert!(page.contains("DATABASE_URL"), "{page}");
}

#[test]
fn rust_log_takes_envfilter_syntax_and_a_bad_value_is_an_error() {
    let catalog = common::example_catalog();
    let o = bin()
        .args(["catalog", "validate"])
        .arg(&catalog)
        .env("RUST_LOG", "provisioner=debug,warn")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = bin()
        .args(["catalog", "validate"])
        .arg(&catalog)
        .env("RUST_LOG", "provisioner=lolwut")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("RUST_LOG=`provisioner=lolwut` is not a valid filter"),
        "{}",
        err(&o)
    );
}

#[test]
fn fatal_errors_are_json_events_under_log_format_json() {
    let o = run(&[
        "--log-format",
        "json",
        "--database-url",
        "sqlite:///nonexistent/dir/x.db",
        "instances",
        "list",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let line = err(&o);
    let event: serde_json::Value = serde_json::from_str(line.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(event["level"], "ERROR");
    assert!(
        event["fields"]["causes"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{event}"
    );
}

#[test]
fn the_demo_runs_from_any_directory_and_refuses_nonsense() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["demo", "--servers", "6"])
        .current_dir(dir.path())
        .env("DATABASE_URL", "sqlite:///nonexistent/ignored.db")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(
        out(&o).contains("the example catalog built into this binary"),
        "{}",
        out(&o)
    );
    assert!(out(&o).contains("demo converged"), "{}", out(&o));
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing left behind"
    );

    let o = run(&["demo", "--servers", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("0 is not in 1..=2000"), "{}", err(&o));

    // An explicit database is used, and must hold no instance.
    let db = format!("sqlite://{}", dir.path().join("d.db").display());
    let o = run(&["demo", "--servers", "2", "--database-url", &db]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    let o = run(&["demo", "--servers", "2", "--database-url", &db]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("needs a database without instances"),
        "{}",
        err(&o)
    );
}

/// `Type=notify`: READY=1 once serving, WATCHDOG=1 at half WatchdogSec, STOPPING=1 on SIGTERM.
#[test]
fn the_daemon_speaks_systemds_notify_protocol() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let db = format!("sqlite://{}", dir.path().join("n.db").display());
    let mut child = bin()
        .args([
            "--database-url",
            &db,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--catalog",
        ])
        .arg(common::example_catalog())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut messages = String::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    let mut signalled = false;
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let pings = messages.matches("WATCHDOG=1").count();
        if !signalled && messages.contains("READY=1") && pings >= 3 {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            signalled = true;
        }
        if messages.contains("STOPPING=1") {
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(messages.contains("READY=1"), "{messages}");
    assert!(messages.contains("STATUS=reconciling"), "{messages}");
    assert!(messages.matches("WATCHDOG=1").count() >= 3, "{messages}");
    assert!(messages.contains("STOPPING=1"), "{messages}");
    assert!(status.success());
}

/// The unit in the repository starts the daemon with options the binary has.
#[test]
fn the_systemd_unit_matches_the_command_line() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/provisioner.service"),
    )
    .unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "User=provisioner",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=provisioner",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    for key in ["ExecStartPre=", "ExecStart="] {
        let line = unit.lines().find(|l| l.starts_with(key)).unwrap();
        let words: Vec<&str> = line[key.len()..].split_whitespace().collect();
        assert!(words[0].ends_with("/provisioner"));
        provisioner::cli::command()
            .try_get_matches_from(&words)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

/// On a terminal logs are coloured, unless `NO_COLOR` is set (to anything but the empty
/// string, as https://no-color.org says). `script` gives the daemon a terminal.
#[test]
fn no_color_keeps_escape_codes_out_of_logs_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs `script` (util-linux)"
        );
        return;
    }
    for (no_color, coloured) in [(None, true), (Some(""), true), (Some("1"), false)] {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("c.db").display());
        let command = format!(
            "{} --database-url {db} migrate",
            env!("CARGO_BIN_EXE_provisioner")
        );
        let mut c = Command::new("script");
        c.args(["-qec", &command, "/dev/null"])
            .env_remove("RUST_LOG");
        match no_color {
            Some(v) => c.env("NO_COLOR", v),
            None => c.env_remove("NO_COLOR"),
        };
        let o = c.output().unwrap();
        let all = format!("{}{}", out(&o), err(&o));
        assert!(all.contains("generated a new secret key"), "{all}");
        assert_eq!(
            all.contains('\u{1b}'),
            coloured,
            "NO_COLOR={no_color:?}: {all:?}"
        );
    }
}
