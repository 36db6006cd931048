//! Hot reload in `kiln serve`: workflows, plugins and grants changed on disk are used by new
//! runs within about a second; an invalid file is listed with its diagnostics while its last
//! valid version stays in use; a running run keeps the plugin it started with.

mod common;
#[path = "common/api.rs"]
mod http;

use std::time::{Duration, Instant};

use common::*;
use http::*;
use serde_json::{Value, json};

/// Poll `GET path` until `cond` holds on its JSON (at most 20 s); returns it and how long it took.
fn until(
    server: &Server,
    token: &str,
    path: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let r = server.get(path, token);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        let v = r.json();
        if cond(&v) {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not seen after 20 s: {v}\nserver log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn entry<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|w| w["name"] == name)
}

fn hello(steps: usize) -> String {
    let mut yaml = String::from("name: hello\nsteps:\n");
    for i in 0..steps {
        yaml.push_str(&format!(
            "  - id: s{i}\n    uses: hostile\n    action: ok\n"
        ));
    }
    yaml
}

/// `POST /runs` of workflow `name`, waited for; returns the finished run.
fn run(server: &Server, token: &str, name: &str) -> Value {
    let r = server.post("/api/v1/runs", token, &json!({"workflow": name}));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    server.wait_run(&id, token, 60)
}

#[test]
fn workflows_reload_and_an_invalid_file_keeps_its_last_valid_version() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let admin = aws.token("admin", &[], &["admin"]);
    let dir = aws.ws.root().join("workflows");

    // New.
    std::fs::write(dir.join("hello.yaml"), hello(1)).unwrap();
    let (_, took) = until(&server, &admin, "/api/v1/workflows", "new workflow", |l| {
        entry(l, "hello").is_some_and(|w| w["startable"] == true)
    });
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let done = run(&server, &admin, "hello");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"].as_array().unwrap().len(), 1);

    // Changed.
    std::fs::write(dir.join("hello.yaml"), hello(2)).unwrap();
    until(
        &server,
        &admin,
        "/api/v1/workflows",
        "changed workflow",
        |l| entry(l, "hello").is_some_and(|w| w["steps"] == json!(["s0", "s1"])),
    );
    assert_eq!(
        run(&server, &admin, "hello")["steps"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Broken: listed with its diagnostics, the two-step version still runs.
    std::fs::write(dir.join("hello.yaml"), "name: hello\nsteps: [\n").unwrap();
    let (list, _) = until(
        &server,
        &admin,
        "/api/v1/workflows",
        "broken workflow",
        |l| entry(l, "hello").is_some_and(|w| w["problem"].is_string()),
    );
    let w = entry(&list, "hello").unwrap();
    assert_eq!(w["startable"], true, "{w}");
    assert!(
        w["problem"].as_str().unwrap().contains("hello.yaml:"),
        "{w}"
    );
    let done = run(&server, &admin, "hello");
    assert_eq!(done["status"], "succeeded");
    assert_eq!(
        done["steps"].as_array().unwrap().len(),
        2,
        "the last valid version runs"
    );
    assert!(
        server
            .log_text()
            .contains("hello.yaml is invalid; its last valid version (`hello`) stays in use"),
        "{}",
        server.log_text()
    );

    // Idle means idle: nothing is reloaded again (the log says the same problem once).
    let said = |log: &str| log.matches("hello.yaml is invalid").count();
    let once = said(&server.log_text());
    std::thread::sleep(Duration::from_millis(1500));
    let _ = server.get("/api/v1/workflows", &admin);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(said(&server.log_text()), once, "{}", server.log_text());

    // Valid YAML that does not validate (an unknown plugin): never startable, said why.
    std::fs::write(
        dir.join("other.yaml"),
        "name: other\nsteps:\n  - id: a\n    uses: nosuch\n    action: x\n",
    )
    .unwrap();
    let (list, _) = until(
        &server,
        &admin,
        "/api/v1/workflows",
        "invalid workflow",
        |l| entry(l, "other.yaml").is_some(),
    );
    let w = entry(&list, "other.yaml").unwrap();
    assert_eq!(w["startable"], false, "{w}");
    assert!(w["problem"].as_str().unwrap().contains("nosuch"), "{w}");
    let r = server.post("/api/v1/runs", &admin, &json!({"workflow": "other"}));
    assert_eq!(r.status, 422, "{}", r.text());

    // Fixed, then removed.
    std::fs::write(dir.join("hello.yaml"), hello(3)).unwrap();
    until(
        &server,
        &admin,
        "/api/v1/workflows",
        "fixed workflow",
        |l| {
            entry(l, "hello").is_some_and(|w| {
                w["problem"].is_null() && w["steps"].as_array().unwrap().len() == 3
            })
        },
    );

    // A new file naming an existing workflow does not take it over.
    std::fs::write(dir.join("a-dup.yaml"), hello(1)).unwrap();
    let (list, _) = until(
        &server,
        &admin,
        "/api/v1/workflows",
        "duplicate workflow",
        |l| entry(l, "a-dup.yaml").is_some(),
    );
    let dup = entry(&list, "a-dup.yaml").unwrap();
    assert_eq!(dup["startable"], false, "{dup}");
    assert!(
        dup["problem"]
            .as_str()
            .unwrap()
            .contains("already defined by"),
        "{dup}"
    );
    assert_eq!(
        run(&server, &admin, "hello")["steps"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    std::fs::remove_file(dir.join("a-dup.yaml")).unwrap();

    std::fs::remove_file(dir.join("hello.yaml")).unwrap();
    until(
        &server,
        &admin,
        "/api/v1/workflows",
        "removed workflow",
        |l| entry(l, "hello").is_none(),
    );
    let r = server.post("/api/v1/runs", &admin, &json!({"workflow": "hello"}));
    assert_eq!(r.status, 422, "{}", r.text());

    // The whole folder removed: nothing is offered; back: offered again.
    let away = aws.ws.root().join("workflows-away");
    std::fs::rename(&dir, &away).unwrap();
    until(&server, &admin, "/api/v1/workflows", "no workflows", |l| {
        l.as_array().is_some_and(|a| a.is_empty())
    });
    std::fs::rename(&away, &dir).unwrap();
    until(
        &server,
        &admin,
        "/api/v1/workflows",
        "workflows back",
        |l| entry(l, "ultralytics-detect").is_some(),
    );
}

/// `bytes` with a custom section appended: the same component, another digest.
fn with_custom_section(bytes: &[u8], note: &str) -> Vec<u8> {
    let name = b"kiln-test-note";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(note.as_bytes());
    assert!(payload.len() < 128);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(payload.len() as u8);
    out.extend_from_slice(&payload);
    out
}

fn plugin<'a>(list: &'a Value, name: &str) -> &'a Value {
    entry(list, name).unwrap_or_else(|| panic!("no plugin {name}: {list}"))
}

fn step_digest(run: &Value, step: &str) -> String {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == step)
        .unwrap_or_else(|| panic!("no step {step}: {run}"))["plugin_digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_changed_plugin_serves_new_runs_while_a_running_run_keeps_its_own() {
    let aws = ApiWorkspace::with(
        Workspace::new().with_env("FAKE_YOLO_EPOCH_SECONDS", "20"),
        None,
    );
    let server = aws.serve();
    let admin = aws.token("admin", &[], &["admin"]);
    let plugins_dir = aws.ws.root().join(".kiln/plugins");
    let before = server.get("/api/v1/plugins", &admin).json();
    let d1 = plugin(&before, "ultralytics")["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    // A run whose training is under way with the installed plugin.
    let r = server.post("/api/v1/runs", &admin, &demo_run("first"));
    assert_eq!(r.status, 201, "{}", r.text());
    let first = r.json()["id"].as_str().unwrap().to_owned();
    let marker = aws.marker();
    wait_for(300, "yolo to be running", || {
        processes_mentioning(&marker)
            .iter()
            .any(|(_, c)| c.contains("yolo"))
    });

    // A new build of the plugin (same code, another digest) replaces the file.
    let path = plugins_dir.join("ultralytics.wasm");
    let bytes = std::fs::read(&path).unwrap();
    let tmp = plugins_dir.join("ultralytics.wasm.partial");
    std::fs::write(&tmp, with_custom_section(&bytes, "rebuilt")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let (after, took) = until(&server, &admin, "/api/v1/plugins", "the new plugin", |l| {
        plugin(l, "ultralytics")["digest"] != d1
    });
    // The changed component is compiled first: a few seconds in a debug build, more on a
    // loaded machine (6.7 s once, beside another test suite's load).
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let d2 = plugin(&after, "ultralytics")["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        server.log_text().contains("running runs keep theirs"),
        "{}",
        server.log_text()
    );

    // The next run uses it; the running one keeps the old one, to its end.
    let r = server.post("/api/v1/runs", &admin, &demo_run("second"));
    assert_eq!(r.status, 201, "{}", r.text());
    let second = r.json()["id"].as_str().unwrap().to_owned();
    let (run2, _) = until(
        &server,
        &admin,
        &format!("/api/v1/runs/{second}"),
        "second run's config",
        |r| !step_digest(r, "resolve").is_empty(),
    );
    assert_eq!(step_digest(&run2, "resolve"), d2);
    let run1 = server.get(&format!("/api/v1/runs/{first}"), &admin).json();
    assert_eq!(step_digest(&run1, "resolve"), d1, "{run1}");
    assert_eq!(step_digest(&run1, "train"), d1, "{run1}");
    for id in [&first, &second] {
        let r = server.call("DELETE", &format!("/api/v1/runs/{id}"), Some(&admin), None);
        assert_eq!(r.status, 204, "{}", r.text());
    }
}

#[test]
fn broken_plugin_files_and_grants_are_listed_while_the_previous_ones_serve() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let admin = aws.token("admin", &[], &["admin"]);
    let dir = aws.ws.root().join("workflows");
    std::fs::write(dir.join("hello.yaml"), hello(1)).unwrap();
    let plugins_dir = aws.ws.root().join(".kiln/plugins");

    // A new file that is no component, and a plugin overwritten by garbage.
    std::fs::write(plugins_dir.join("broken.wasm"), b"not wasm").unwrap();
    std::fs::write(plugins_dir.join("hostile.wasm"), b"\0asm garbage").unwrap();
    let (list, _) = until(&server, &admin, "/api/v1/plugins", "broken plugins", |l| {
        entry(l, "broken.wasm").is_some() && plugin(l, "hostile")["problem"].is_string()
    });
    let broken = plugin(&list, "broken.wasm");
    assert_eq!(broken["loaded"], false, "{broken}");
    assert!(
        broken["problem"].as_str().unwrap().contains("broken.wasm"),
        "{broken}"
    );
    let hostile = plugin(&list, "hostile");
    assert_eq!(
        hostile["loaded"], true,
        "the previous build stays: {hostile}"
    );
    assert_eq!(run(&server, &admin, "hello")["status"], "succeeded");

    // Grants that do not parse: listed, the previous ones stay.
    std::fs::write(aws.ws.root().join("configs/plugins.yaml"), "plugins: [\n").unwrap();
    let (list, _) = until(&server, &admin, "/api/v1/plugins", "broken grants", |l| {
        entry(l, "plugins.yaml").is_some()
    });
    assert!(
        plugin(&list, "plugins.yaml")["problem"]
            .as_str()
            .unwrap()
            .contains("grants loaded before stay")
    );
    assert_eq!(plugin(&list, "ultralytics")["grants"], json!(["yolo"]));

    // Valid grants that take `yolo` away are used at once.
    std::fs::write(
        aws.ws.root().join("configs/plugins.yaml"),
        "plugins:\n  hostile: {memory_mb: 64}\n",
    )
    .unwrap();
    until(&server, &admin, "/api/v1/plugins", "new grants", |l| {
        plugin(l, "ultralytics")["grants"] == json!([]) && entry(l, "plugins.yaml").is_none()
    });

    // A removed plugin is no longer offered; workflows using it are no longer startable.
    std::fs::remove_file(plugins_dir.join("broken.wasm")).unwrap();
    std::fs::remove_file(plugins_dir.join("hostile.wasm")).unwrap();
    until(&server, &admin, "/api/v1/plugins", "removed plugins", |l| {
        entry(l, "hostile").is_none() && entry(l, "broken.wasm").is_none()
    });
    let (list, _) = until(
        &server,
        &admin,
        "/api/v1/workflows",
        "workflow of a removed plugin",
        |l| entry(l, "hello.yaml").is_some_and(|w| w["startable"] == false),
    );
    assert!(
        entry(&list, "hello.yaml").unwrap()["problem"]
            .as_str()
            .unwrap()
            .contains("hostile")
    );
}

#[test]
fn roles_reload_and_invalid_roles_keep_the_previous_ones() {
    let aws = ApiWorkspace::new();
    let roles = aws.ws.root().join("configs/roles.yaml");
    std::fs::copy(repo_root().join("configs/roles.yaml"), &roles).unwrap();
    let server = aws.serve();
    let viewer = aws.token("v", &[], &["viewer"]);
    let dir = aws.ws.root().join("workflows");
    std::fs::write(dir.join("hello.yaml"), hello(1)).unwrap();
    let start = json!({"workflow": "hello"});
    assert_eq!(server.post("/api/v1/runs", &viewer, &start).status, 403);

    // The operator lets viewers start runs: the next request may.
    let text_ = std::fs::read_to_string(&roles).unwrap();
    std::fs::write(
        &roles,
        text_.replace(
            "claims: [ViewTrainingRuns]",
            "claims: [ViewTrainingRuns, CreateTrainingRun]",
        ),
    )
    .unwrap();
    let started = Instant::now();
    loop {
        let r = server.post("/api/v1/runs", &viewer, &start);
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "roles not reloaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Broken roles: logged, the roles in use stay.
    std::fs::write(&roles, "roles: [\n").unwrap();
    let started = Instant::now();
    while !server
        .log_text()
        .contains("the roles loaded before stay in use")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.post("/api/v1/runs", &viewer, &start).status, 201);
}

/// What a watcher cannot see is seen by the poll: a plugins folder replaced by another, a roles
/// file behind a symbolic link whose target changes (a Kubernetes ConfigMap swaps links so).
/// And a server starts with a plugin file that does not load: it is a listed problem.
#[test]
fn replaced_folders_and_files_behind_links_are_seen_and_a_broken_plugin_does_not_stop_a_start() {
    let aws = ApiWorkspace::new();
    let root = aws.ws.root().to_owned();
    let plugins_dir = root.join(".kiln/plugins");
    std::fs::write(plugins_dir.join("broken.wasm"), b"not wasm").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let real_roles = elsewhere.path().join("roles.yaml");
    std::fs::copy(repo_root().join("configs/roles.yaml"), &real_roles).unwrap();
    std::os::unix::fs::symlink(&real_roles, root.join("configs/roles.yaml")).unwrap();
    let server = aws.serve();
    let admin = aws.token("admin", &[], &["admin"]);
    let viewer = aws.token("v", &[], &["viewer"]);
    let (list, _) = until(
        &server,
        &admin,
        "/api/v1/plugins",
        "the broken plugin",
        |l| entry(l, "broken.wasm").is_some(),
    );
    assert_eq!(plugin(&list, "broken.wasm")["loaded"], false);
    assert_eq!(plugin(&list, "hostile")["loaded"], true);

    // The plugins folder replaced: the new one's plugins are served.
    let hostile = std::fs::read(plugins_dir.join("hostile.wasm")).unwrap();
    std::fs::remove_dir_all(&plugins_dir).unwrap();
    until(&server, &admin, "/api/v1/plugins", "no plugins", |l| {
        entry(l, "hostile").is_none()
    });
    std::fs::create_dir(&plugins_dir).unwrap();
    std::fs::write(plugins_dir.join("hostile.wasm"), &hostile).unwrap();
    until(
        &server,
        &admin,
        "/api/v1/plugins",
        "the plugins back",
        |l| entry(l, "hostile").is_some() && entry(l, "broken.wasm").is_none(),
    );

    // The roles file's target changes: a claim taken away is taken away.
    assert_eq!(server.get("/api/v1/runs", &viewer).status, 200);
    let text_ = std::fs::read_to_string(&real_roles).unwrap();
    std::fs::write(
        &real_roles,
        text_.replace("claims: [ViewTrainingRuns]", "claims: []"),
    )
    .unwrap();
    let started = Instant::now();
    while server.get("/api/v1/runs", &viewer).status != 403 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
