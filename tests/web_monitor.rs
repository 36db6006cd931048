//! The web monitor of `kiln serve` in headless Chromium: `tests/browser/monitor.mjs` (Node.js
//! with playwright-core driving Debian's `/usr/bin/chromium`) signs in, preflights a training with
//! invalid options, starts it, watches it reach 100 % with a chart of both epochs, exports the
//! best weights, publishes the model and finds it under Models; a viewer sees no Start, Stop or
//! Publish. Against a real server, real SQLite, the real Ultralytics plugin and the stand-in
//! `yolo`. Screenshots of every page go to `target/web-monitor-screenshots/`.
//!
//! Needs Chromium and `tests/browser/node_modules` (`scripts/browser-deps.sh` installs both;
//! scripts/test.sh runs it and sets KILN_TEST_BROWSER=1). Without KILN_TEST_BROWSER the test says
//! so and passes; with it, missing pieces are a failure.

mod common;
#[path = "common/api.rs"]
mod http;

use std::process::Command;

use common::*;
use http::*;

fn chromium() -> Option<String> {
    let path = std::env::var("KILN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    std::path::Path::new(&path).exists().then_some(path)
}

#[test]
fn the_web_monitor_starts_watches_and_publishes_a_training() {
    if std::env::var_os("KILN_TEST_BROWSER").is_none() {
        eprintln!(
            "KILN_TEST_BROWSER is not set: the browser test is skipped (scripts/test.sh sets it)"
        );
        return;
    }
    let chromium = chromium().expect(
        "KILN_TEST_BROWSER is set but Chromium is missing: run scripts/browser-deps.sh \
         (or set KILN_CHROMIUM)",
    );
    let browser_dir = repo_root().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/browser-deps.sh"
    );
    let aws = ApiWorkspace::with(
        Workspace::new().with_env("FAKE_YOLO_EPOCH_SECONDS", "1.5"),
        None,
    );
    let server = aws.serve();
    let admin = aws.token("admin", &[], &["admin"]);
    let viewer = aws.token("viewer", &[], &["viewer"]);
    let shots = repo_root().join("target/web-monitor-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("node")
        .arg("monitor.mjs")
        .current_dir(&browser_dir)
        .env("KILN_URL", format!("http://{}", server.addr))
        .env("KILN_ADMIN_TOKEN", &admin)
        .env("KILN_VIEWER_TOKEN", &viewer)
        .env("KILN_SCREENSHOTS", &shots)
        .env("KILN_CHROMIUM", &chromium)
        .output()
        .expect("node runs (Node.js 18 or later)");
    assert!(
        out.status.success(),
        "the browser test failed ({}; screenshots in {}):\n{}\n{}\n--- server log ---\n{}",
        out.status,
        shots.display(),
        text(&out.stdout),
        text(&out.stderr),
        server.log_text()
    );
    // What the page did, seen through the API: the training succeeded and its model is
    // published, in the stage the page chose.
    let models = server.get("/api/v1/models", &viewer).json();
    let model = &models.as_array().expect("a list of models")[0];
    assert_eq!(model["is_published"], true, "{model}");
    assert_eq!(model["stage"], "testing", "{model}");
    let run = server.get(
        &format!(
            "/api/v1/runs/{}",
            model["training_run_id"].as_str().unwrap()
        ),
        &viewer,
    );
    assert_eq!(run.json()["status"], "succeeded");
    assert_eq!(run.json()["params"]["training_name"], "web1");
    for page in [
        "02-viewer-runs",
        "04-preflight-invalid-option",
        "07-run-succeeded",
        "09-model-published",
        "10-models",
        "13-phone-run",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "screenshot {page}.png"
        );
    }
}
