//! Test harness for Kiln plugins: runs a built component's actions in plain `cargo test`,
//! against a scripted host instead of the engine.
//!
//! - Launched programs follow a [`Script`]: output lines, files written (relative to the
//!   program's working directory), an exit code or signal. A program without a script is
//!   refused, as the engine refuses one that is not granted.
//! - Logs, progress updates and checkpoints are recorded in the [`Outcome`], with every launch.
//! - Granted directories are real directories (a temp dir in a test), preopened at the guest
//!   paths the engine uses (`/data`, `/output`, `/config`).
//!
//! ```no_run
//! use kiln_plugin_test::{Plugin, Script, Step};
//! let plugin = Plugin::build(env!("CARGO_MANIFEST_DIR")).unwrap();
//! let out = tempfile_dir();
//! # fn tempfile_dir() -> std::path::PathBuf { std::env::temp_dir() }
//! let outcome = plugin.run(
//!     "train",
//!     Step::new(serde_json::json!({"epochs": 2}))
//!         .dir("training-output", &out, true)
//!         .program("yolo", Script::new().line("Epoch 1/2").writes("weights/best.pt", b"w").exits(0)),
//! );
//! assert!(outcome.result.is_ok());
//! ```
//!
//! The component is built with `cargo build --target wasm32-wasip2` ([`Plugin::build`]) or
//! loaded from a file ([`Plugin::load`]). Everything runs synchronously; no async runtime.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "plugin",
    });
}

pub use bindings::kiln::plugin::log::Level;
pub use bindings::kiln::plugin::progress::{Checkpoint, Update};
pub use bindings::kiln::plugin::types::{
    ActionInfo, ErrorKind, InputInfo, InputKind, OutputInfo, PluginInfo, RetryReason,
};
use bindings::kiln::plugin::{log, process, progress, types};

/// What went wrong outside the plugin (building, loading, instantiating it).
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The guest path of a directory role, as the engine grants it.
pub fn guest_path(role: &str) -> String {
    match role {
        "training-data" => "/data".into(),
        "training-output" => "/output".into(),
        "config" => "/config".into(),
        other => format!("/{other}"),
    }
}

/// What a scripted program does when the plugin launches it.
#[derive(Debug, Clone, Default)]
pub struct Script {
    lines: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
    code: i32,
    signal: Option<i32>,
}

impl Script {
    /// A program that prints nothing and exits 0.
    pub fn new() -> Self {
        Self::default()
    }
    /// Prints `line` (a newline is added).
    pub fn line(mut self, line: impl Into<String>) -> Self {
        self.lines.push(line.into());
        self
    }
    /// Prints every line of `text` (e.g. a captured log, `include_str!`).
    pub fn output(mut self, text: &str) -> Self {
        self.lines.extend(text.lines().map(str::to_owned));
        self
    }
    /// Writes `bytes` to `path` (relative to its working directory, or absolute) before it
    /// prints anything.
    pub fn writes(mut self, path: impl Into<String>, bytes: impl AsRef<[u8]>) -> Self {
        self.files.push((path.into(), bytes.as_ref().to_vec()));
        self
    }
    /// Exits with `code`.
    pub fn exits(mut self, code: i32) -> Self {
        self.code = code;
        self.signal = None;
        self
    }
    /// Is killed by `signal`.
    pub fn killed_by(mut self, signal: i32) -> Self {
        self.signal = Some(signal);
        self
    }
}

/// One step as the plugin will see it.
#[derive(Debug, Clone)]
pub struct Step {
    inputs: serde_json::Value,
    dirs: Vec<(String, PathBuf, bool)>,
    programs: BTreeMap<String, VecDeque<Script>>,
    attempt: u32,
    retry: Option<(RetryReason, String)>,
}

impl Step {
    /// A first attempt with these `with` inputs (a JSON object).
    pub fn new(inputs: serde_json::Value) -> Self {
        Self {
            inputs,
            dirs: Vec::new(),
            programs: BTreeMap::new(),
            attempt: 1,
            retry: None,
        }
    }
    /// Grants `host` to the step with `role` ("training-data", "training-output", "config").
    pub fn dir(mut self, role: &str, host: impl AsRef<Path>, writable: bool) -> Self {
        self.dirs
            .push((role.to_owned(), host.as_ref().to_owned(), writable));
        self
    }
    /// Grants `program`; each launch of it plays the next script (the last one repeats).
    pub fn program(mut self, program: &str, script: Script) -> Self {
        self.programs
            .entry(program.to_owned())
            .or_default()
            .push_back(script);
        self
    }
    /// The `n`-th attempt, retrying after `reason` with `previous_error`.
    pub fn retry(mut self, n: u32, reason: RetryReason, previous_error: &str) -> Self {
        self.attempt = n;
        self.retry = Some((reason, previous_error.to_owned()));
        self
    }
}

/// One launch the plugin made.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
}

/// Everything a run of an action did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The outputs (a JSON object), or the step error's kind and message.
    pub result: Result<serde_json::Value, (ErrorKind, String)>,
    pub logs: Vec<(Level, String)>,
    pub progress: Vec<Update>,
    pub checkpoints: Vec<Checkpoint>,
    pub launches: Vec<Launch>,
}

impl Outcome {
    /// The outputs; panics with the error (and the plugin's logs) when the step failed.
    pub fn outputs(&self) -> &serde_json::Value {
        match &self.result {
            Ok(v) => v,
            Err((kind, message)) => panic!(
                "the step failed ({kind:?}): {message}\nlogs:\n{}",
                self.log_text()
            ),
        }
    }
    /// The step error; panics when the step succeeded.
    pub fn error(&self) -> &(ErrorKind, String) {
        match &self.result {
            Err(e) => e,
            Ok(v) => panic!("the step succeeded with {v}"),
        }
    }
    /// The log lines, one per line.
    pub fn log_text(&self) -> String {
        self.logs
            .iter()
            .map(|(level, m)| format!("{level:?}: {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Running {
    output: Vec<u8>,
    sent: usize,
    exit: (Option<i32>, Option<i32>),
}

struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    scripts: BTreeMap<String, VecDeque<Script>>,
    dirs: Vec<(String, PathBuf, bool)>,
    running: Vec<Running>,
    logs: Vec<(Level, String)>,
    progress: Vec<Update>,
    checkpoints: Vec<Checkpoint>,
    launches: Vec<Launch>,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for Host {}

impl log::Host for Host {
    fn write(&mut self, level: Level, message: String) {
        self.logs.push((level, message));
    }
}

impl progress::Host for Host {
    fn report(&mut self, update: Update) {
        self.progress.push(update);
    }
    fn report_checkpoint(&mut self, checkpoint: Checkpoint) {
        self.checkpoints.push(checkpoint);
    }
}

impl process::Host for Host {
    fn launch(&mut self, spec: process::Spec) -> Result<u64, String> {
        let Some(queue) = self.scripts.get_mut(&spec.program) else {
            return Err(format!(
                "program `{}` is not granted to this plugin (the test scripted: {})",
                spec.program,
                self.scripts.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        let script = if queue.len() > 1 {
            queue.pop_front().unwrap_or_default()
        } else {
            queue.front().cloned().unwrap_or_default()
        };
        let output_dir = self
            .dirs
            .iter()
            .find(|(role, _, _)| role == "training-output")
            .map(|(_, p, _)| p.display().to_string());
        let cwd = spec
            .cwd
            .clone()
            .or(output_dir)
            .unwrap_or_else(|| ".".into());
        for (path, bytes) in &script.files {
            let path = Path::new(&cwd).join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let mut output = Vec::new();
        for line in &script.lines {
            output.extend_from_slice(line.as_bytes());
            output.push(b'\n');
        }
        self.launches.push(Launch {
            program: spec.program,
            args: spec.args,
            env: spec.env,
            cwd,
        });
        self.running.push(Running {
            output,
            sent: 0,
            exit: match script.signal {
                Some(signal) => (None, Some(signal)),
                None => (Some(script.code), None),
            },
        });
        Ok(self.running.len() as u64 - 1)
    }

    fn read_output(
        &mut self,
        handle: u64,
        max_bytes: u32,
        _timeout_ms: u32,
    ) -> Result<process::OutputChunk, String> {
        let running = self
            .running
            .get_mut(handle as usize)
            .ok_or_else(|| format!("no launch {handle}"))?;
        let end = (running.sent + max_bytes.max(1) as usize).min(running.output.len());
        let data = running.output[running.sent..end].to_vec();
        running.sent = end;
        // As the engine does: the end comes in a chunk of its own, with no data.
        Ok(process::OutputChunk {
            finished: data.is_empty(),
            data,
        })
    }

    fn wait(&mut self, handle: u64) -> Result<process::ExitStatus, String> {
        let running = self
            .running
            .get(handle as usize)
            .ok_or_else(|| format!("no launch {handle}"))?;
        let (code, signal) = running.exit;
        Ok(process::ExitStatus {
            code,
            signal,
            success: code == Some(0),
        })
    }
}

/// A plugin component, compiled and ready to run actions.
pub struct Plugin {
    engine: Engine,
    linker: Linker<Host>,
    component: Component,
    info: PluginInfo,
}

impl Plugin {
    /// Builds the plugin crate at `manifest_dir` (pass `env!("CARGO_MANIFEST_DIR")`) with
    /// `cargo build --target wasm32-wasip2` and loads it. The `plugin` profile is used when the
    /// crate or its workspace defines one (Kiln's repository and `kiln plugin new` crates
    /// do), else `release`.
    pub fn build(manifest_dir: &str) -> Result<Self, Error> {
        // Once per test process: tests of one crate run in parallel threads.
        static BUILT: std::sync::Mutex<BTreeMap<String, PathBuf>> =
            std::sync::Mutex::new(BTreeMap::new());
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        let file = match built.get(manifest_dir) {
            Some(file) => file.clone(),
            None => {
                let file = Self::cargo_build(manifest_dir)?;
                built.insert(manifest_dir.to_owned(), file.clone());
                file
            }
        };
        drop(built);
        Self::load(&file)
    }

    fn cargo_build(manifest_dir: &str) -> Result<PathBuf, Error> {
        let dir = Path::new(manifest_dir);
        let metadata = Command::new(cargo())
            .current_dir(dir)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .map_err(|e| Error(format!("cannot run cargo metadata: {e}")))?;
        if !metadata.status.success() {
            return Err(Error(format!(
                "cargo metadata failed in {manifest_dir}: {}",
                String::from_utf8_lossy(&metadata.stderr)
            )));
        }
        let meta: serde_json::Value = serde_json::from_slice(&metadata.stdout)
            .map_err(|e| Error(format!("cargo metadata: {e}")))?;
        let manifest = dir.join("Cargo.toml");
        let manifest = manifest.canonicalize().unwrap_or(manifest);
        let package = meta["packages"]
            .as_array()
            .and_then(|p| {
                p.iter().find(|p| {
                    p["manifest_path"]
                        .as_str()
                        .is_some_and(|m| Path::new(m) == manifest)
                })
            })
            .and_then(|p| p["name"].as_str())
            .ok_or_else(|| Error(format!("no package in {}", manifest.display())))?
            .to_owned();
        let target_dir = PathBuf::from(meta["target_directory"].as_str().unwrap_or("target"));
        let root = PathBuf::from(meta["workspace_root"].as_str().unwrap_or(manifest_dir));
        let profile = if defines_plugin_profile(&root.join("Cargo.toml")) {
            "plugin"
        } else {
            "release"
        };
        let status = Command::new(cargo())
            .current_dir(dir)
            .args([
                "build",
                "--target",
                "wasm32-wasip2",
                "--profile",
                profile,
                "-p",
            ])
            .arg(&package)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .status()
            .map_err(|e| Error(format!("cannot run cargo build: {e}")))?;
        if !status.success() {
            return Err(Error(format!(
                "cargo build --target wasm32-wasip2 -p {package} failed (is the target \
                 installed? rustup target add wasm32-wasip2)"
            )));
        }
        Ok(target_dir
            .join("wasm32-wasip2")
            .join(profile)
            .join(format!("{}.wasm", package.replace('-', "_"))))
    }

    /// Loads a built component.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let engine = Engine::default();
        let component = Component::from_file(&engine, path)
            .map_err(|e| Error(format!("{}: {e:#}", path.display())))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| Error(format!("{e:#}")))?;
        bindings::Plugin::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)
            .map_err(|e| Error(format!("{e:#}")))?;
        let mut plugin = Self {
            engine,
            linker,
            component,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                actions: Vec::new(),
                programs: Vec::new(),
            },
        };
        let (mut store, instance) = plugin.instantiate(&Step::new(serde_json::json!({})))?;
        plugin.info = instance
            .call_describe(&mut store)
            .map_err(|e| Error(format!("describe() failed: {e:#}")))?;
        Ok(plugin)
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    fn instantiate(&self, step: &Step) -> Result<(Store<Host>, bindings::Plugin), Error> {
        let mut wasi = WasiCtxBuilder::new();
        for (role, host, writable) in &step.dirs {
            std::fs::create_dir_all(host).map_err(|e| Error(format!("{}: {e}", host.display())))?;
            let perms = if *writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(host, guest_path(role), perms)
                .map_err(|e| Error(format!("{}: {e:#}", host.display())))?;
        }
        wasi.inherit_stderr();
        let host = Host {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            scripts: step.programs.clone(),
            dirs: step.dirs.clone(),
            running: Vec::new(),
            logs: Vec::new(),
            progress: Vec::new(),
            checkpoints: Vec::new(),
            launches: Vec::new(),
        };
        let mut store = Store::new(&self.engine, host);
        let instance = bindings::Plugin::instantiate(&mut store, &self.component, &self.linker)
            .map_err(|e| Error(format!("cannot instantiate: {e:#}")))?;
        Ok((store, instance))
    }

    /// Runs `action` on `step` in a fresh instance, as the engine would.
    ///
    /// Panics when the plugin traps (a panic in the plugin), with its message: that is a bug in
    /// the plugin, never an outcome.
    pub fn run(&self, action: &str, step: Step) -> Outcome {
        let (mut store, instance) = self.instantiate(&step).unwrap_or_else(|e| panic!("{e}"));
        let ctx = types::StepContext {
            run_id: "run-under-test".into(),
            step_id: "step-under-test".into(),
            attempt: step.attempt,
            inputs_json: step.inputs.to_string(),
            dirs: step
                .dirs
                .iter()
                .map(|(role, host, writable)| types::GrantedDir {
                    role: role.clone(),
                    guest_path: guest_path(role),
                    host_path: host.display().to_string(),
                    writable: *writable,
                })
                .collect(),
            retry: step.retry.as_ref().map(|(reason, error)| types::RetryInfo {
                reason: *reason,
                previous_error: error.clone(),
            }),
        };
        let result = instance
            .call_run(&mut store, action, &ctx)
            .unwrap_or_else(|trap| panic!("the plugin trapped in `{action}`: {trap:#}"));
        let host = store.into_data();
        Outcome {
            result: match result {
                Ok(json) => serde_json::from_str(&json).map_err(|e| {
                    (
                        ErrorKind::Internal,
                        format!("outputs are not JSON ({e}): {json}"),
                    )
                }),
                Err(e) => Err((e.kind, e.message)),
            },
            logs: host.logs,
            progress: host.progress,
            checkpoints: host.checkpoints,
            launches: host.launches,
        }
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Whether `manifest` (a workspace root's Cargo.toml) has a `[profile.plugin]` table.
fn defines_plugin_profile(manifest: &Path) -> bool {
    std::fs::read_to_string(manifest)
        .map(|text| text.lines().any(|l| l.trim() == "[profile.plugin]"))
        .unwrap_or(false)
}
