//! Nothing lost, nothing duplicated: engine crashes (SIGKILL) and re-attach, infrastructure
//! failures with resume from checkpoint, retry budgets, retrying a failed run, memoization,
//! cancellation from another process, and GPU slots.

mod common;

use common::*;
use std::time::Duration;

fn demo_workflow(ws: &Workspace, edit: impl FnOnce(String) -> String) -> String {
    let yaml =
        std::fs::read_to_string(repo_root().join("workflows/ultralytics-detect.yaml")).unwrap();
    ws.workflow("durable.yaml", &edit(yaml))
}

fn run_args<'a>(wf: &'a str, training: &'a str, overrides: &'a str) -> Vec<String> {
    vec![
        "run".into(),
        wf.into(),
        "-p".into(),
        "project=demo".into(),
        "-p".into(),
        "release=demo-release.zip".into(),
        "-p".into(),
        format!("training_name={training}"),
        "-p".into(),
        format!("overrides={overrides}"),
        "--kill-grace-secs".into(),
        "2".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn yolo_running(ws: &Workspace) -> bool {
    processes_mentioning(&ws.root().display().to_string())
        .iter()
        .any(|(_, c)| c.contains("yolo"))
}

fn no_process_left(ws: &Workspace) {
    let marker = ws.root().display().to_string();
    // Give exiting supervisors a moment to be reaped.
    for _ in 0..100 {
        if processes_mentioning(&marker).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("processes left behind: {:?}", processes_mentioning(&marker));
}

#[test]
fn chaos_sigkill_the_engine_at_random_moments_and_resume() {
    let seed = chaos_seed();
    let mut rng = Lcg(seed);
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("launches.txt");
    let ws = Workspace::new()
        .with_env("FAKE_YOLO_EPOCH_SECONDS", "0.8")
        .with_env("FAKE_YOLO_RECORD", record.to_str().unwrap());
    let wf = demo_workflow(&ws, |y| y);
    const RUNS: usize = 6;
    let mut kills = 0;
    // Each round starts (or resumes) every unfinished run at once, then SIGKILLs engines at
    // random moments; a run whose engine was killed before it was recorded starts again.
    for round in 0.. {
        assert!(round < 30, "runs never finished (seed {seed})");
        let mut engines: Vec<(Background, u64)> = Vec::new();
        for i in 0..RUNS {
            let training = format!("chaos{i}");
            let child = match find_run(&ws, &training) {
                None => ws.spawn(&strs(&run_args(&wf, &training, "{epochs: 3, imgsz: 64}"))),
                Some(run) if run["status"] == "running" || run["status"] == "queued" => {
                    ws.spawn(&[
                        "resume",
                        run["id"].as_str().unwrap(),
                        "--kill-grace-secs",
                        "2",
                    ])
                }
                Some(_) => continue,
            };
            // Two thirds of the engines are killed somewhere in their first 2.4 s.
            let kill_at = if rng.below(3) < 2 {
                rng.below(2400)
            } else {
                u64::MAX
            };
            engines.push((child, kill_at));
        }
        if engines.is_empty() {
            break;
        }
        let started = std::time::Instant::now();
        while engines
            .iter_mut()
            .any(|(c, _)| c.child.try_wait().unwrap().is_none())
        {
            for (child, kill_at) in engines.iter_mut() {
                if started.elapsed().as_millis() as u64 >= *kill_at
                    && child.child.try_wait().unwrap().is_none()
                {
                    kill(child.id(), "KILL");
                    kills += 1;
                    *kill_at = u64::MAX;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    println!("chaos: {kills} engine kills over {RUNS} runs (seed {seed})");

    let all = launches(&record);
    for i in 0..RUNS {
        let training = format!("chaos{i}");
        let run = find_run(&ws, &training).unwrap();
        assert_eq!(
            run["status"], "succeeded",
            "{training} (seed {seed}): {run}"
        );
        let id = run["id"].as_str().unwrap();
        let show = ws.json(&["runs", "show", id, "--json"]);
        for s in show["steps"].as_array().unwrap() {
            assert_eq!(s["status"], "succeeded", "seed {seed}: {s}");
        }
        assert_eq!(
            step(&show, "train")["attempt"],
            1,
            "seed {seed}: training was not restarted"
        );
        assert_eq!(
            step(&show, "train")["outputs"]["epochs_completed"],
            3,
            "seed {seed}"
        );
        let name = format!("name={training}");
        let runs_of_training = all.iter().filter(|l| l.argv.contains(&name)).count();
        assert_eq!(
            runs_of_training, 1,
            "seed {seed}: {training} trained {runs_of_training} times"
        );
        let models = ws.json(&["models", "list", "--json"]);
        let mine = models
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["training_run_id"] == id)
            .count();
        assert_eq!(mine, 1, "seed {seed}: run {id} registered {mine} models");
    }
    no_process_left(&ws);
}

/// `kiln run` whose database file is replaced under it (a backup restored) stops once it
/// notices, at its next write: exit 1, saying why and what to do, without closing the
/// database, whose write-ahead log it empties into the old file first. The restored file is
/// whole and holds what the backup held; `kiln resume` then finishes the run from it.
#[test]
fn kiln_run_stops_when_its_database_file_is_replaced() {
    let ws = Workspace::new().with_env("FAKE_YOLO_EPOCH_SECONDS", "0.5");
    let wf = demo_workflow(&ws, |y| y.to_owned());
    let mut engine = ws.spawn(&strs(&run_args(&wf, "swapped", "{epochs: 6, imgsz: 64}")));
    let csv = ws
        .root()
        .join("projects/demo/model/training/swapped/results.csv");
    engine.wait_for(300, "the first epoch", || {
        std::fs::read_to_string(&csv).is_ok_and(|t| t.lines().count() >= 2)
    });
    let db = ws.root().join(".kiln/kiln.db");
    std::fs::rename(backup_of(&db), &db).unwrap();
    let status = engine.wait();
    let stderr = engine.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_left_the_restored_file_whole(&db, &stderr);
    let run = find_run(&ws, "swapped").unwrap();
    assert_eq!(run["status"], "running", "as the backup has it: {run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let out = ws.kiln(&["resume", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "succeeded", "{show}");
    no_process_left(&ws);
}

#[test]
fn a_lost_training_is_an_infrastructure_failure_retried_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("launches.txt");
    let ws = Workspace::new()
        .with_env("FAKE_YOLO_EPOCH_SECONDS", "1")
        .with_env("FAKE_YOLO_RECORD", record.to_str().unwrap());
    let wf = demo_workflow(&ws, |y| y.replace("backoff: 30s", "backoff: 0s"));
    let args = run_args(&wf, "lost", "{epochs: 4, imgsz: 64}");
    let mut engine = ws.spawn(&strs(&args));
    let csv = ws
        .root()
        .join("projects/demo/model/training/lost/results.csv");
    engine.wait_for(300, "the first epoch", || {
        std::fs::read_to_string(&csv).is_ok_and(|t| t.lines().count() >= 2)
    });
    // The engine dies, then the machine "reboots": supervisor and trainer vanish unrecorded.
    kill(engine.id(), "KILL");
    engine.wait();
    let run = find_run(&ws, "lost").unwrap();
    let id = run["id"].as_str().unwrap().to_owned();
    let launch = ws
        .root()
        .join(format!(".kiln/runs/{id}/state/train/attempt-1/launch-1"));
    let child: serde_json::Value =
        serde_json::from_slice(&std::fs::read(launch.join("child.json")).unwrap()).unwrap();
    kill(child["supervisor_pid"].as_u64().unwrap() as u32, "KILL");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child["pgid"])])
        .status();
    no_process_left(&ws);

    let out = ws.kiln(&["resume", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "succeeded");
    let train = step(&show, "train");
    assert_eq!(train["attempt"], 2, "{train}");
    assert_eq!(train["infrastructure_retries"], 1);
    assert_eq!(train["failure_retries"], 0);
    let resumed = train["outputs"]["resumed_from_epoch"]
        .as_i64()
        .expect("resumed_from_epoch");
    assert!(resumed >= 1, "{train}");
    let logs = text(&ws.kiln(&["logs", &id, "--step", "train"]).stdout);
    assert!(logs.contains("infrastructure"), "{logs}");
    assert!(
        logs.contains(&format!("resumed from its checkpoint at epoch {resumed}")),
        "{logs}"
    );
    let l = launches(&record);
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(l[1].argv.iter().any(|a| a == "resume"), "{l:?}");
    no_process_left(&ws);
}

#[test]
fn trainer_failures_and_infrastructure_failures_have_separate_budgets() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("launches.txt");
    let ws = Workspace::new()
        .with_env("FAKE_YOLO_FAIL_AT_EPOCH", "1")
        .with_env("FAKE_YOLO_RECORD", record.to_str().unwrap());
    // The shipped policy retries infrastructure failures only: a trainer failure is final.
    let wf = demo_workflow(&ws, |y| y);
    let out = ws.kiln(&strs(&run_args(&wf, "once", "{epochs: 2, imgsz: 64}")));
    assert_eq!(out.status.code(), Some(1));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    let train = step(&show, "train");
    assert_eq!(train["attempt"], 1);
    assert_eq!(train["failure_kind"], "failure");

    // With failures retried once, the trainer runs twice, then the step fails.
    let wf = demo_workflow(&ws, |y| {
        y.replace(
            "retry: {max: 2, backoff: 30s, on: [infrastructure]}",
            "retry: {max: 1, backoff: 0s, on: [failure]}",
        )
    });
    let out = ws.kiln(&strs(&run_args(&wf, "twice", "{epochs: 2, imgsz: 64}")));
    assert_eq!(out.status.code(), Some(1));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    let train = step(&show, "train");
    assert_eq!(train["attempt"], 2, "{train}");
    assert_eq!(train["failure_retries"], 1);
    assert_eq!(train["infrastructure_retries"], 0);
    assert_eq!(train["status"], "failed");
    let twice = launches(&record)
        .iter()
        .filter(|l| l.argv.iter().any(|a| a == "name=twice"))
        .count();
    assert_eq!(twice, 2);
}

#[test]
fn an_engine_killed_during_a_retry_backoff_resumes_the_retry_without_counting_it_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("launches.txt");
    let ws = Workspace::new()
        .with_env("FAKE_YOLO_FAIL_AT_EPOCH", "1")
        .with_env("FAKE_YOLO_RECORD", record.to_str().unwrap());
    let wf = demo_workflow(&ws, |y| {
        y.replace(
            "retry: {max: 2, backoff: 30s, on: [infrastructure]}",
            "retry: {max: 1, backoff: 4s, on: [failure]}",
        )
    });
    let mut engine = ws.spawn(&strs(&run_args(&wf, "backoff", "{epochs: 2, imgsz: 64}")));
    // The first attempt fails; the retry is recorded before the 4 s wait begins.
    let mut id = String::new();
    engine.wait_for(300, "the retry to be recorded", || {
        let Some(run) = find_run(&ws, "backoff") else {
            return false;
        };
        id = run["id"].as_str().unwrap().to_owned();
        let show = ws.json(&["runs", "show", &id, "--json"]);
        step(&show, "train")["attempt"] == 2
    });
    kill(engine.id(), "KILL");
    engine.wait();
    assert_eq!(launches(&record).len(), 1, "the retry had not launched yet");

    let out = ws.kiln(&["resume", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &id, "--json"]);
    let train = step(&show, "train");
    assert_eq!(train["attempt"], 2, "{train}");
    assert_eq!(
        train["failure_retries"], 1,
        "the retry is counted once: {train}"
    );
    assert_eq!(train["status"], "failed");
    assert_eq!(launches(&record).len(), 2, "one launch per attempt");
    no_process_left(&ws);
}

#[test]
fn retrying_a_failed_run_reruns_only_its_unfinished_steps() {
    let ws = Workspace::new().with_env("FAKE_YOLO_FAIL_AT_EPOCH", "1");
    let wf = demo_workflow(&ws, |y| y);
    let out = ws.kiln(&strs(&run_args(&wf, "again", "{epochs: 2, imgsz: 64}")));
    assert_eq!(out.status.code(), Some(1));
    let id = run_id(&out);
    let fixed = Workspace {
        dir: ws.dir,
        env: ws
            .env
            .into_iter()
            .filter(|(k, _)| k != "FAKE_YOLO_FAIL_AT_EPOCH")
            .collect(),
    };
    let out = fixed.kiln(&["runs", "retry", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let show = fixed.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "succeeded");
    assert_eq!(
        step(&show, "extract")["attempt"],
        1,
        "succeeded steps are reused"
    );
    assert_eq!(step(&show, "resolve")["attempt"], 1);
    assert_eq!(step(&show, "train")["attempt"], 2);
    assert_eq!(step(&show, "register")["status"], "succeeded");
    assert_eq!(
        fixed
            .json(&["models", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let again = fixed.kiln(&["runs", "retry", &id]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "a succeeded run cannot be retried"
    );
}

const FAILS_SECOND: &str = r#"name: fails-second
steps:
  - {id: first, uses: hostile, action: ok}
  - {id: second, uses: hostile, action: panic, needs: [first]}
"#;

/// A run recorded before leases existed has `lease_epoch` 0, so its first lease after the
/// upgrade has epoch 1, like a new run's: a retry still reads its steps back (the succeeded one
/// is reused, the failed one gets its second attempt) instead of taking it for untouched.
#[test]
fn a_retry_reuses_the_steps_of_a_run_recorded_before_leases() {
    let ws = Workspace::new();
    let wf = ws.workflow("fails-second.yaml", FAILS_SECOND);
    let out = ws.kiln(&["run", &wf]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let id = run_id(&out);
    let before = ws.json(&["runs", "show", &id, "--json"]);
    let db = rusqlite::Connection::open(ws.root().join(".kiln/kiln.db")).unwrap();
    let changed = db
        .execute("UPDATE runs SET lease_epoch = 0 WHERE id = ?1", [&id])
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);

    let out = ws.kiln(&["runs", "retry", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let after = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(step(&after, "first")["attempt"], 1, "{after}");
    assert_eq!(
        step(&after, "first")["started_at"],
        step(&before, "first")["started_at"],
        "the succeeded step is reused"
    );
    assert_eq!(step(&after, "second")["attempt"], 2, "{after}");
}

/// After a clean exit the database file holds everything: the journal's writer folds the
/// write-ahead log into `kiln.db` before it closes, and the last connection removes the log. A
/// copy of `kiln.db` alone (a backup taken with nothing running) is whole, with every run in
/// it and none deleted since. Before, connections were dropped at exit in no order and the log
/// was usually left behind, holding the latest changes.
#[test]
fn after_a_clean_exit_the_database_file_alone_holds_every_run() {
    let ws = Workspace::new();
    let wf = ws.workflow(
        "two.yaml",
        "name: two\nsteps:\n  - {id: a, uses: hostile, action: ok}\n  - {id: b, uses: hostile, action: ok, needs: [a]}\n",
    );
    let copy = tempfile::tempdir().unwrap();
    // The runs in a copy of kiln.db alone, after checking it is whole.
    let runs_in_a_copy = |after: &str| -> Vec<String> {
        let alone = copy.path().join(format!("{}.db", after.replace(' ', "-")));
        std::fs::copy(ws.root().join(".kiln/kiln.db"), &alone).unwrap();
        let conn = rusqlite::Connection::open(&alone).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("the copy after {after}: {e}"));
        assert_eq!(check, "ok", "the copy after {after}");
        let mut ids = conn.prepare("SELECT id FROM runs ORDER BY id").unwrap();
        ids.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut ids = Vec::new();
    for i in 1..=3 {
        let out = ws.kiln(&["run", &wf]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        ids.push(run_id(&out));
        ids.sort();
        assert_eq!(runs_in_a_copy(&format!("run {i}")), ids);
        let listed = ws.kiln(&["runs", "list"]);
        assert!(listed.status.success(), "{}", text(&listed.stderr));
        assert_eq!(runs_in_a_copy(&format!("list {i}")), ids);
    }
    let deleted = ids.remove(1);
    let out = ws.kiln(&["runs", "delete", &deleted]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).matches("cannot release").count(),
        0,
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        runs_in_a_copy("delete"),
        ids,
        "the deleted run is gone from kiln.db"
    );
}

const MEMO: &str = r#"name: memo
steps:
  - id: cached
    uses: hostile
    action: ok
    cache: true
    with: {data: inputs/data.txt}
  - id: plain
    uses: hostile
    action: ok
    needs: [cached]
    with: {data: inputs/data.txt}
"#;

#[test]
fn memoized_steps_reuse_outputs_until_an_input_file_changes() {
    // Memoization keys on plugin, action, inputs and the files they name. (A step that works
    // in a training folder is never shared between runs: each training has its own run.)
    let ws = Workspace::new();
    let data = ws.root().join("inputs/data.txt");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    std::fs::write(&data, "v1").unwrap();
    let wf = ws.workflow("memo.yaml", MEMO);
    let first = ws.kiln(&["run", &wf]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let first = run_id(&first);
    let second = ws.kiln(&["run", &wf]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let second = run_id(&second);
    let show = ws.json(&["runs", "show", &second, "--json"]);
    assert_eq!(
        step(&show, "cached")["cached_from"],
        format!("{first}/cached")
    );
    assert_eq!(
        step(&show, "plain")["cached_from"],
        serde_json::Value::Null,
        "opt-in only"
    );
    let text_show = text(&ws.kiln(&["runs", "show", &second]).stdout);
    assert!(
        text_show.contains("cached: outputs reused from"),
        "{text_show}"
    );

    // The file named by an input changed: its digest is part of the key.
    std::fs::write(&data, "v2").unwrap();
    let third = ws.kiln(&["run", &wf]);
    assert!(third.status.success(), "{}", text(&third.stderr));
    let show = ws.json(&["runs", "show", &run_id(&third), "--json"]);
    assert_eq!(
        step(&show, "cached")["cached_from"],
        serde_json::Value::Null
    );
}

#[test]
fn runs_cancel_stops_a_run_from_another_process_alive_or_dead_engine() {
    let ws = Workspace::new().with_env("FAKE_YOLO_EPOCH_SECONDS", "20");
    let wf = demo_workflow(&ws, |y| y);

    // The engine is alive: it receives the request and stops its steps.
    let mut engine = ws.spawn(&strs(&run_args(&wf, "c1", "{epochs: 3, imgsz: 64}")));
    engine.wait_for(300, "yolo to start", || yolo_running(&ws));
    let id = find_run(&ws, "c1").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = ws.kiln(&["runs", "cancel", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(engine.wait().code(), Some(1), "{}", engine.stderr());
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "cancelled");
    assert_eq!(step(&show, "train")["status"], "cancelled");
    no_process_left(&ws);

    // The engine is dead: cancel stops the orphaned trainer itself.
    let mut engine = ws.spawn(&strs(&run_args(&wf, "c2", "{epochs: 3, imgsz: 64}")));
    engine.wait_for(300, "yolo to start", || yolo_running(&ws));
    kill(engine.id(), "KILL");
    engine.wait();
    // Looked at over a moment, not once: the stand-in trainer starts through `env` and
    // pyenv's shims, and a process's command line reads empty while it is being replaced.
    // A trainer that died with the engine would not come back.
    wait_for(5, "the trainer to outlive the engine", || yolo_running(&ws));
    let id = find_run(&ws, "c2").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = ws.kiln(&["runs", "cancel", &id, "--kill-grace-secs", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    no_process_left(&ws);
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "cancelled");
    assert!(show["run"]["finished_at"].is_string());
}

const TWO_TRAININGS: &str = r#"name: two
steps:
  - id: extract
    uses: builtin/extract-release
    with: {project: demo, release: demo-release.zip}
  - id: resolve
    uses: ultralytics
    action: resolve-config
    needs: [extract]
    with:
      project: demo
      training_name: a
      task: detect
      data: ${{ steps.extract.outputs.data_yaml }}
      overrides: {epochs: 2, imgsz: 64}
  - id: train_a
    uses: ultralytics
    action: train
    needs: [resolve]
    resources: {gpus: 1}
    with: {project: demo, training_name: a, task: detect, config: '${{ steps.resolve.outputs.config }}'}
  - id: train_b
    uses: ultralytics
    action: train
    needs: [resolve]
    resources: {gpus: 1}
    with: {project: demo, training_name: b, task: detect, config: '${{ steps.resolve.outputs.config }}'}
"#;

#[test]
fn gpu_steps_queue_for_free_devices_and_see_only_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("launches.txt");
    let ws = Workspace::new()
        .with_env("FAKE_YOLO_EPOCH_SECONDS", "0.5")
        .with_env("FAKE_YOLO_RECORD", record.to_str().unwrap())
        .with_env("KILN_GPUS", "1");
    let wf = ws.workflow("two.yaml", TWO_TRAININGS);
    let out = ws.kiln(&["run", &wf]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let l = launches(&record);
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(l.iter().all(|x| x.cuda == "0"), "{l:?}");
    let (first, second) = if l[0].start <= l[1].start {
        (&l[0], &l[1])
    } else {
        (&l[1], &l[0])
    };
    assert!(
        first.end.unwrap() <= second.start + 0.05,
        "with one GPU the trainings must not overlap: {l:?}"
    );
    let logs = text(&ws.kiln(&["logs", &run_id(&out)]).stdout);
    assert!(logs.contains("waiting for 1 free GPU(s)"), "{logs}");

    // Two GPUs: both run at once, on different devices (a new workspace: the trainings `a`
    // and `b` belong to the first run).
    std::fs::remove_file(&record).unwrap();
    let ws = Workspace::new()
        .with_env("FAKE_YOLO_EPOCH_SECONDS", "0.5")
        .with_env("FAKE_YOLO_RECORD", record.to_str().unwrap())
        .with_env("KILN_GPUS", "2");
    let wf = ws.workflow("two.yaml", TWO_TRAININGS);
    let out = ws.kiln(&["run", &wf]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut cuda: Vec<String> = launches(&record).into_iter().map(|x| x.cuda).collect();
    cuda.sort();
    assert_eq!(cuda, ["0", "1"]);

    // More GPUs than the machine has is a validation error.
    let too_many = ws.workflow(
        "greedy.yaml",
        &TWO_TRAININGS.replacen("gpus: 1", "gpus: 3", 1),
    );
    let out = ws.kiln(&["validate", &too_many]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("needs 3 GPUs but this machine has 2"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn cancelling_frees_the_gpu_only_when_the_training_is_gone() {
    let ws = Workspace::new()
        .with_env("FAKE_YOLO_EPOCH_SECONDS", "20")
        .with_env("KILN_GPUS", "1");
    let wf = ws.workflow("two.yaml", TWO_TRAININGS);
    let mut engine = ws.spawn(&["run", &wf, "--kill-grace-secs", "2"]);
    engine.wait_for(300, "yolo to start", || yolo_running(&ws));
    let lock = gpu_slots(&ws).join("gpu0.lock");
    assert!(
        ws.root().join(".kiln/gpus").exists(),
        "the GPU slots are under .kiln/gpus"
    );
    let free = || {
        std::process::Command::new("flock")
            .args(["-n", lock.to_str().unwrap(), "true"])
            .status()
            .unwrap()
            .success()
    };
    assert!(!free(), "the GPU is leased while training");
    kill(engine.id(), "INT");
    assert_eq!(engine.wait().code(), Some(1), "{}", engine.stderr());
    no_process_left(&ws);
    assert!(free(), "the GPU is free once the process group is gone");
}

/// This machine's GPU slot files in `ws` (`.kiln/gpus/<host>/`).
fn gpu_slots(ws: &Workspace) -> std::path::PathBuf {
    let host = std::process::Command::new("uname")
        .arg("-n")
        .output()
        .unwrap()
        .stdout;
    ws.root().join(".kiln/gpus").join(text(&host).trim())
}

#[test]
fn a_step_timeout_covers_its_wait_for_a_gpu() {
    let ws = Workspace::new().with_env("KILN_GPUS", "1");
    // Someone else holds the only GPU (a lease is a flock on its lock file, per machine).
    let gpus = gpu_slots(&ws);
    std::fs::create_dir_all(&gpus).unwrap();
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(gpus.join("gpu0.lock"))
        .unwrap();
    held.lock().unwrap();
    let wf = ws.workflow(
        "gpu-wait.yaml",
        "name: gpu-wait\nsteps:\n  - id: waiter\n    uses: hostile\n    action: ok\n    \
         timeout: 1s\n    resources: {gpus: 1}\n",
    );
    let out = ws.kiln(&["run", &wf]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    let waiter = step(&show, "waiter");
    assert_eq!(waiter["status"], "failed", "{show}");
    let err = waiter["error_message"].as_str().unwrap();
    assert!(
        err.contains("timed out after 1s") && err.contains("waiting for 1 free GPU(s)"),
        "{err}"
    );
    drop(held);
}

/// A supervisor of `/bin/sleep 60` in a new state folder, its stdout a pipe to this test;
/// `notices`: asked for as the engine does.
fn supervise_sleep(notices: bool) -> (tempfile::TempDir, std::process::Child) {
    let dir = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({
        "program": "/bin/sleep",
        "args": ["60"],
        "env": [],
        "cwd": dir.path(),
        "log_path": dir.path().join("program.log"),
    });
    std::fs::write(dir.path().join("spec.json"), spec.to_string()).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-supervise"));
    if notices {
        command.env("KILN_SUPERVISE_NOTICES", "1");
    }
    let supervisor = command
        .arg("supervise")
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (dir, supervisor)
}

/// The recorded program of a state folder, killed with its group.
fn kill_recorded(dir: &std::path::Path) {
    let child: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("child.json")).unwrap()).unwrap();
    let pgid = child["pgid"].as_i64().unwrap();
    assert!(pgid > 1, "{child}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// The engine follows a launch on this: the supervisor's stdout, a pipe from the engine, gets
/// one byte once `child.json` is written, while the program still runs (were it late, the read
/// below would last until the program's end), and reaches its end once `exit.json` can be
/// read. A supervisor not asked for these notices (by an older engine) closes its stdout once
/// `child.json` is written, which such an engine waits for.
#[test]
fn the_supervisor_tells_on_stdout_when_its_program_is_recorded_and_when_it_ended() {
    use std::io::Read;
    let (dir, mut supervisor) = supervise_sleep(true);
    let mut stdout = supervisor.stdout.take().unwrap();
    let mut started = [0u8; 1];
    stdout.read_exact(&mut started).unwrap();
    assert!(dir.path().join("child.json").exists());
    assert!(
        !dir.path().join("exit.json").exists(),
        "the supervisor told of its program only once it ended"
    );
    kill_recorded(dir.path());
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // Readable once stdout has closed, before the supervisor has ended.
    let exit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("exit.json")).unwrap()).unwrap();
    assert_eq!(exit["signal"], 9, "{exit}");
    assert_eq!(supervisor.wait().unwrap().code(), Some(128 + 9));

    let (dir, mut supervisor) = supervise_sleep(false);
    let mut written = Vec::new();
    let mut stdout = supervisor.stdout.take().unwrap();
    stdout.read_to_end(&mut written).unwrap();
    assert!(written.is_empty(), "{}", String::from_utf8_lossy(&written));
    assert!(dir.path().join("child.json").exists());
    assert!(
        !dir.path().join("exit.json").exists(),
        "the supervisor's stdout stayed open until its program ended"
    );
    kill_recorded(dir.path());
    assert_eq!(supervisor.wait().unwrap().code(), Some(128 + 9));
}
