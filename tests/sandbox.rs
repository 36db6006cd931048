//! A hostile plugin (tests/plugins/hostile) against the sandbox: endless loops, memory blow-ups,
//! ungranted programs, path escapes, environment snooping and panics all fail their step with a
//! clear message while the engine lives on.

mod common;

use common::*;

const HOSTILE: &str = r#"name: hostile
steps:
  - {id: spin, uses: hostile, action: spin}
  - {id: grow, uses: hostile, action: grow}
  - {id: ungranted, uses: hostile, action: launch-ungranted}
  - id: escape
    uses: hostile
    action: escape
    with: {project: demo, training_name: h}
  - {id: env, uses: hostile, action: env}
  - {id: panic, uses: hostile, action: panic}
  - {id: ok, uses: hostile, action: ok}
"#;

#[test]
fn hostile_plugin_steps_fail_cleanly_and_the_engine_lives_on() {
    let ws = Workspace::new();
    let wf = ws.workflow("hostile.yaml", HOSTILE);
    let out = ws.kiln(&["run", &wf, "--max-parallel", "8"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    assert_eq!(show["run"]["status"], "failed");
    let err = |id: &str| {
        let s = step(&show, id);
        assert_eq!(s["status"], "failed", "{id}: {s}");
        s["error_message"].as_str().unwrap().to_owned()
    };
    let spin = err("spin");
    assert!(spin.contains("computed for more than 1.0s"), "{spin}");
    let grow = err("grow");
    assert!(
        grow.contains("exceeded its memory limit of 64 MiB"),
        "{grow}"
    );
    let ungranted = err("ungranted");
    assert!(
        ungranted.contains("plugin `hostile` is not granted the program `sh`"),
        "{ungranted}"
    );
    let panic = err("panic");
    assert!(panic.contains("plugin `hostile` crashed"), "{panic}");
    assert!(panic.contains("panicked"), "{panic}");

    let escape = step(&show, "escape");
    assert_eq!(
        escape["status"], "succeeded",
        "every escape attempt must fail: {escape}"
    );
    let env = step(&show, "env");
    assert_eq!(env["status"], "succeeded");
    assert_eq!(
        env["outputs"]["result"],
        serde_json::json!({}),
        "no environment may leak"
    );
    assert_eq!(step(&show, "ok")["status"], "succeeded");
    assert!(!ws.root().join("projects/demo/escape.txt").exists());
    assert!(!ws.root().join("projects/escape.txt").exists());
}

/// Instances are pooled and reused (wasmtime's pooling allocator): a step must still find its
/// instance as a fresh one, with nothing an earlier step left in its statics or memory. With
/// one step at a time, every step reuses the slot of the step before it.
#[test]
fn a_plugin_instance_reused_from_the_pool_starts_pristine() {
    let ws = Workspace::new();
    let wf = ws.workflow(
        "remember.yaml",
        r#"name: remember
steps:
  - {id: a, uses: hostile, action: remember}
  - {id: b, uses: hostile, action: remember, needs: [a]}
  - {id: c, uses: hostile, action: remember, needs: [b]}
  - {id: d, uses: hostile, action: remember, needs: [c]}
"#,
    );
    let out = ws.kiln(&["run", &wf, "--max-parallel", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    for id in ["a", "b", "c", "d"] {
        let s = step(&show, id);
        assert_eq!(s["status"], "succeeded", "{id}: {s}");
        assert_eq!(
            s["outputs"]["result"], PRISTINE,
            "step {id} saw what an earlier instance left: {s}"
        );
    }
}

/// Under an address-space limit (`ulimit -v`) too small for the instance pool, instances are
/// mapped one at a time, as without a pool: no crash when the pool would just fit and leave
/// nothing for the rest of the process, and every step still finds a pristine instance.
#[test]
fn an_address_space_limit_too_small_for_the_pool_only_slows_plugins_down() {
    use std::os::unix::process::CommandExt;
    let ws = Workspace::new();
    let wf = ws.workflow(
        "parallel.yaml",
        r#"name: parallel
steps:
  - {id: a, uses: hostile, action: remember}
  - {id: b, uses: hostile, action: remember}
  - {id: c, uses: hostile, action: remember}
  - {id: d, uses: hostile, action: remember}
  - {id: e, uses: hostile, action: remember, needs: [a, b, c, d]}
"#,
    );
    // Around what a pool for 4 steps takes (~49 GiB), and well above it.
    for limit_mib in [32 << 10, 49_600, 49_800, 50_200, 51 << 10, 200 << 10] {
        let limit = (limit_mib as u64) << 20;
        let mut command = ws.command(&["run", &wf, "--max-parallel", "4"]);
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = command.output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "ulimit -v of {limit_mib} MiB: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{limit_mib} MiB: {stderr}");
        let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
        for id in ["a", "b", "c", "d", "e"] {
            assert_eq!(
                step(&show, id)["outputs"]["result"],
                PRISTINE,
                "{limit_mib} MiB: {show}"
            );
        }
    }
}
