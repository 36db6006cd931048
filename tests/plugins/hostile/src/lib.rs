//! A hostile Kiln plugin, for the engine's sandbox tests only.
//!
//! Every action misbehaves on purpose (except `ok`); the engine must contain it:
//!
//! | action             | what it does                                                        |
//! |--------------------|---------------------------------------------------------------------|
//! | `spin`             | busy loop forever (stopped by the epoch deadline)                   |
//! | `grow`             | allocates 16 MiB chunks without bound (stopped by the memory cap)   |
//! | `launch-ungranted` | launches `sh -c "echo pwned"`; returns the host's refusal as `denied`|
//! | `escape`           | tries to read/write outside its preopens; `Ok` only if all failed   |
//! | `env`              | returns every environment variable it can see                      |
//! | `ok`               | logs one line and returns `{"result": "ok"}`                        |
//! | `launch-true`      | launches the granted program `true` (cwd: its `/config` folder), waits for it; benchmarks' `spawn5` |
//! | `panic`            | panics (a trap)                                                     |
//! | `remember`         | reports what an earlier instance left in its memory, then dirties it |
//!
//! Build: `cargo build --target wasm32-wasip2 --profile plugin -p kiln-test-hostile`
//! -> `target/wasm32-wasip2/plugin/kiln_test_hostile.wasm`.

#[allow(missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../plugins/wit/0.2.0",
        world: "plugin",
    });
}

use std::sync::atomic::{AtomicU32, Ordering};

use bindings::kiln::plugin::log::{self, Level};
use bindings::kiln::plugin::process::{self, Spec};
use bindings::kiln::plugin::types::{
    ActionInfo, ErrorKind, InputInfo, InputKind, OutputInfo, PluginInfo, StepContext, StepError,
};

struct Hostile;

const ACTIONS: &[(&str, &str)] = &[
    (
        "spin",
        "Busy-loops forever; the engine's epoch deadline must stop it.",
    ),
    (
        "grow",
        "Allocates 16 MiB chunks without bound; the engine's memory cap must stop it.",
    ),
    (
        "launch-ungranted",
        "Launches `sh -c 'echo pwned'`, a program nobody granted.",
    ),
    (
        "escape",
        "Tries to read and write outside the granted directories.",
    ),
    (
        "env",
        "Returns every environment variable the plugin can see.",
    ),
    ("ok", "Logs a line and succeeds."),
    (
        "launch-true",
        "Launches the granted program `true` in its config folder and waits for it.",
    ),
    (
        "remember",
        "Reports what an earlier instance left in its statics and grown memory, then dirties them.",
    ),
    ("panic", "Panics (a trap)."),
];

fn err(kind: ErrorKind, message: impl Into<String>) -> StepError {
    StepError {
        kind,
        message: message.into(),
    }
}

fn outputs(result: serde_json::Value) -> String {
    serde_json::json!({ "result": result }).to_string()
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn grow() -> Result<String, StepError> {
    const CHUNK: usize = 16 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        // Touch every page so the memory is really used.
        for i in (0..CHUNK).step_by(4096) {
            chunk[i] = (chunks.len() as u8).wrapping_add(1);
        }
        chunks.push(std::hint::black_box(chunk));
    }
}

fn launch_ungranted() -> Result<String, StepError> {
    let spec = Spec {
        program: "sh".to_string(),
        args: vec!["-c".to_string(), "echo pwned".to_string()],
        env: Vec::new(),
        cwd: None,
    };
    match process::launch(&spec) {
        Err(message) => Err(err(ErrorKind::Denied, message)),
        Ok(handle) => Err(err(
            ErrorKind::Internal,
            format!("escaped: the host launched ungranted program 'sh' (handle {handle})"),
        )),
    }
}

fn launch_true(ctx: &StepContext) -> Result<String, StepError> {
    let cwd = ctx
        .dirs
        .iter()
        .find(|d| d.role == "config")
        .map(|d| d.host_path.clone())
        .ok_or_else(|| {
            err(
                ErrorKind::InvalidInput,
                "no config folder granted: create configs/hostile/",
            )
        })?;
    let spec = Spec {
        program: "true".to_string(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: Some(cwd),
    };
    let handle = process::launch(&spec).map_err(|m| err(ErrorKind::Denied, m))?;
    let status = process::wait(handle).map_err(|m| err(ErrorKind::Internal, m))?;
    if !status.success {
        return Err(err(
            ErrorKind::ProgramFailed,
            format!("`true` failed: {:?} {:?}", status.code, status.signal),
        ));
    }
    Ok(outputs(serde_json::Value::String("ok".to_string())))
}

fn escape(ctx: &StepContext) -> Result<String, StepError> {
    let mut report: Vec<String> = Vec::new();
    let mut escaped: Vec<String> = Vec::new();

    let mut reads = vec!["/etc/passwd".to_string()];
    for dir in &ctx.dirs {
        reads.push(format!(
            "{}/../../../../etc/passwd",
            dir.guest_path.trim_end_matches('/')
        ));
    }
    for path in reads {
        match std::fs::read(&path) {
            Ok(bytes) => {
                escaped.push(format!("read {path} ({} bytes)", bytes.len()));
                report.push(format!("read {path}: SUCCEEDED ({} bytes)", bytes.len()));
            }
            Err(e) => report.push(format!("read {path}: failed ({e})")),
        }
    }

    let write = "/output/../../escape.txt";
    match std::fs::write(write, b"escaped\n") {
        Ok(()) => {
            escaped.push(format!("wrote {write}"));
            report.push(format!("write {write}: SUCCEEDED"));
        }
        Err(e) => report.push(format!("write {write}: failed ({e})")),
    }

    if escaped.is_empty() {
        Ok(outputs(serde_json::Value::String(report.join("; "))))
    } else {
        Err(err(
            ErrorKind::Internal,
            format!("escaped: {}", escaped.join("; ")),
        ))
    }
}

fn env() -> Result<String, StepError> {
    let vars: serde_json::Map<String, serde_json::Value> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                serde_json::Value::String(v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    Ok(outputs(serde_json::Value::Object(vars)))
}

impl bindings::Guest for Hostile {
    fn describe() -> PluginInfo {
        let inputs = || {
            vec![
                InputInfo {
                    name: "project".to_string(),
                    required: false,
                    description: "Ignored.".to_string(),
                    kind: InputKind::String,
                },
                InputInfo {
                    name: "training_name".to_string(),
                    required: false,
                    description: "Ignored.".to_string(),
                    kind: InputKind::String,
                },
                InputInfo {
                    name: "data".to_string(),
                    required: false,
                    description: "Ignored (a file to key memoization on).".to_string(),
                    kind: InputKind::Path,
                },
            ]
        };
        PluginInfo {
            name: "hostile".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            actions: ACTIONS
                .iter()
                .map(|(name, description)| ActionInfo {
                    name: (*name).to_string(),
                    description: (*description).to_string(),
                    inputs: inputs(),
                    outputs: vec![OutputInfo {
                        name: "result".to_string(),
                        description: "\"ok\", or what the action found".to_string(),
                    }],
                })
                .collect(),
            programs: vec!["true".to_string()],
        }
    }

    fn run(action: String, ctx: StepContext) -> Result<String, StepError> {
        match action.as_str() {
            "spin" => spin(),
            "grow" => grow(),
            "launch-ungranted" => launch_ungranted(),
            "escape" => escape(&ctx),
            "env" => env(),
            "ok" => {
                log::write(
                    Level::Info,
                    &format!(
                        "hostile plugin: ok (run {}, step {})",
                        ctx.run_id, ctx.step_id
                    ),
                );
                Ok(outputs(serde_json::Value::String("ok".to_string())))
            }
            "launch-true" => launch_true(&ctx),
            "panic" => panic!("hostile plugin panics on purpose"),
            "remember" => Ok(outputs(serde_json::Value::String(remember()))),
            other => Err(err(
                ErrorKind::InvalidInput,
                format!("unknown action '{other}'"),
            )),
        }
    }
}

/// Zero-initialised (`.bss`) and initialised (`.data`) statics that `remember` changes.
static SEEN: AtomicU32 = AtomicU32::new(0);
static MARK: AtomicU32 = AtomicU32::new(7);

/// What an earlier instance left behind, as `seen=N mark=N dirty=N`: a fresh instance reports
/// `seen=0 mark=7 dirty=0`. Then leaves its own traces: both statics changed, and a megabyte
/// grown onto its memory filled with 0xAB.
fn remember() -> String {
    let seen = SEEN.fetch_add(1, Ordering::SeqCst);
    let mark = MARK.swap(99, Ordering::SeqCst);
    const PAGES: usize = 16;
    const PAGE: usize = 65_536;
    let Some(first) = grow_memory(PAGES) else {
        return format!("seen={seen} mark={mark} dirty=cannot-grow");
    };
    // Pages just grown are the module's alone (no Rust allocation owns them), and wasm
    // guarantees they read as zero.
    let grown = unsafe { core::slice::from_raw_parts_mut((first * PAGE) as *mut u8, PAGES * PAGE) };
    let dirty = grown.iter().filter(|b| **b != 0).count();
    grown.fill(0xAB);
    format!("seen={seen} mark={mark} dirty={dirty}")
}

/// `memory.grow` by `pages`: the index of the first new page.
#[cfg(target_arch = "wasm32")]
fn grow_memory(pages: usize) -> Option<usize> {
    let first = core::arch::wasm32::memory_grow(0, pages);
    (first != usize::MAX).then_some(first)
}

/// Built for the host only to be linted: there is no linear memory to grow.
#[cfg(not(target_arch = "wasm32"))]
fn grow_memory(_pages: usize) -> Option<usize> {
    None
}

bindings::export!(Hostile with_types_in bindings);
