//! The CLI as a Unix tool: closed pipes (`kiln … | head`, `kiln … | true`).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::{Workspace, repo_root, text};

const SIGPIPE: i32 = 13;

/// Runs `kiln args` with stdout (and stderr, when `close_stderr`) a pipe whose reading end is
/// closed before kiln writes anything.
fn with_closed_output(
    ws: &Workspace,
    args: &[&str],
    close_stderr: bool,
) -> (std::process::ExitStatus, String) {
    let mut child = ws
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let stderr = if close_stderr {
        drop(child.stderr.take());
        String::new()
    } else {
        let mut s = String::new();
        use std::io::Read;
        child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    (child.wait().unwrap(), stderr)
}

#[test]
fn reading_commands_end_quietly_on_a_closed_pipe() {
    let ws = Workspace::new();
    let out = ws.run_demo("piped", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = common::run_id(&out);
    let wf = repo_root().join("workflows/ultralytics-detect.yaml");
    let wf = wf.to_str().unwrap();
    for args in [
        vec!["schema"],
        vec!["runs", "list"],
        vec!["runs", "list", "--json"],
        vec!["runs", "show", &run],
        vec!["runs", "show", &run, "--json"],
        vec!["runs", "stats"],
        vec!["logs", &run],
        vec!["models", "list"],
        vec!["models", "list", "--json"],
        vec!["plugins", "list"],
        vec!["plugins", "list", "--json"],
        vec!["token", "list"],
        vec!["validate", wf],
    ] {
        let (status, stderr) = with_closed_output(&ws, &args, false);
        assert!(!stderr.contains("panicked"), "kiln {args:?}: {stderr}");
        // Like other tools: ended by SIGPIPE (a shell shows 141), or done before writing.
        assert!(
            status.signal() == Some(SIGPIPE) || status.success(),
            "kiln {args:?}: {status:?}: {stderr}"
        );
    }
    // Something that surely writes: killed by SIGPIPE, not exited with an error.
    let (status, _) = with_closed_output(&ws, &["schema"], false);
    assert_eq!(status.signal(), Some(SIGPIPE));
}

#[test]
fn a_run_finishes_when_its_output_is_closed() {
    // Debug logs too: every line the engine writes goes to a closed pipe.
    let ws = Workspace::new().with_env("KILN_LOG", "debug");
    let wf = repo_root().join("workflows/ultralytics-detect.yaml");
    let (status, _) = with_closed_output(
        &ws,
        &[
            "run",
            wf.to_str().unwrap(),
            "-p",
            "project=demo",
            "-p",
            "release=demo-release.zip",
            "-p",
            "training_name=closed",
            "-p",
            "overrides={epochs: 2, imgsz: 64}",
        ],
        true,
    );
    assert_eq!(status.code(), Some(0), "{status:?}");
    let runs = ws.json(&["runs", "list", "--json"]);
    assert_eq!(runs[0]["status"], "succeeded", "{runs}");
    assert_eq!(
        ws.json(&["models", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_server_keeps_serving_when_its_stderr_is_closed() {
    use std::io::{Read, Write};
    let ws = Workspace::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = ws
        .command(&["serve", "--insecure-no-auth", "--addr", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let get = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET /api/v1/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    };
    common::wait_for(30, "the server to answer", || get().is_some());
    // Each request logs a line to the closed stderr.
    for _ in 0..50 {
        let answer = get().unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    common::kill(child.id(), "TERM");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop the server"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A reading command whose output cannot be written (a full disk) fails and says so, instead of
/// exiting 0 with nothing written.
#[test]
fn reading_commands_fail_when_their_output_cannot_be_written() {
    let ws = Workspace::new();
    for args in [&["schema"][..], &["plugins", "list"], &["runs", "list"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = ws.command(args).stdout(full).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "kiln {args:?}");
        assert!(
            text(&out.stderr).contains("cannot write the output: No space left on device"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// Database locations a URL spells awkwardly: a workspace whose path holds `?`, `#` and `%`
/// keeps its database inside it; a relative file whose name holds a `:` is opened; `mode=ro`
/// is honoured; an in-memory database (however spelt), an unknown scheme and a path SQLite
/// would be given altered are refused at once with a reason (exit 2). None of them panics.
#[test]
fn odd_database_paths_open_the_named_file_or_are_refused_with_a_reason() {
    let ws = Workspace::new();
    let odd = ws.root().join("odd ?#% name");
    std::fs::create_dir_all(odd.join("configs")).unwrap();
    std::fs::copy(
        ws.root().join("configs/plugins.yaml"),
        odd.join("configs/plugins.yaml"),
    )
    .unwrap();
    std::fs::create_dir_all(odd.join(".kiln/plugins")).unwrap();
    std::fs::copy(
        ws.root().join(".kiln/plugins/hostile.wasm"),
        odd.join(".kiln/plugins/hostile.wasm"),
    )
    .unwrap();
    let wf = odd.join("one.yaml");
    std::fs::write(
        &wf,
        "name: one\nsteps:\n  - {id: a, uses: hostile, action: ok}\n",
    )
    .unwrap();
    let out = ws
        .command(&["run", wf.to_str().unwrap()])
        .env("KILN_WORKSPACE", &odd)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(odd.join(".kiln/kiln.db").is_file());

    // A relative file whose first part holds a `:` (sqlx's own URL of it does not parse).
    let out = ws.kiln(&["--database-url", "sqlite:a:b.db", "runs", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(ws.root().join("a:b.db").is_file());

    // An empty KILN_DATABASE_URL is unset: the workspace's own database.
    let out = ws
        .command(&["runs", "list"])
        .env("KILN_DATABASE_URL", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(ws.root().join(".kiln/kiln.db").is_file());

    // `mode=ro` opens the file read-only: it is read, and a run is refused without a change.
    let db = ws.root().join("a:b.db");
    let ro = format!("sqlite://{}?mode=ro", db.display());
    let before = std::fs::read(&db).unwrap();
    let out = ws.kiln(&["--database-url", &ro, "runs", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = ws.kiln(&["--database-url", &ro, "run", wf.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("readonly database"), "{stderr}");
    assert_eq!(stderr.matches("readonly database").count(), 1, "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    let missing = format!("sqlite://{}/missing.db?mode=ro", ws.root().display());
    let out = ws.kiln(&["--database-url", &missing, "runs", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!ws.root().join("missing.db").exists());

    let refused = [
        ("sqlite::memory:".to_owned(), "in-memory"),
        ("sqlite://?mode=memory".to_owned(), "in-memory"),
        ("sqlite:x.db?mode=mem%6Fry".to_owned(), "in-memory"),
        // sqlx would take these for PostgreSQL, or wait 30 s for a connection.
        ("SQLITE::memory:".to_owned(), "not a database URL"),
        ("mysql://localhost/kiln".to_owned(), "not a database URL"),
        // The file `x%41.db`: sqlx would hand SQLite `xA.db`.
        (
            format!("sqlite://{}/x%2541.db", ws.root().display()),
            "another path",
        ),
    ];
    for (url, reason) in refused {
        let out = ws.kiln(&["--database-url", &url, "runs", "list"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains(reason), "{url}: {stderr}");
        assert_eq!(stderr.matches(reason).count(), 1, "said once: {stderr}");
        assert!(!stderr.contains("panicked"), "{url}: {stderr}");
    }
    assert!(!ws.root().join("xA.db").exists() && !ws.root().join("x.db").exists());
}

/// A database file this user cannot write is refused before anything touches it, whatever the
/// command: SQLite would open it read-only, a write would fail, and the `-wal` and `-shm` made
/// meanwhile (read-only like the file) would block runs after the file is made writable again.
/// Such leftovers, and an empty file, are refused too.
#[test]
fn a_database_this_user_cannot_write_is_refused_before_anything_touches_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ws = Workspace::new();
    let wf = ws.workflow(
        "one.yaml",
        "name: one\nsteps:\n  - {id: a, uses: hostile, action: ok}\n",
    );
    let out = ws.kiln(&["run", &wf]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let kiln_dir = ws.root().join(".kiln");
    let db = kiln_dir.join("kiln.db");
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Root may write any file: the commands are then another user's (util-linux's setpriv),
    // who may write the workspace and its folders but not the file.
    let root = std::fs::metadata(ws.root()).unwrap().uid() == 0;
    if root {
        for dir in [ws.root(), kiln_dir.as_path()] {
            mode(dir, 0o777);
        }
        mode(&kiln_dir.join("kiln.migrate-lock"), 0o666);
    }
    let as_other = |args: &[&str]| {
        let mut c = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(env!("CARGO_BIN_EXE_kiln"));
            c
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        };
        c.args(args)
            .current_dir(ws.root())
            .env("KILN_WORKSPACE", ws.root())
            .env("HOME", ws.root())
            .env_remove("KILN_DATABASE_URL")
            .env_remove("KILN_PLUGINS_DIR")
            .envs(ws.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    };
    let refused = |args: &[&str], file: &std::path::Path| {
        let out = as_other(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{} cannot be written by this user",
                file.display()
            )) && stderr.contains("chmod u+rw"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("readonly database"), "{stderr}");
    };
    let before = std::fs::read(&db).unwrap();
    mode(&db, 0o444);
    for args in [
        &["run", &wf][..],
        &["runs", "list"][..],
        &["token", "list"][..],
    ] {
        refused(args, &db);
        for left in ["kiln.db-wal", "kiln.db-shm"] {
            assert!(!kiln_dir.join(left).exists(), "{args:?} made {left}");
        }
    }
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file was changed");

    // A read-only `-shm` left beside a writable file (by a process that could only read).
    mode(&db, 0o666);
    let shm = kiln_dir.join("kiln.db-shm");
    std::fs::write(&shm, vec![0u8; 32768]).unwrap();
    mode(&shm, 0o444);
    refused(&["run", &wf], &shm);
    std::fs::remove_file(&shm).unwrap();

    // An empty file (SQLite's new database) this user cannot write.
    let empty = ws.root().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    mode(&empty, 0o444);
    let url = format!("sqlite://{}", empty.display());
    refused(&["--database-url", &url, "run", &wf], &empty);

    // Writable again, the runs go on.
    let out = ws.kiln(&["run", &wf]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// `--help` names `KILN_DATABASE_URL` without its value, which may hold a password.
#[test]
fn help_does_not_show_the_database_password() {
    let ws = Workspace::new();
    for args in [&["--help"][..], &["runs", "list", "--help"][..]] {
        let out = ws
            .command(args)
            .env("KILN_DATABASE_URL", "postgres://kiln:s3cret@db/kiln")
            .output()
            .unwrap();
        let help = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(help.contains("KILN_DATABASE_URL"), "{help}");
        assert!(!help.contains("s3cret"), "{help}");
    }
}

/// Whether process `pid` has a handler for signal `number` (`SigCgt` in /proc).
fn catches(pid: u32, number: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (number - 1)) != 0)
}

/// A server whose start cannot finish (another process migrating a new database holds the
/// migration lock) and is asked to stop goes on waiting to finish it cleanly; asked again, it
/// quits at once (130).
#[test]
fn a_server_stuck_starting_quits_on_a_second_signal() {
    let ws = Workspace::new();
    let kiln_dir = ws.root().join(".kiln");
    std::fs::create_dir_all(&kiln_dir).unwrap();
    let lock = std::fs::File::create(kiln_dir.join("kiln.migrate-lock")).unwrap();
    lock.lock().unwrap();
    let mut child = ws
        .command(&["serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for(30, "the server to catch SIGTERM", || {
        catches(child.id(), 15)
    });
    common::kill(child.id(), "TERM");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a first signal waits for the start to finish"
    );
    common::kill(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("stopped again while it started"),
        "{stderr}"
    );
    drop(lock);
}

/// A server stopped while it starts (its database being opened, its plugins loaded) ends
/// cleanly: exit 0, its database closed (no `-wal`/`-shm` left), its engine recorded stopped.
/// Stopped at several points of the start, SIGTERM and SIGINT, the first as soon as the
/// process catches them (before its async runtime exists).
#[test]
fn a_server_stopped_while_it_starts_ends_cleanly() {
    let ws = Workspace::new();
    let kiln_dir = ws.root().join(".kiln");
    // `None`: as soon as the process catches the signal (from the top of `main`, before its
    // runtime exists); else once the database file appears, and that many ms later.
    let rounds = [
        ("TERM", None),
        ("INT", None),
        ("TERM", Some(0)),
        ("INT", Some(0)),
        ("TERM", Some(20)),
        ("INT", Some(60)),
    ];
    for (round, (signal, extra_ms)) in rounds.into_iter().enumerate() {
        for file in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
            let _ = std::fs::remove_file(kiln_dir.join(file));
        }
        let child = ws
            .command(&["serve", "--addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        match extra_ms {
            None => {
                let number = if signal == "TERM" { 15 } else { 2 };
                common::wait_for(30, "the server to catch the signal", || {
                    catches(child.id(), number)
                });
            }
            Some(ms) => {
                // The database file appears once the start is under way (the signals are
                // listened for from before it).
                common::wait_for(30, "the database to be created", || {
                    kiln_dir.join("kiln.db").exists()
                });
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
        common::kill(child.id(), signal);
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "round {round}: {stderr}");
        assert!(
            stderr.contains("kiln API stopped"),
            "round {round}: {stderr}"
        );
        for left in ["kiln.db-wal", "kiln.db-shm"] {
            assert!(
                !kiln_dir.join(left).exists(),
                "round {round}: {left} left: {stderr}"
            );
        }
        let engines = ws.json(&["engines", "--json"]);
        assert_eq!(engines, serde_json::json!([]), "round {round}: {stderr}");
    }
}
