//! Trainings as Slurm jobs (`configs/launchers.yaml`: `launcher: slurm`) on a real one-node
//! cluster (`scripts/start-slurm.sh`; scripts/test.sh starts it and sets KILN_TEST_SLURM_CONF):
//! the unchanged Ultralytics plugin and the stand-in `yolo` run under the supervisor as the
//! job's batch script; the step's GPUs become `--gres` (Slurm sets CUDA_VISIBLE_DEVICES); a
//! killed engine re-attaches by job id without a second trainer; cancel ends the job; a job
//! Slurm cancels is an infrastructure failure retried from the checkpoint; what sbatch refuses
//! is the step's error in Slurm's words. Without KILN_TEST_SLURM_CONF the tests say so and pass.

mod common;
#[path = "common/api.rs"]
mod http;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use common::*;

/// The one-node cluster has 2 CPUs and 2 GPUs: its tests take turns.
static CLUSTER: Mutex<()> = Mutex::new(());

fn cluster() -> Option<(std::sync::MutexGuard<'static, ()>, String)> {
    let Ok(conf) = std::env::var("KILN_TEST_SLURM_CONF") else {
        eprintln!("KILN_TEST_SLURM_CONF is not set: skipped (scripts/test.sh starts a cluster)");
        return None;
    };
    assert!(
        PathBuf::from(&conf).is_file(),
        "KILN_TEST_SLURM_CONF={conf} is not a file: run scripts/start-slurm.sh"
    );
    Some((CLUSTER.lock().unwrap_or_else(|e| e.into_inner()), conf))
}

/// A workspace whose launcher is Slurm (with `slurm_yaml` as its `slurm:` options), and the
/// demo workflow with `edit` applied: no backoff before a retry, the train step's GPUs.
fn slurm_workspace(conf: &str, slurm_yaml: &str, edit: &str) -> (Workspace, String) {
    let ws = Workspace::new()
        .with_env("SLURM_CONF", conf)
        .with_env("FAKE_YOLO_EPOCH_SECONDS", "1");
    std::fs::write(
        ws.root().join("configs/launchers.yaml"),
        format!("launcher: slurm\nslurm: {slurm_yaml}\n"),
    )
    .unwrap();
    let yaml = std::fs::read_to_string(repo_root().join("workflows/ultralytics-detect.yaml"))
        .unwrap()
        .replace("backoff: 30s", "backoff: 0s")
        .replace(
            "    # On a GPU machine, lease a device: resources: {gpus: 1}\n",
            edit,
        );
    let wf = ws.workflow("slurm.yaml", &yaml);
    (ws, wf)
}

fn run_args(wf: &str, training: &str) -> Vec<String> {
    [
        "run",
        wf,
        "-p",
        "project=demo",
        "-p",
        "release=demo-release.zip",
        "-p",
        &format!("training_name={training}"),
        "-p",
        "overrides={epochs: 2, imgsz: 64}",
        "--kill-grace-secs",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn slurm(conf: &str, args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("SLURM_CONF", conf)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The Slurm job ids recorded under the run's state folder, in launch order.
fn jobs(ws: &Workspace, run: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![ws.root().join(format!(".kiln/runs/{run}/state"))];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().is_some_and(|n| n == "slurm-job.json") {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                found.push(v["job_id"].as_str().unwrap().to_owned());
            }
        }
    }
    found.sort_by_key(|id| id.parse::<u64>().unwrap_or(0));
    found
}

fn job_field(conf: &str, id: &str, key: &str) -> String {
    let out = slurm(conf, &["scontrol", "show", "job", "--oneliner", id]);
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_owned()
}

fn queued(conf: &str, id: &str) -> bool {
    slurm(conf, &["squeue", "--noheader", "--format=%i", "--jobs", id])
        .lines()
        .any(|l| l.trim() == id)
}

fn the_run(ws: &Workspace, training: &str) -> serde_json::Value {
    find_run(ws, training).unwrap_or_else(|| panic!("no run of {training}"))
}

#[test]
fn a_training_runs_as_a_slurm_job_holding_its_gpus() {
    let Some((_cluster, conf)) = cluster() else {
        return;
    };
    let (ws, wf) = slurm_workspace(&conf, "{partition: debug}", "    resources: {gpus: 1}\n");
    let (ws, record) = ws.recording_launches();
    let out = ws.kiln(&strs(&run_args(&wf, "s1")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = run_id(&out);
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "succeeded", "{show}");
    let jobs = jobs(&ws, &id);
    assert_eq!(jobs.len(), 1, "one job for the one launch: {jobs:?}");
    assert_eq!(job_field(&conf, &jobs[0], "JobState"), "COMPLETED");
    assert_eq!(job_field(&conf, &jobs[0], "Partition"), "debug");
    assert!(
        job_field(&conf, &jobs[0], "TresPerNode").contains("gpu:1"),
        "{}",
        slurm(&conf, &["scontrol", "show", "job", &jobs[0]])
    );
    // The GPU Slurm gave the job is the one the trainer saw; the engine took no local slot.
    let launches = launches(&record);
    assert_eq!(launches.len(), 1);
    assert_eq!(launches[0].cuda, "0", "CUDA_VISIBLE_DEVICES from Slurm");
    assert!(!ws.root().join(".kiln/gpus").exists(), "no local GPU slot");
    let events = text(&ws.kiln(&["logs", &id, "--step", "train"]).stdout);
    assert!(
        events.contains(&format!("runs in Slurm job {}", jobs[0])),
        "{events}"
    );
}

#[test]
fn a_killed_engine_re_attaches_to_its_job_and_cancel_ends_it() {
    let Some((_cluster, conf)) = cluster() else {
        return;
    };
    let (ws, wf) = slurm_workspace(&conf, "{}", "");
    let (ws, record) = ws.recording_launches();
    let ws = ws.with_env("FAKE_YOLO_EPOCH_SECONDS", "2");

    // Killed mid-training: the job goes on; `kiln resume` follows it by its id.
    let mut engine = ws.spawn(&strs(&run_args(&wf, "k1")));
    engine.wait_for(300, "the trainer to start in its job", || {
        launches(&record).len() == 1
    });
    kill(engine.id(), "KILL");
    engine.wait();
    let id = the_run(&ws, "k1")["id"].as_str().unwrap().to_owned();
    let job = jobs(&ws, &id).pop().expect("the job id is recorded");
    assert!(queued(&conf, &job), "the job outlives the engine");
    let out = ws.kiln(&["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("in Slurm job {job}"))
            || text(&out.stderr).contains(&format!("in Slurm job {job}")),
        "re-attached by job id: {}",
        text(&out.stdout)
    );
    assert_eq!(
        ws.json(&["runs", "show", &id, "--json"])["run"]["status"],
        "succeeded"
    );
    assert_eq!(launches(&record).len(), 1, "the trainer ran once");
    assert_eq!(jobs(&ws, &id).len(), 1, "one job");

    // Cancelled from another process while the engine runs: the job ends, the run is
    // cancelled, no trainer is left.
    let ws = ws.with_env("FAKE_YOLO_EPOCH_SECONDS", "30");
    let mut engine = ws.spawn(&strs(&run_args(&wf, "c1")));
    engine.wait_for(300, "the second trainer to start", || {
        launches(&record).len() == 2
    });
    let id = the_run(&ws, "c1")["id"].as_str().unwrap().to_owned();
    let job = jobs(&ws, &id).pop().unwrap();
    let out = ws.kiln(&["runs", "cancel", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(engine.wait().code(), Some(1), "{}", engine.stderr());
    assert!(!queued(&conf, &job), "the job has left the queue");
    // The program got SIGTERM through its supervisor, which recorded it and ended the job with
    // the program's status (128 + 15).
    assert_eq!(job_field(&conf, &job, "JobState"), "FAILED");
    assert_eq!(job_field(&conf, &job, "ExitCode"), "143:0");
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "cancelled", "{show}");
    assert!(
        processes_mentioning(&ws.root().display().to_string())
            .iter()
            .all(|(_, c)| !c.contains("yolo")),
        "no trainer left"
    );
}

#[test]
fn a_job_that_slurm_cancels_is_retried_from_its_checkpoint() {
    let Some((_cluster, conf)) = cluster() else {
        return;
    };
    let (ws, wf) = slurm_workspace(&conf, "{}", "");
    let (ws, record) = ws.recording_launches();
    let ws = ws.with_env("FAKE_YOLO_EPOCH_SECONDS", "2");
    let mut engine = ws.spawn(&strs(&run_args(&wf, "p1")));
    let last = ws
        .root()
        .join("projects/demo/model/training/p1/weights/last.pt");
    engine.wait_for(300, "the first epoch's checkpoint", || last.exists());
    let id = the_run(&ws, "p1")["id"].as_str().unwrap().to_owned();
    let job = jobs(&ws, &id).pop().unwrap();
    // Slurm, not Kiln, stops the job (an operator's scancel, a preemption).
    slurm(&conf, &["scancel", &job]);
    assert_eq!(engine.wait().code(), Some(0), "{}", engine.stderr());
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "succeeded", "{show}");
    let train = step(&show, "train");
    assert_eq!(train["attempt"], 2, "{train}");
    assert!(
        train["outputs"]["resumed_from_epoch"].as_i64() >= Some(1),
        "resumed from the checkpoint: {train}"
    );
    let jobs = jobs(&ws, &id);
    assert_eq!(jobs.len(), 2, "a second job for the retry: {jobs:?}");
    let log = text(&ws.kiln(&["logs", &id]).stdout);
    assert!(
        log.contains(&format!("Slurm job {job} ended CANCELLED")) && log.contains("infrastructure"),
        "{log}"
    );
    assert_eq!(
        launches(&record).len(),
        2,
        "the trainer, then its resumption"
    );
}

#[test]
fn what_sbatch_refuses_is_the_steps_error_in_slurms_words() {
    let Some((_cluster, conf)) = cluster() else {
        return;
    };
    let (ws, wf) = slurm_workspace(&conf, "{partition: nope}", "");
    let out = ws.kiln(&strs(&run_args(&wf, "b1")));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    let error = step_error(&show, "train");
    assert!(
        error.contains("sbatch") && error.contains("Invalid partition name"),
        "{error}"
    );
    assert_eq!(step(&show, "train")["attempt"], 1, "not retried: {show}");

    let (ws, wf) = slurm_workspace(&conf, "{}", "    resources: {gpus: 3}\n");
    let out = ws.kiln(&strs(&run_args(&wf, "b2")));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    let error = step_error(&show, "train");
    assert!(
        error.contains("Requested node configuration is not available"),
        "3 GPUs, the cluster's node has 2: {error}"
    );

    // A mistake in the launchers file names the key, before anything runs.
    std::fs::write(
        ws.root().join("configs/launchers.yaml"),
        "launcher: slurm\nslurm: {sbatch_args: [--time=5]}\n",
    )
    .unwrap();
    let out = ws.kiln(&strs(&run_args(&wf, "b3")));
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("launchers.yaml") && err.contains("sbatch_args[0]") && err.contains("--time"),
        "{err}"
    );
}

#[test]
fn a_job_waiting_in_the_queue_says_why_as_its_progress() {
    let Some((_cluster, conf)) = cluster() else {
        return;
    };
    // Someone else's job holds both GPUs of the cluster.
    let blocker = slurm(
        &conf,
        &[
            "sbatch",
            "--parsable",
            "--output=/dev/null",
            "--gres=gpu:2",
            "--wrap",
            "sleep 120",
        ],
    )
    .trim()
    .to_owned();
    assert!(blocker.parse::<u64>().is_ok(), "sbatch: {blocker}");
    let (ws, wf) = slurm_workspace(&conf, "{}", "    resources: {gpus: 1}\n");
    let mut engine = ws.spawn(&strs(&run_args(&wf, "q1")));
    let mut show = serde_json::Value::Null;
    engine.wait_for(300, "the step to report its queued job", || {
        let Some(run) = ws
            .json(&["runs", "list", "--json"])
            .as_array()
            .unwrap()
            .first()
            .cloned()
        else {
            return false;
        };
        show = ws.json(&["runs", "show", run["id"].as_str().unwrap(), "--json"]);
        step(&show, "train")["progress"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(" is PENDING ("))
    });
    let id = show["run"]["id"].as_str().unwrap().to_owned();
    let human = text(&ws.kiln(&["runs", "show", &id]).stdout);
    assert!(human.contains("is PENDING ("), "{human}");
    slurm(&conf, &["scancel", &blocker]);
    assert_eq!(engine.wait().code(), Some(0), "{}", engine.stderr());
    let show = ws.json(&["runs", "show", &id, "--json"]);
    assert_eq!(show["run"]["status"], "succeeded", "{show}");
}

/// An engine killed after sbatch accepted the job but before it recorded the job's id: the
/// resumed engine finds the job by its name and follows it; no second job, no second trainer.
#[test]
fn a_job_whose_id_was_never_recorded_is_found_by_its_name() {
    let Some((_cluster, conf)) = cluster() else {
        return;
    };
    let (ws, wf) = slurm_workspace(&conf, "{}", "");
    // Slurm's commands as they are, but sbatch answers 30 s late, after telling the test.
    let bin = ws.root().join("slurm-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let submitted = ws.root().join("submitted");
    for name in ["sbatch", "squeue", "scontrol", "scancel"] {
        let real = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .unwrap();
        let real = text(&real.stdout).trim().to_owned();
        let body = if name == "sbatch" {
            format!(
                "#!/bin/sh\nout=$('{real}' \"$@\") || exit $?\ntouch '{}'\nsleep 30\necho \"$out\"\n",
                submitted.display()
            )
        } else {
            format!("#!/bin/sh\nexec '{real}' \"$@\"\n")
        };
        let path = bin.join(name);
        std::fs::write(&path, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        ws.root().join("configs/launchers.yaml"),
        format!("launcher: slurm\nslurm: {{bin_dir: '{}'}}\n", bin.display()),
    )
    .unwrap();
    let (ws, record) = ws.recording_launches();
    let ws = ws.with_env("FAKE_YOLO_EPOCH_SECONDS", "2");
    let mut engine = ws.spawn(&strs(&run_args(&wf, "u1")));
    engine.wait_for(300, "sbatch to accept the job", || submitted.exists());
    kill(engine.id(), "KILL");
    engine.wait();
    let id = the_run(&ws, "u1")["id"].as_str().unwrap().to_owned();
    assert!(jobs(&ws, &id).is_empty(), "the id was not recorded");
    let out = ws.kiln(&["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        ws.json(&["runs", "show", &id, "--json"])["run"]["status"],
        "succeeded"
    );
    assert_eq!(
        jobs(&ws, &id).len(),
        1,
        "found and recorded, not submitted again"
    );
    assert_eq!(launches(&record).len(), 1, "one trainer");
}

/// Two `kiln serve` engines on one database and workspace (PostgreSQL in scripts/test.sh):
/// the engine executing a training in a Slurm job is SIGKILLed; the other takes the run over,
/// follows the same job by its id, and the run succeeds with one trainer. Cancel through the
/// API ends the job and records the run cancelled.
#[test]
fn another_engine_takes_over_a_killed_engines_slurm_job() {
    let Some((_cluster, conf)) = cluster() else {
        return;
    };
    let (ws, _wf) = slurm_workspace(&conf, "{}", "");
    let (ws, record) = ws.recording_launches();
    let ws = ws.with_env("FAKE_YOLO_EPOCH_SECONDS", "2");
    let aws = http::ApiWorkspace::with(ws, http::fresh_postgres());
    let token = aws.token("trainer", &[], &["trainer"]);
    let mut a = aws.serve();
    let b = aws.serve();
    let body = http::demo_run("takeover");
    let r = a.post("/api/v1/runs", &token, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_for(300, "the trainer to start in its job", || {
        launches(&record).len() == 1
    });
    let job = jobs(&aws.ws, &id).pop().expect("the job id is recorded");
    a.kill();
    assert!(queued(&conf, &job), "the job outlives the engine");
    let run = b.wait_run(&id, &token, 300);
    assert_eq!(run["status"], "succeeded", "{run}\n{}", b.log_text());
    assert_eq!(launches(&record).len(), 1, "the trainer ran once");
    assert_eq!(jobs(&aws.ws, &id), vec![job], "one job, followed by its id");
    assert!(b.log_text().contains("recovering run"), "{}", b.log_text());

    // Cancelled over HTTP while B runs it: the job leaves the queue, the run is cancelled.
    let http::ApiWorkspace { ws, database_url } = aws;
    let aws = http::ApiWorkspace {
        ws: ws.with_env("FAKE_YOLO_EPOCH_SECONDS", "30"),
        database_url,
    };
    let c = aws.serve();
    drop(b);
    let r = c.post("/api/v1/runs", &token, &http::demo_run("cancelled"));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    wait_for(300, "the second trainer to start", || {
        launches(&record).len() == 2
    });
    let job = jobs(&aws.ws, &id).pop().unwrap();
    let r = c.post(
        &format!("/api/v1/runs/{id}/cancel"),
        &token,
        &serde_json::json!({}),
    );
    assert!(r.status < 300, "{}", r.text());
    let run = c.wait_run(&id, &token, 120);
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(!queued(&conf, &job), "the job has left the queue");
}

/// A launch started without Slurm (the workspace used the local launcher then) is followed as
/// such after the workspace switched to Slurm: no job is submitted for it and the trainer runs
/// once.
#[test]
fn a_local_launch_is_followed_after_the_workspace_switched_to_slurm() {
    let Some((_cluster, conf)) = cluster() else {
        return;
    };
    let (ws, wf) = slurm_workspace(&conf, "{}", "");
    std::fs::write(
        ws.root().join("configs/launchers.yaml"),
        "launcher: local\n",
    )
    .unwrap();
    let (ws, record) = ws.recording_launches();
    let ws = ws.with_env("FAKE_YOLO_EPOCH_SECONDS", "2");
    let mut engine = ws.spawn(&strs(&run_args(&wf, "switched")));
    engine.wait_for(300, "the trainer to start", || launches(&record).len() == 1);
    kill(engine.id(), "KILL");
    engine.wait();
    std::fs::write(
        ws.root().join("configs/launchers.yaml"),
        "launcher: slurm\nslurm: {}\n",
    )
    .unwrap();
    let id = the_run(&ws, "switched")["id"].as_str().unwrap().to_owned();
    let out = ws.kiln(&["resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(launches(&record).len(), 1, "the trainer ran once");
    assert!(jobs(&ws, &id).is_empty(), "no Slurm job for a local launch");
}
