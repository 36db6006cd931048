//! Test harness: a throwaway workspace driven through the real `kiln` binary, with the real
//! compiled plugins, real SQLite, and the stand-in `yolo` from tests/fixtures/bin on PATH.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A compiled plugin component; built by `scripts/build-plugins.sh --with-test-plugins`.
pub fn plugin_wasm(file: &str) -> PathBuf {
    let p = repo_root().join("target/wasm32-wasip2/plugin").join(file);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/build-plugins.sh --with-test-plugins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

/// What the test plugin's `remember` action returns in a fresh instance: nothing an earlier
/// instance left in its statics or memory (tests/plugins/hostile).
pub const PRISTINE: &str = "seen=0 mark=7 dirty=0";

pub const GRANTS: &str = "defaults: {memory_mb: 256, cpu_seconds_per_call: 10}\n\
plugins:\n  ultralytics: {programs: [yolo], env: [FAKE_YOLO_EPOCH_SECONDS, FAKE_YOLO_FAIL_AT_EPOCH, FAKE_YOLO_RECORD]}\n  hostile: {programs: [yolo], memory_mb: 64, cpu_seconds_per_call: 1}\n  mmdetection: {programs: [python], env: [FAKE_MMDET_EPOCH_SECONDS, FAKE_MMDET_FAIL_AT_EPOCH, FAKE_MMDET_NO_DETECTIONS, FAKE_MMDET_RECORD]}\n";

impl Workspace {
    /// A workspace with the demo release under projects/demo/releases and both plugins.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let repo = repo_root();
        std::fs::create_dir_all(root.join("projects/demo/releases")).unwrap();
        std::fs::copy(
            repo.join("workflows/data/demo-release.zip"),
            root.join("projects/demo/releases/demo-release.zip"),
        )
        .unwrap();
        for plugin in ["ultralytics", "mmdetection"] {
            copy_dir(
                &repo.join("configs").join(plugin),
                &root.join("configs").join(plugin),
            );
        }
        std::fs::write(root.join("configs/plugins.yaml"), GRANTS).unwrap();
        let plugins = root.join(".kiln/plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::copy(
            plugin_wasm("kiln_plugin_ultralytics.wasm"),
            plugins.join("ultralytics.wasm"),
        )
        .unwrap();
        std::fs::copy(
            plugin_wasm("kiln_plugin_mmdetection.wasm"),
            plugins.join("mmdetection.wasm"),
        )
        .unwrap();
        std::fs::copy(
            plugin_wasm("kiln_test_hostile.wasm"),
            plugins.join("hostile.wasm"),
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            repo.join("tests/fixtures/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = vec![
            ("PATH".into(), path),
            // Compiled plugins are shared by all tests: compile once per wasm digest.
            (
                "KILN_CACHE_DIR".into(),
                repo.join("target/kiln-test-cache").display().to_string(),
            ),
            ("KILN_USER".into(), "tester".into()),
            ("FAKE_YOLO_EPOCH_SECONDS".into(), "0.05".into()),
        ];
        Self { dir, env }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// This workspace with the stand-in `yolo` recording each launch (FAKE_YOLO_RECORD) in
    /// `launches.txt` at its root; read it with [`launches`].
    pub fn recording_launches(self) -> (Self, PathBuf) {
        let record = self.root().join("launches.txt");
        let ws = self.with_env("FAKE_YOLO_RECORD", record.to_str().unwrap());
        (ws, record)
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args(args)
            .current_dir(self.root())
            .env("KILN_WORKSPACE", self.root())
            .env_remove("KILN_DATABASE_URL")
            .env_remove("KILN_PLUGINS_DIR")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// `kiln args` started in the background, its stdout discarded and its stderr kept in a file
    /// of the workspace, for [`Background::wait_for`] to show when the engine stops too early.
    pub fn spawn(&self, args: &[&str]) -> Background {
        static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.root().join(format!("engine-{n}.stderr"));
        let child = self
            .command(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Background { child, log }
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Write a workflow file into the workspace and return its path.
    pub fn workflow(&self, name: &str, yaml: &str) -> String {
        let p = self.root().join(name);
        std::fs::write(&p, yaml).unwrap();
        p.display().to_string()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.kiln(args);
        assert!(
            out.status.success(),
            "kiln {args:?} failed: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("kiln {args:?} printed no JSON ({e}): {}", text(&out.stdout))
        })
    }

    /// Run the demo pipeline with these extra params; returns the output.
    pub fn run_demo(&self, training: &str, extra: &[&str]) -> Output {
        let args = demo_args(training, extra);
        self.kiln(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// `kiln run` of the demo pipeline (`workflows/ultralytics-detect.yaml`) training `training`,
/// then `extra`.
pub fn demo_args(training: &str, extra: &[&str]) -> Vec<String> {
    let wf = repo_root().join("workflows/ultralytics-detect.yaml");
    let mut args: Vec<String> = [
        "run",
        wf.to_str().unwrap(),
        "-p",
        "project=demo",
        "-p",
        "release=demo-release.zip",
        "-p",
        &format!("training_name={training}"),
        "-p",
        "overrides={epochs: 2, imgsz: 64, batch: 4, device: cpu}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The seed of a chaos test: `KILN_CHAOS_SEED` to replay one, else the clock. Printed.
pub fn chaos_seed() -> u64 {
    let seed = std::env::var("KILN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        });
    println!("chaos seed: {seed} (rerun with KILN_CHAOS_SEED={seed})");
    seed
}

/// A small deterministic generator for chaos schedules.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A consistent copy of the SQLite database `db`, taken now beside it (`VACUUM INTO`), as an
/// operator backs it up while Kiln runs; rename it over `db` to restore it.
#[allow(dead_code)]
pub fn backup_of(db: &Path) -> PathBuf {
    let backup = db.with_file_name("backup.db");
    rusqlite::Connection::open(db)
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    backup
}

/// What a Kiln process that found its database file `db` replaced leaves behind: it said so
/// (in `said`, its output), the old file's write-ahead log beside `db` is empty (the restored
/// file does not replay it), and the restored file is whole.
#[allow(dead_code)]
pub fn assert_left_the_restored_file_whole(db: &Path, said: &str) {
    assert!(
        said.contains(&format!(
            "the database file {} was replaced while this process had it open",
            db.display()
        )) && said.contains("then start again"),
        "{said}"
    );
    let wal = db.with_file_name("kiln.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the old file's log was left for the restored file to replay\n{said}"
    );
    let check: String = rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Processes whose command line mentions `needle` (scanning /proc).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && pid != std::process::id() as i32 {
            found.push((pid, cmd));
        }
    }
    found
}

/// The run whose `training_name` param is `training`, if it was recorded.
pub fn find_run(ws: &Workspace, training: &str) -> Option<serde_json::Value> {
    ws.json(&["runs", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["params"]["training_name"] == training)
        .cloned()
}

/// A step of `kiln runs show --json` output by id.
pub fn step<'a>(show: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {show}"))
}

/// The error message of step `id` in `kiln runs show --json` output (the step must have one).
pub fn step_error(show: &serde_json::Value, id: &str) -> String {
    step(show, id)["error_message"]
        .as_str()
        .unwrap_or_else(|| panic!("step {id} has no error: {show}"))
        .to_owned()
}

/// The run id: the last line `kiln run` prints on stdout.
pub fn run_id(out: &Output) -> String {
    text(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Send `signal` (e.g. "KILL", "INT") to `pid`.
pub fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

/// A `kiln` process started by [`Workspace::spawn`].
pub struct Background {
    pub child: std::process::Child,
    log: PathBuf,
}

impl Background {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `cond` holds while the process runs. Panics with its exit status and stderr when
    /// it ends first, or after `secs` seconds (a bound for a hung engine, not a timing claim: a
    /// loaded CI machine compiling plugins and importing MMEngine in parallel tests is slow).
    pub fn wait_for(&mut self, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !cond() {
            if let Some(status) = self.child.try_wait().unwrap() {
                if cond() {
                    return;
                }
                panic!(
                    "kiln ended ({status}) before {what}; its stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed().as_secs() < secs,
                "timed out after {secs} s waiting for {what}; kiln's stderr so far:\n{}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }

    /// Wait for the process to end.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

/// Wait until `cond` holds, polling; panics with `what` after `secs` seconds.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed().as_secs() < secs,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// One launch of the stand-in trainer, from its FAKE_YOLO_RECORD file.
#[derive(Debug, Clone)]
pub struct Launch {
    pub pid: u32,
    pub argv: Vec<String>,
    pub cuda: String,
    pub start: f64,
    pub end: Option<f64>,
}

pub fn launches(record: &Path) -> Vec<Launch> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let mut out: Vec<Launch> = Vec::new();
    for line in text.lines() {
        let (pid, rest) = line.split_once(' ').unwrap();
        let pid: u32 = pid.parse().unwrap();
        if let Some(end) = rest.strip_prefix("end=") {
            if let Some(l) = out.iter_mut().rev().find(|l| l.pid == pid) {
                l.end = end.parse().ok();
            }
            continue;
        }
        let argv_end = rest.rfind(" cuda=").unwrap();
        let argv: Vec<String> = serde_json::from_str(&rest[..argv_end]).unwrap();
        let tail = &rest[argv_end + 1..];
        let (cuda, start) = tail.split_once(" start=").unwrap();
        out.push(Launch {
            pid,
            argv,
            cuda: cuda.trim_start_matches("cuda=").to_owned(),
            start: start.parse().unwrap(),
            end: None,
        });
    }
    out
}
