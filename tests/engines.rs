//! Several `kiln serve` engines on one database (PostgreSQL when KILN_TEST_POSTGRES_URL names
//! a server, as in scripts/test.sh and CI; SQLite otherwise) and one shared workspace: a run is
//! executed by the engine holding its lease; an engine that stops renewing (frozen) is taken
//! over once the lease expires and its late writes are refused; a killed engine's runs are
//! taken over at once on the same machine; runs that ask for a label wait for an engine that
//! offers it; three engines SIGKILLed at random (seeded: KILN_CHAOS_SEED=N replays) leave every
//! run ended, each training launched once, and no run held by a dead engine.

mod common;
#[path = "common/api.rs"]
mod http;

use std::time::{Duration, Instant};

use common::*;
use http::*;

/// A workspace on a fresh database, recording the stand-in trainer's launches; lease time to
/// live `ttl`.
fn fleet(ttl: &str, epoch_seconds: &str) -> (ApiWorkspace, std::path::PathBuf) {
    let (ws, record) = Workspace::new().recording_launches();
    let ws = ws
        .with_env("FAKE_YOLO_EPOCH_SECONDS", epoch_seconds)
        .with_env("KILN_LEASE_TTL", ttl);
    (ApiWorkspace::with(ws, fresh_postgres()), record)
}

fn launches_of(record: &std::path::Path, training: &str) -> usize {
    launches(record)
        .iter()
        .filter(|l| l.argv.iter().any(|a| *a == format!("name={training}")))
        .count()
}

fn run_of(server: &Server, token: &str, id: &str) -> serde_json::Value {
    let r = server.get(&format!("/api/v1/runs/{id}"), token);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn a_frozen_engine_is_taken_over_and_its_late_writes_are_refused() {
    // SQLite is one machine's database: an engine frozen while it holds the write lock stops
    // every other (PostgreSQL ends such a session, see kiln-store).
    if fresh_postgres().is_none() {
        eprintln!("KILN_TEST_POSTGRES_URL is not set: skipped");
        return;
    }
    let (aws, record) = fleet("2s", "2");
    let token = aws.token("trainer", &[], &["trainer"]);
    let mut a = aws.serve();
    let b = aws.serve();
    let mut body = demo_run("frozen");
    body["params"]["overrides"]["epochs"] = 3.into();
    let r = a.post("/api/v1/runs", &token, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let first_engine = run_of(&b, &token, &id)["engine"].clone();
    assert!(first_engine.is_string(), "A holds the run: {first_engine}");
    wait_for(300, "the trainer to start", || {
        launches_of(&record, "frozen") == 1
    });

    // A stops renewing (frozen, not dead: no engine on this machine may call it dead); B takes
    // the run over when the lease expires, re-attaches to the trainer and finishes the run.
    kill(a.pid().unwrap(), "STOP");
    let taken = Instant::now();
    wait_for(60, "B to take the run over", || {
        b.log_text().contains("recovering run")
    });
    assert!(
        taken.elapsed() >= Duration::from_millis(500),
        "not before the lease expired"
    );
    let run = b.wait_run(&id, &token, 300);
    assert_eq!(
        run["status"],
        "succeeded",
        "{}\nA:\n{}\nB:\n{}",
        run["error_message"],
        a.log_text(),
        b.log_text()
    );
    assert_ne!(first_engine, serde_json::Value::Null);
    assert_eq!(
        run["engine"],
        serde_json::Value::Null,
        "an ended run is held by no engine"
    );
    assert_eq!(
        launches_of(&record, "frozen"),
        1,
        "re-attached, not launched again"
    );

    // A wakes up: it learns it lost the lease and stops; the run's record stays B's.
    let before = run_of(&b, &token, &id);
    kill(a.pid().unwrap(), "CONT");
    wait_for(60, "A to notice", || {
        a.log_text().contains("lost its lease")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        run_of(&b, &token, &id),
        before,
        "A changed nothing; its log:\n{}",
        a.log_text()
    );
    // What each engine's /metrics says about it.
    let metrics = |s: &Server| s.call("GET", "/metrics", Some(&token), None).text();
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert!(ma.contains("kiln_engine_leases_lost_total 1"), "{ma}");
    assert!(mb.contains("kiln_engine_takeovers_total 1"), "{mb}");
    assert!(mb.contains("kiln_engine_leases_held 0"), "{mb}");
    a.kill();
}

#[test]
fn a_killed_engines_runs_are_taken_over_at_once_and_labels_choose_the_engine() {
    // A long lease: the takeover below is the same machine's, not the lease's expiry.
    let (aws, record) = fleet("1h", "1");
    let token = aws.token("trainer", &[], &["trainer"]);
    let mut a = aws.serve();
    let r = a.post("/api/v1/runs", &token, &demo_run("killed"));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_for(300, "the trainer to start", || {
        launches_of(&record, "killed") == 1
    });
    a.kill();
    let b = aws.serve_with(&["--label", "pool=big"]);
    let run = b.wait_run(&id, &token, 300);
    assert_eq!(run["status"], "succeeded", "{run}\n{}", b.log_text());
    assert_eq!(launches_of(&record, "killed"), 1, "the trainer ran once");
    // The killed engine was recorded stopped by B (same machine, process gone): only B is
    // listed.
    let listed = aws.kiln(&["engines", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["labels"]["pool"], "big", "{listed:?}");
    assert_eq!(listed[0]["kind"], "serve", "{listed:?}");
    assert_eq!(listed[0]["pid"], b.pid().unwrap(), "{listed:?}");
    let table = text(&aws.kiln(&["engines"]).stdout);
    assert!(
        table.contains("pool=big") && table.contains("serve"),
        "{table}"
    );

    // A run whose step asks for `pool: big`, triggered on an engine without it: queued there,
    // executed by the engine that offers it.
    let wf = std::fs::read_to_string(aws.ws.root().join("workflows/ultralytics-detect.yaml"))
        .unwrap()
        .replacen(
            "    uses: ultralytics\n    action: train\n",
            "    uses: ultralytics\n    action: train\n    runs_on: {pool: big}\n",
            1,
        );
    assert!(
        wf.contains("runs_on"),
        "the train step of the demo workflow"
    );
    let wf = wf.replacen("name: ultralytics-detect", "name: big-only", 1);
    std::fs::write(aws.ws.root().join("workflows/big-only.yaml"), wf).unwrap();
    let small = aws.serve();
    let mut body = demo_run("labelled");
    body["workflow"] = "big-only".into();
    let r = small.post("/api/v1/runs", &token, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["status"], "queued", "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let run = small.wait_run(&id, &token, 300);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        b.log_text().contains(&id),
        "executed by the labelled engine"
    );
    assert!(
        !small.log_text().contains("recovering run"),
        "{}",
        small.log_text()
    );
}

/// A server stopped with SIGTERM while runs are in flight hands them back and ends cleanly:
/// nothing its aborted executions queued afterwards is written or logged as an error, the
/// SQLite database file alone holds everything (its write-ahead log folded in and removed),
/// and the next engine takes the runs over, re-attaching to the trainer.
#[test]
fn a_stopped_engine_hands_its_runs_back_and_leaves_a_whole_database() {
    let (aws, record) = fleet("1h", "0.5");
    let token = aws.token("trainer", &[], &["trainer"]);
    let mut a = aws.serve();
    let mut body = demo_run("handed");
    body["params"]["overrides"]["epochs"] = 4.into();
    let r = a.post("/api/v1/runs", &token, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_for(300, "the trainer to start", || {
        launches_of(&record, "handed") == 1
    });
    // The trainer's progress is being written when the stop comes.
    std::thread::sleep(Duration::from_millis(700));
    let status = a.terminate(30);
    assert!(status.success(), "{status}\n{}", a.log_text());
    let log = a.log_text();
    assert!(log.contains("leases handed back"), "{log}");
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
    if aws.database_url.is_none() {
        for left in ["kiln.db-wal", "kiln.db-shm"] {
            let path = aws.ws.root().join(".kiln").join(left);
            assert!(!path.exists(), "{left} left after a clean stop\n{log}");
        }
    }
    let b = aws.serve();
    let run = b.wait_run(&id, &token, 300);
    assert_eq!(run["status"], "succeeded", "{run}\n{}", b.log_text());
    assert_eq!(
        launches_of(&record, "handed"),
        1,
        "re-attached, not launched again"
    );
}

/// A backup restored over the database file while a server trains: the server notices within
/// a second, writes nothing more and stops (exit 1, saying why and what to do) without closing
/// the database, whose write-ahead log it empties into the old file first. The restored file
/// is whole, nothing of the old file's log is replayed into it, and the next server takes the
/// run it holds over, re-attaching to the trainer that kept running.
#[test]
fn a_server_whose_database_file_is_replaced_stops_and_leaves_the_restored_file_whole() {
    // SQLite whatever the suite runs against: a PostgreSQL database has no file to replace.
    let (ws, record) = Workspace::new().recording_launches();
    let ws = ws
        .with_env("FAKE_YOLO_EPOCH_SECONDS", "0.5")
        .with_env("KILN_LEASE_TTL", "1h");
    let aws = ApiWorkspace::with(ws, None);
    let token = aws.token("trainer", &[], &["trainer"]);
    let mut a = aws.serve();
    let mut body = demo_run("restored");
    body["params"]["overrides"]["epochs"] = 6.into();
    let r = a.post("/api/v1/runs", &token, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_for(300, "the trainer to start", || {
        launches_of(&record, "restored") == 1
    });
    // A consistent copy (the run recorded, its trainer launched), restored over the file.
    let db = aws.ws.root().join(".kiln/kiln.db");
    let backup = backup_of(&db);
    // Progress keeps being written meanwhile, and a slow client sends a run's request: the
    // server does not wait out its usual drain for it.
    let slow = Dribbler::run_body(
        a.addr,
        &token,
        100_000,
        Duration::from_millis(200),
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(700));
    std::fs::rename(&backup, &db).unwrap();
    let stopped = Instant::now();
    // Runs asked for meanwhile are refused as the server being unavailable, not as its bug,
    // until it no longer answers.
    let auth = format!("Bearer {token}");
    let json = serde_json::to_vec(&demo_run("too-late")).unwrap();
    let mut refused = std::collections::BTreeSet::new();
    while stopped.elapsed() < Duration::from_secs(5) {
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        match request(
            a.addr,
            "POST",
            "/api/v1/runs",
            &headers,
            Some(&json),
            Duration::from_secs(10),
        ) {
            Ok(r) => {
                assert_eq!(r.status, 503, "{}", r.text());
                refused.insert(r.json()["code"].as_str().unwrap_or_default().to_owned());
            }
            Err(_) => break,
        }
    }
    assert!(
        refused.contains("database_lost")
            && refused
                .iter()
                .all(|c| c == "database_lost" || c == "shutting_down"),
        "{refused:?}"
    );
    let status = a.wait_exit(10, "after its database file was replaced");
    let log = a.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        stopped.elapsed()
    );
    assert!(
        slow.wait().closed_after.is_some(),
        "the slow client was cut"
    );
    assert!(!log.contains("hand the leases back"), "{log}");
    assert_left_the_restored_file_whole(&db, &log);
    let status: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT status FROM runs WHERE id = ?1", [&id], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(status, "running", "as the backup has it");
    let b = aws.serve();
    let run = b.wait_run(&id, &token, 300);
    assert_eq!(run["status"], "succeeded", "{run}\n{}", b.log_text());
    assert_eq!(
        launches_of(&record, "restored"),
        1,
        "re-attached, not launched again"
    );
}

#[test]
fn three_engines_killed_at_random_end_every_run_once() {
    let seed = chaos_seed();
    let mut rng = Lcg(seed);
    let (aws, record) = fleet("3s", "1");
    let token = aws.token("trainer", &[], &["trainer"]);
    let mut engines: Vec<Server> = (0..3).map(|_| aws.serve()).collect();
    let runs = 12;
    let mut ids = Vec::new();
    for i in 0..runs {
        let mut body = demo_run(&format!("chaos{i}"));
        body["params"]["overrides"]["epochs"] = 3.into();
        let r = engines[i % 3].post("/api/v1/runs", &token, &body);
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let mut kills = 0;
    let start = Instant::now();
    let all_ended = |engine: &Server| {
        ids.iter().all(|id| {
            let s = run_of(engine, &token, id)["status"].clone();
            s == "succeeded" || s == "failed" || s == "cancelled"
        })
    };
    while kills < 12 && !all_ended(&engines[0]) {
        std::thread::sleep(Duration::from_millis(200 + rng.below(1000)));
        let victim = rng.below(3) as usize;
        eprintln!("killing engine {victim} after {:?}", start.elapsed());
        engines[victim].kill();
        kills += 1;
        // Sometimes it comes back at once, sometimes later (another engine takes over).
        if rng.below(2) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(2000)));
        }
        engines[victim] = aws.serve();
    }
    assert!(
        kills >= 2,
        "seed {seed}: the runs ended before the engines were killed twice"
    );
    for id in &ids {
        let run = engines[0].wait_run(id, &token, 600);
        assert_eq!(
            run["status"],
            "succeeded",
            "seed {seed}: {run}\n{}",
            engines.iter().map(Server::log_text).collect::<String>()
        );
        assert_eq!(run["engine"], serde_json::Value::Null, "seed {seed}: {run}");
    }
    for i in 0..runs {
        assert_eq!(
            launches_of(&record, &format!("chaos{i}")),
            1,
            "seed {seed}: training chaos{i} launched once: {:?}",
            launches(&record)
        );
    }
    // Every step ran in one attempt: a takeover continues the attempt it finds.
    for id in &ids {
        let run = run_of(&engines[0], &token, id);
        for step in run["steps"].as_array().unwrap() {
            assert_eq!(step["attempt"], 1, "seed {seed}: {step}");
        }
    }
    let models = engines[0].get("/api/v1/models", &token).json();
    let count = models
        .as_array()
        .or_else(|| models["models"].as_array())
        .map_or(0, Vec::len);
    assert_eq!(count, runs, "seed {seed}: one model per run: {models}");
}

/// A launch recorded on another machine (its `child.json` names another machine) is followed
/// through its files and its supervisor's heartbeat, and stopped by a request its supervisor
/// honours: an engine taking such a run over neither starts a second trainer nor signals a
/// process group of its own machine that happens to carry the recorded number; once the
/// heartbeat is stale (that machine is gone), there is nothing left to stop.
#[test]
fn another_machines_programs_are_followed_and_stopped_through_their_supervisor() {
    let (ws, record) = Workspace::new().recording_launches();
    // A process group of this machine with the number the records will carry.
    let mut decoy = std::process::Command::new("setsid")
        .args(["sleep", "600"])
        .spawn()
        .unwrap();
    let decoy_group = decoy.id();
    let marker = ws.root().display().to_string();
    // Starts training `name` (epochs of `secs`), kills its engine, and makes its launch
    // record another machine's; returns the run id and the real group of the trainer.
    let elsewhere = |ws: &Workspace, name: &str| -> (String, i64, std::path::PathBuf) {
        let args = demo_args(name, &[]);
        let mut engine = ws.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        engine.wait_for(300, "the trainer to start", || {
            launches_of(&record, name) == 1
        });
        kill(engine.id(), "KILL");
        engine.wait();
        let id = find_run(ws, name).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let dir = ws
            .root()
            .join(format!(".kiln/runs/{id}/state/train/attempt-1/launch-1"));
        let mut child: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("child.json")).unwrap())
                .unwrap();
        let real = child["pgid"].as_i64().unwrap();
        child["pgid"] = decoy_group.into();
        child["pid"] = decoy_group.into();
        child["machine"] = "another-boot/pid:[1]".into();
        child["host"] = "gpu-box-9".into();
        std::fs::write(dir.join("child.json"), serde_json::to_vec(&child).unwrap()).unwrap();
        (id, real, dir)
    };

    // Followed: resumed here, the run goes on with the one trainer to its end.
    let ws = ws.with_env("FAKE_YOLO_EPOCH_SECONDS", "2");
    let (id, _, _) = elsewhere(&ws, "followed");
    let out = ws.kiln(&["resume", &id, "--kill-grace-secs", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(launches_of(&record, "followed"), 1, "no second trainer");
    assert!(
        decoy.try_wait().unwrap().is_none(),
        "the decoy group was signalled"
    );

    // Stopped by request: cancel from here ends the program through its supervisor.
    let ws = ws.with_env("FAKE_YOLO_EPOCH_SECONDS", "30");
    let (id, real, _) = elsewhere(&ws, "stopped");
    let out = ws.kiln(&["runs", "cancel", &id, "--kill-grace-secs", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "cancelled", "{show}");
    assert!(
        !processes_mentioning(&marker)
            .iter()
            .any(|(_, c)| c.contains("name=stopped")),
        "the trainer was stopped by its supervisor"
    );
    assert!(
        decoy.try_wait().unwrap().is_none(),
        "the decoy group was signalled"
    );
    kill_group(real);

    // Gone: its supervisor no longer beats (that machine died): once it has been silent for
    // 20 s there is nothing to stop, and the cancel is recorded (a stop request stays behind,
    // for a supervisor that would beat again).
    // The supervisor first: killed after its program, it could still record the program's
    // exit, and a launch that ended needs no stopping.
    let (id, real, dir) = elsewhere(&ws, "gone");
    let supervisor: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("child.json")).unwrap()).unwrap();
    kill(
        supervisor["supervisor_pid"].as_u64().unwrap() as u32,
        "KILL",
    );
    kill_group(real);
    let out = ws.kiln(&["runs", "cancel", &id, "--kill-grace-secs", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        ws.json(&["runs", "show", &id, "--json"])["run"]["status"],
        "cancelled"
    );
    assert!(dir.join("stop-request").is_file());
    assert!(
        decoy.try_wait().unwrap().is_none(),
        "the decoy group was signalled"
    );
    let _ = decoy.kill();
    let _ = decoy.wait();
}

fn kill_group(pgid: i64) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}
