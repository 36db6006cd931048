//! The HTTP API through a real `kiln serve` process: the main flow (trigger, follow the logs over
//! SSE, inspect, publish and promote the model, stats, pagination), the claim of every route,
//! bad bodies as problem details, deleting a running run, recovery after the server is killed,
//! the OpenAPI document, and the same flows on PostgreSQL when `KILN_TEST_POSTGRES_URL` is set.

mod common;
#[path = "common/api.rs"]
mod http;

use common::*;
use http::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Failed expectations, collected so that one run of a flow reports every broken endpoint.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            self.0.push(what());
        }
        ok
    }

    #[track_caller]
    fn assert_none(&self, flow: &str) {
        assert!(
            self.0.is_empty(),
            "{flow}: {} problem(s):\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step_id"] == id))
        .unwrap_or(&Value::Null)
}

/// Models from `GET /models` (a list, or an object holding one under `models`).
fn model_list(v: &Value) -> Vec<Value> {
    v.as_array()
        .or_else(|| v["models"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// The model of `GET /models/{id}` (`{model, lineage, versions}`) or of publish / promote.
fn model_of(v: &Value) -> &Value {
    if v["model"].is_object() {
        &v["model"]
    } else {
        v
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The main flow

fn main_flow(aws: &ApiWorkspace) {
    let server = aws.serve();
    let trainer = aws.token("trainer-bot", &[], &["trainer"]);
    let publisher = aws.token("publisher-bot", &[], &["publisher"]);
    let mut p = Problems::default();

    // Trigger.
    let r = server.post("/api/v1/runs", &trainer, &demo_run("first"));
    assert_eq!(r.status, 201, "POST /runs: {}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json")
    );
    let created = r.json();
    let id = created["id"].as_str().expect("run id").to_owned();
    assert_eq!(created["workflow_name"], "ultralytics-detect");
    assert_eq!(created["created_by"], "trainer-bot");
    assert_eq!(created["params"]["overrides"]["epochs"], 2);
    assert_eq!(
        created["params"]["task"], "detect",
        "defaults resolved: {created}"
    );
    assert!(
        matches!(created["status"].as_str(), Some("queued" | "running")),
        "{created}"
    );

    // Follow the training's log live over SSE until `end`.
    let logs_path = format!("/api/v1/runs/{id}/logs?step=train");
    let mut stream = server.sse(&logs_path, &trainer, None);
    let mut events = Vec::new();
    if p.check(stream.status == 200, || {
        format!(
            "SSE GET {logs_path}: status {} (expected 200)",
            stream.status
        )
    }) {
        p.check(
            stream
                .header("content-type")
                .is_some_and(|c| c.starts_with("text/event-stream")),
            || format!("SSE content-type is {:?}", stream.header("content-type")),
        );
        events = stream.until_end();
        let all: String = events.iter().map(|e| e.data.clone() + "\n").collect();
        p.check(events.last().is_some_and(|e| e.event == "end"), || {
            format!("SSE stream ended without an `end` event: {events:?}")
        });
        p.check(
            all.contains("Starting training for 2 epochs") && all.contains("2/2"),
            || format!("SSE lines lack the epoch lines (`Starting training for 2 epochs`, `2/2`): {all}"),
        );
    }
    drop(stream);

    // The run, finished.
    let run = server.wait_run(&id, &trainer, 120);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["created_by"], "trainer-bot");
    assert!(
        run["finished_at"].is_string() && run["duration_ms"].is_i64(),
        "{run}"
    );
    assert!(run["metrics"].is_object(), "run metrics: {run}");
    let steps = run["steps"].as_array().expect("steps on GET /runs/{id}");
    let ids: Vec<&str> = steps.iter().filter_map(|s| s["step_id"].as_str()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    for sid in ["extract", "resolve", "train", "export", "register"] {
        assert_eq!(step(&run, sid)["status"], "succeeded", "{sid}: {run}");
    }
    assert_eq!(step(&run, "train")["progress"]["epoch"], 2, "{run}");
    assert_eq!(step(&run, "train")["plugin_name"], "ultralytics");

    // Replaying the finished run's log from a Last-Event-ID resumes right after that event.
    if events.len() >= 3 && events[1].id.is_some() {
        let k = 1;
        let last = events[k].id.clone().unwrap();
        let mut again = server.sse(&logs_path, &trainer, Some(&last));
        p.check(again.status == 200, || {
            format!("SSE with Last-Event-ID: status {}", again.status)
        });
        if again.status == 200 {
            let rest = again.until_end();
            let first = rest.first().cloned().unwrap_or_default();
            p.check(first == events[k + 1], || {
                format!(
                    "SSE with Last-Event-ID {last}: expected the stream to resume with {:?}, got {first:?}",
                    events[k + 1]
                )
            });
            p.check(
                !rest.iter().any(|e| e.id.as_deref() == Some(last.as_str())),
                || format!("SSE with Last-Event-ID {last} repeated that event"),
            );
            let full: Vec<_> = events.iter().filter(|e| e.event != "end").collect();
            let resumed: Vec<_> = rest.iter().filter(|e| e.event != "end").collect();
            p.check(resumed.len() == full.len() - (k + 1), || {
                format!(
                    "SSE with Last-Event-ID {last}: {} events after resuming, expected {}",
                    resumed.len(),
                    full.len() - (k + 1)
                )
            });
        }
    } else if !events.is_empty() {
        p.0.push(format!(
            "SSE events carry no `id:` (needed for Last-Event-ID): {:?}",
            &events[..events.len().min(3)]
        ));
    }

    // Paged logs and checkpoints (plain JSON).
    let r = server.get(&format!("/api/v1/runs/{id}/logs?step=train"), &trainer);
    p.check(r.status == 200 && r.text().contains("2/2"), || {
        format!(
            "GET /runs/{{id}}/logs?step=train (JSON): {} {}",
            r.status,
            r.text()
        )
    });
    let r = server.get(&format!("/api/v1/runs/{id}/checkpoints"), &trainer);
    p.check(r.status == 200 && r.text().contains("best"), || {
        format!("GET /runs/{{id}}/checkpoints: {} {}", r.status, r.text())
    });

    // The model registry.
    let r = server.get("/api/v1/models?project=demo", &trainer);
    let model = if p.check(r.status == 200, || {
        format!("GET /models?project=demo: {} {}", r.status, r.text())
    }) {
        let models = model_list(&r.json());
        let m = models
            .iter()
            .find(|m| m["training_run_id"] == id.as_str())
            .cloned();
        p.check(m.is_some(), || {
            format!("no model of run {id} in {}", r.text())
        });
        m
    } else {
        None
    };
    if let Some(m) = model {
        let mid = m["id"].as_str().unwrap_or_default().to_owned();
        p.check(m["created_by"] == "trainer-bot", || {
            format!(
                "model created_by is {}, expected the token's name trainer-bot",
                m["created_by"]
            )
        });
        p.check(m["project"] == "demo" && m["version"] == 1, || {
            format!("model: {m}")
        });
        p.check(m["is_published"] == false, || {
            format!("new model published: {m}")
        });
        let r = server.get(&format!("/api/v1/models/{mid}"), &trainer);
        p.check(
            r.status == 200 && model_of(&r.json())["id"] == mid.as_str(),
            || format!("GET /models/{{id}}: {} {}", r.status, r.text()),
        );
        // A viewer may not publish.
        let r = server.call(
            "POST",
            &format!("/api/v1/models/{mid}/publish"),
            Some(&trainer),
            None,
        );
        p.check(r.status == 403, || {
            format!("publish by a trainer: {} {}", r.status, r.text())
        });

        let r = server.call(
            "POST",
            &format!("/api/v1/models/{mid}/publish"),
            Some(&publisher),
            None,
        );
        if p.check(r.status == 200, || {
            format!(
                "POST /models/{{id}}/publish (no body): {} {}",
                r.status,
                r.text()
            )
        }) {
            let v = r.json();
            let v = model_of(&v);
            p.check(
                v["is_published"] == true && v["published_at"].is_string(),
                || format!("published model: {v}"),
            );
        }
        let promote = format!("/api/v1/models/{mid}/promote");
        let r = server.post(&promote, &publisher, &json!({"stage": "production"}));
        if p.check(r.status == 200, || {
            format!(
                "POST /models/{{id}}/promote {{stage: production}}: {} {}",
                r.status,
                r.text()
            )
        }) {
            let v = r.json();
            let v = model_of(&v);
            p.check(
                v["stage"] == "production" && v["production_at"].is_string(),
                || format!("promoted model has no production date: {v}"),
            );
        }
        let r = server.post(&promote, &publisher, &json!({"stage": "orbit"}));
        p.check(
            (400..500).contains(&r.status) && r.problem_error().is_none(),
            || format!("promote to an unknown stage: {} {}", r.status, r.text()),
        );
        let r = server.get(&format!("/api/v1/models/{mid}"), &trainer);
        p.check(
            r.status == 200 && model_of(&r.json())["stage"] == "production",
            || {
                format!(
                    "GET /models/{{id}} after promote: {} {}",
                    r.status,
                    r.text()
                )
            },
        );
    }

    // A second run, for stats and pagination.
    let r = server.post("/api/v1/runs", &trainer, &demo_run("second"));
    assert_eq!(r.status, 201, "{}", r.text());
    let id2 = r.json()["id"].as_str().unwrap().to_owned();
    let run2 = server.wait_run(&id2, &trainer, 120);
    assert_eq!(run2["status"], "succeeded", "{run2}");

    let stats = server.get("/api/v1/runs/stats", &trainer);
    assert_eq!(stats.status, 200, "{}", stats.text());
    let stats = stats.json();
    assert_eq!(stats["total"], 2, "{stats}");
    assert_eq!(stats["by_status"]["succeeded"], 2, "{stats}");
    assert_eq!(stats["success_rate"], 1.0, "{stats}");

    let page1 = server.get("/api/v1/runs?status=succeeded&limit=1", &trainer);
    assert_eq!(page1.status, 200, "{}", page1.text());
    let page1 = page1.json();
    assert_eq!(page1["runs"].as_array().unwrap().len(), 1, "{page1}");
    assert_eq!(
        page1["runs"][0]["id"],
        id2.as_str(),
        "newest first: {page1}"
    );
    assert_eq!(page1["next_offset"], 1, "{page1}");
    let page2 = server
        .get("/api/v1/runs?status=succeeded&limit=1&offset=1", &trainer)
        .json();
    assert_eq!(page2["runs"][0]["id"], id.as_str(), "{page2}");
    assert!(page2["next_offset"].is_null(), "last page: {page2}");
    let none = server.get("/api/v1/runs?status=failed", &trainer).json();
    assert_eq!(none["runs"], json!([]), "{none}");
    server
        .get("/api/v1/runs?limit=0", &trainer)
        .problem(400, "invalid_limit");
    server
        .get("/api/v1/runs?status=bogus", &trainer)
        .problem(400, "invalid_status");

    // Catalog.
    let wfs = server.get("/api/v1/workflows", &trainer).json();
    assert!(
        wfs.as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "ultralytics-detect"),
        "{wfs}"
    );
    let plugins = server.get("/api/v1/plugins", &trainer).json();
    assert!(
        plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "ultralytics"),
        "{plugins}"
    );

    p.assert_none("main flow");
}

#[test]
fn main_flow_trigger_follow_publish_promote_stats_pages() {
    main_flow(&ApiWorkspace::new());
}

#[test]
fn main_flow_on_postgres() {
    let Some(url) = fresh_postgres() else {
        eprintln!(
            "skipped: KILN_TEST_POSTGRES_URL is not set (scripts/start-postgres.sh prints one)"
        );
        return;
    };
    main_flow(&ApiWorkspace::with(Workspace::new(), Some(url)));
}

// ---------------------------------------------------------------------------------------------
// 2. Every route × {no token, another claim, its claim}

fn request_body(route: &Route) -> Option<Value> {
    (route.method == "POST").then(|| json!({}))
}

fn auth_matrix(aws: &ApiWorkspace) {
    let routes = route_table();
    let server = aws.serve();
    let mut only = std::collections::HashMap::new();
    let mut all_but = std::collections::HashMap::new();
    for claim in CLAIMS {
        only.insert(claim, aws.token(&format!("only-{claim}"), &[claim], &[]));
        let others: Vec<&str> = CLAIMS.iter().copied().filter(|c| *c != claim).collect();
        all_but.insert(claim, aws.token(&format!("all-but-{claim}"), &others, &[]));
    }
    // A real run id too (a run that failed fast: unknown release).
    let mut body = demo_run("matrix");
    body["params"]["release"] = json!("missing.zip");
    let r = server.post("/api/v1/runs", &only["CreateTrainingRun"], &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let real = r.json()["id"].as_str().unwrap().to_owned();
    server.wait_run(&real, &only["ViewTrainingRuns"], 60);

    let mut p = Problems::default();
    for route in &routes {
        for id in [FAKE_ID, real.as_str()] {
            if id == real && !route.path.contains("{id}") {
                continue;
            }
            // DELETE the real run last, below.
            if id == real && route.method == "DELETE" {
                continue;
            }
            let path = route.concrete(id);
            let what = format!("{} {}", route.method, path);
            let body = request_body(route);
            let Some(claim) = route.claim.as_deref() else {
                let r = server.call(&route.method, &path, None, body.as_ref());
                p.check(r.status == 200, || {
                    format!("{what} (public) without a token: {}", r.status)
                });
                continue;
            };
            let r = server.call(&route.method, &path, None, body.as_ref());
            p.check(r.status == 401 && r.problem_error().is_none(), || {
                format!("{what} without a token: {} {}", r.status, r.text())
            });
            if claim == ANY_TOKEN {
                for token in only.values() {
                    let r = server.call(&route.method, &path, Some(token), body.as_ref());
                    p.check(r.status == 200, || {
                        format!("{what} with a valid token: {} {}", r.status, r.text())
                    });
                }
                continue;
            }
            let r = server.call(&route.method, &path, Some(&all_but[claim]), body.as_ref());
            p.check(r.status == 403 && r.problem_error().is_none(), || {
                format!(
                    "{what} with every claim but {claim}: {} {}",
                    r.status,
                    r.text()
                )
            });
            if r.status == 403 {
                p.check(
                    r.json()["detail"].as_str().unwrap_or("").contains(claim),
                    || {
                        format!(
                            "{what}: the 403 does not name the claim {claim}: {}",
                            r.text()
                        )
                    },
                );
            }
            let r = server.call(&route.method, &path, Some(&only[claim]), body.as_ref());
            p.check(!matches!(r.status, 401 | 403) && r.status < 500, || {
                format!("{what} with only {claim}: {} {}", r.status, r.text())
            });
            if r.status >= 400
                && let Some(e) = r.problem_error()
            {
                p.0.push(format!("{what} with only {claim}: {e}"));
            }
        }
    }
    // The real run can be deleted with DeleteTrainingRun.
    let r = server.call(
        "DELETE",
        &format!("/api/v1/runs/{real}"),
        Some(&only["DeleteTrainingRun"]),
        None,
    );
    p.check(r.status == 204, || {
        format!("DELETE the real run: {} {}", r.status, r.text())
    });
    p.assert_none("auth matrix");
}

#[test]
fn every_route_needs_its_claim() {
    auth_matrix(&ApiWorkspace::new());
}

#[test]
fn every_route_needs_its_claim_on_postgres() {
    let Some(url) = fresh_postgres() else {
        eprintln!(
            "skipped: KILN_TEST_POSTGRES_URL is not set (scripts/start-postgres.sh prints one)"
        );
        return;
    };
    auth_matrix(&ApiWorkspace::with(Workspace::new(), Some(url)));
}

#[test]
fn revoked_and_malformed_tokens_are_401() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let token = aws.token("soon-revoked", &[], &["viewer"]);
    assert_eq!(server.get("/api/v1/runs", &token).status, 200);
    let out = aws.kiln(&["token", "revoke", "soon-revoked"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    server
        .get("/api/v1/runs", &token)
        .problem(401, "unauthorized");

    let good = aws.token("good", &[], &["viewer"]);
    let (id_part, secret) = good.rsplit_once('_').unwrap();
    let wrong_secret = format!("{id_part}_{}", "0".repeat(secret.len()));
    let unknown_id = format!("kiln_000000000000_{secret}");
    for bad in [
        "garbage",
        "kiln_",
        "kiln_nounderscore",
        wrong_secret.as_str(),
        unknown_id.as_str(),
    ] {
        let r = server.get("/api/v1/runs", bad);
        let v = r.problem(401, "unauthorized");
        assert!(
            v["detail"].as_str().unwrap().contains("kiln token create"),
            "{v}"
        );
    }
    for header in [
        format!("Basic {good}"),
        format!("bearer{good}"),
        good.clone(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
    ] {
        let r = server.send("GET", "/api/v1/runs", &[("Authorization", &header)], None);
        r.problem(401, "unauthorized");
    }
    // The good token still works, and roles give their claims.
    assert_eq!(server.get("/api/v1/runs", &good).status, 200);
    server
        .call(
            "DELETE",
            &format!("/api/v1/runs/{FAKE_ID}"),
            Some(&good),
            None,
        )
        .problem(403, "forbidden");
    // Creating tokens: unknown claims and roles are refused.
    let out = aws.kiln(&["token", "create", "--name", "x", "--claims", "Root"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = aws.kiln(&["token", "create", "--name", "x", "--roles", "wizard"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// 3. Bad bodies

#[test]
fn bad_bodies_are_problem_details_that_say_what_is_wrong() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let token = aws.token("trainer", &[], &["trainer"]);
    let auth = format!("Bearer {token}");
    let post = |body: &[u8], ct: Option<&str>| {
        let mut h = vec![("Authorization", auth.as_str())];
        if let Some(ct) = ct {
            h.push(("Content-Type", ct));
        }
        server.send("POST", "/api/v1/runs", &h, Some(body))
    };
    let json_ct = Some("application/json");
    // (what, body, status, code, words the detail must contain)
    type Case = (&'static str, Vec<u8>, u16, &'static str, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "unknown field",
            br#"{"workflow":"ultralytics-detect","params":{},"priority":1}"#.to_vec(),
            422,
            "invalid_body",
            vec!["unknown field `priority`"],
        ),
        (
            "wrong type",
            br#"{"workflow":5}"#.to_vec(),
            422,
            "invalid_body",
            vec!["workflow", "invalid type"],
        ),
        (
            "params not an object",
            br#"{"workflow":"ultralytics-detect","params":[1]}"#.to_vec(),
            422,
            "invalid_body",
            vec!["params", "invalid type"],
        ),
        (
            "missing field",
            br#"{"params":{}}"#.to_vec(),
            422,
            "invalid_body",
            vec!["missing field `workflow`"],
        ),
        (
            "malformed JSON",
            br#"{"workflow":"#.to_vec(),
            400,
            "malformed_json",
            vec!["not valid JSON"],
        ),
        (
            "unknown workflow",
            br#"{"workflow":"nope"}"#.to_vec(),
            422,
            "unknown_workflow",
            vec!["nope", "ultralytics-detect"],
        ),
        (
            "missing params",
            br#"{"workflow":"ultralytics-detect","params":{"project":"demo"}}"#.to_vec(),
            422,
            "invalid_params",
            vec!["release", "training_name"],
        ),
        (
            "param of the wrong type",
            serde_json::to_vec(&{
                let mut b = demo_run("t");
                b["params"]["overrides"] = json!("epochs=2");
                b
            })
            .unwrap(),
            422,
            "invalid_params",
            vec!["overrides"],
        ),
        (
            "param outside its enum",
            serde_json::to_vec(&{
                let mut b = demo_run("t");
                b["params"]["task"] = json!("classify");
                b
            })
            .unwrap(),
            422,
            "invalid_params",
            vec!["task", "classify"],
        ),
    ];
    for (what, body, status, code, needles) in cases {
        let r = post(&body, json_ct);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if let Some(e) = r.problem_error() {
            panic!("{what}: {e}");
        }
        let v = r.json();
        assert_eq!(v["code"], code, "{what}: {v}");
        let detail = v["detail"].as_str().unwrap();
        for n in needles {
            assert!(detail.contains(n), "{what}: detail lacks `{n}`: {detail}");
        }
    }
    // No JSON content type.
    post(br#"{"workflow":"ultralytics-detect"}"#, None).problem(415, "unsupported_media_type");
    post(br#"{"workflow":"ultralytics-detect"}"#, Some("text/plain"))
        .problem(415, "unsupported_media_type");
    // Over 1 MiB.
    let mut big = br#"{"workflow":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', (1 << 20) + 1000));
    big.extend(br#""}"#);
    // Raw: the server answers 413 before reading the body; a client still writing it may fail.
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let v = server
        .raw("POST", "/api/v1/runs", &h, Some(&big))
        .problem(413, "body_too_large");
    assert!(v["detail"].as_str().unwrap().contains("1048576"), "{v}");
    // No run was created by any of these.
    let runs = server.get("/api/v1/runs", &token).json();
    assert_eq!(runs["runs"], json!([]), "{runs}");

    // Unknown endpoints and methods.
    server
        .get("/api/v1/nothing-here", &token)
        .problem(404, "no_such_endpoint");
    server.get("/runs", &token).problem(404, "no_such_endpoint");
    server
        .get(&format!("/api/v1/runs/{FAKE_ID}"), &token)
        .problem(404, "run_not_found");
    server
        .get(&format!("/api/v1/models/{FAKE_ID}"), &token)
        .problem(404, "model_not_found");
}

/// Query strings are validated too; their errors must be problem details like the rest.
#[test]
fn bad_query_strings_are_problem_details() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let token = aws.token("admin", &[], &["admin"]);
    let mut p = Problems::default();
    for path in [
        "/api/v1/runs?limit=abc".to_owned(),
        "/api/v1/runs?colour=red".to_owned(),
        format!("/api/v1/runs/{FAKE_ID}?purge_outputs=maybe"),
    ] {
        let method = if path.contains("purge") {
            "DELETE"
        } else {
            "GET"
        };
        let r = server.call(method, &path, Some(&token), None);
        p.check(r.status == 400 && r.problem_error().is_none(), || {
            format!(
                "{method} {path}: {} {:?} {}",
                r.status,
                r.header("content-type"),
                r.text()
            )
        });
    }
    p.assert_none("bad query strings");
}

// ---------------------------------------------------------------------------------------------
// 4. Deleting a running run

/// A server whose run `training_name`'s training is under way (20 s per epoch): the workspace,
/// the server, an admin token and the run's id.
fn training_in_progress(training_name: &str) -> (ApiWorkspace, Server, String, String) {
    let aws = ApiWorkspace::with(
        Workspace::new().with_env("FAKE_YOLO_EPOCH_SECONDS", "20"),
        None,
    );
    let server = aws.serve();
    let admin = aws.token("admin", &[], &["admin"]);
    let r = server.post("/api/v1/runs", &admin, &demo_run(training_name));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let marker = aws.marker();
    wait_for(300, "yolo to be running", || {
        processes_mentioning(&marker)
            .iter()
            .any(|(_, c)| c.contains("yolo"))
    });
    (aws, server, admin, id)
}

#[test]
fn deleting_a_running_run_stops_its_processes_and_forgets_it() {
    let (aws, server, admin, id) = training_in_progress("doomed");
    let marker = aws.marker();
    let run = server.get(&format!("/api/v1/runs/{id}"), &admin).json();
    assert_eq!(run["status"], "running", "{run}");

    let started = std::time::Instant::now();
    let r = server.call("DELETE", &format!("/api/v1/runs/{id}"), Some(&admin), None);
    assert_eq!(r.status, 204, "DELETE /runs/{{id}}: {}", r.text());
    assert!(r.body.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "delete took {:?}",
        started.elapsed()
    );
    for _ in 0..200 {
        if processes_mentioning(&marker).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        processes_mentioning(&marker).is_empty(),
        "processes left behind: {:?}",
        processes_mentioning(&marker)
    );
    server
        .get(&format!("/api/v1/runs/{id}"), &admin)
        .problem(404, "run_not_found");
    server
        .call("DELETE", &format!("/api/v1/runs/{id}"), Some(&admin), None)
        .problem(404, "run_not_found");
    let stats = server.get("/api/v1/runs/stats", &admin).json();
    assert_eq!(stats["total"], 0, "{stats}");
    // Cancelling a finished (here: unknown) run is answered, not a 5xx.
    server
        .call(
            "POST",
            &format!("/api/v1/runs/{id}/cancel"),
            Some(&admin),
            None,
        )
        .problem(404, "run_not_found");
}

/// `GET /runs/{id}?wait=` answers when the time is up with the run as it is, and as soon as
/// the run ends (here: cancelled while a long poll waits) with its final record.
#[test]
fn long_poll_answers_when_the_run_ends_or_the_wait_is_up() {
    let (_aws, server, admin, id) = training_in_progress("polled");

    let prefix = &id[..8];
    let started = Instant::now();
    let run = server
        .get(&format!("/api/v1/runs/{prefix}?wait=1"), &admin)
        .json();
    assert_eq!(run["status"], "running", "{run}");
    assert_eq!(run["id"], id.as_str());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    for bad in ["61", "-1", "1.5", "soon", ""] {
        server
            .get(&format!("/api/v1/runs/{id}?wait={bad}"), &admin)
            .problem(400, "invalid_wait");
    }

    let waiting = {
        let (addr, token, id) = (server.addr, admin.clone(), id.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let auth = format!("Bearer {token}");
            let r = request(
                addr,
                "GET",
                &format!("/api/v1/runs/{id}?wait=60"),
                &[("Authorization", auth.as_str())],
                None,
                Duration::from_secs(90),
            )
            .expect("long poll");
            (r, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let r = server.call(
        "POST",
        &format!("/api/v1/runs/{id}/cancel"),
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let (r, took) = waiting.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let run = r.json();
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(run["finished_at"].is_string(), "{run}");
    assert!(
        took < Duration::from_secs(50),
        "the long poll took {took:?}"
    );

    // An ended run is answered at once.
    let started = Instant::now();
    let run = server
        .get(&format!("/api/v1/runs/{id}?wait=60"), &admin)
        .json();
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Recovery after the server is killed

#[test]
fn a_run_survives_a_killed_server_and_completes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("launches.txt");
    let aws = ApiWorkspace::with(
        Workspace::new()
            .with_env("FAKE_YOLO_EPOCH_SECONDS", "3")
            .with_env("FAKE_YOLO_RECORD", record.to_str().unwrap()),
        None,
    );
    let token = aws.token("trainer", &[], &["trainer"]);
    let mut server = aws.serve();
    let r = server.post("/api/v1/runs", &token, &demo_run("survivor"));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let marker = aws.marker();
    wait_for(300, "yolo to be running", || {
        processes_mentioning(&marker)
            .iter()
            .any(|(_, c)| c.contains("yolo"))
    });
    wait_for(10, "the launch to be recorded", || {
        launches(&record).len() == 1
    });
    server.kill(); // SIGKILL: no graceful shutdown
    assert!(
        processes_mentioning(&marker)
            .iter()
            .any(|(_, c)| c.contains("yolo")),
        "the trainer outlives the server"
    );

    let server = aws.serve();
    let run = server.wait_run(&id, &token, 120);
    assert_eq!(run["status"], "succeeded", "{run}\n{}", server.log_text());
    for sid in ["extract", "resolve", "train", "export", "register"] {
        assert_eq!(step(&run, sid)["status"], "succeeded", "{sid}: {run}");
    }
    let l = launches(&record);
    assert_eq!(l.len(), 1, "re-attached, not launched again: {l:?}");
    assert!(l[0].end.is_some(), "the one launch finished: {l:?}");
    // Epochs that ended while no server listened are in the run's metrics too.
    let (m, epochs) = run_metrics(&server, &id, &token);
    let planned = demo_run("x")["params"]["overrides"]["epochs"]
        .as_i64()
        .unwrap();
    assert_eq!(epochs, (1..=planned).collect::<Vec<_>>(), "{m}");
    assert!(
        server.log_text().contains("recover"),
        "the restarted server says it recovered the run:\n{}",
        server.log_text()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. OpenAPI

#[test]
fn openapi_document_lists_every_route() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let r = server.call("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json")
    );
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi: {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string());
    assert!(
        doc["components"]["securitySchemes"]["bearer"].is_object(),
        "bearer scheme: {}",
        doc["components"]
    );
    let mut missing = Vec::new();
    // Every guarded route (the public document need not describe itself).
    for route in route_table().into_iter().filter(|r| r.claim.is_some()) {
        let path = format!("/api/v1{}", route.path);
        if doc["paths"][&path][route.method.to_lowercase()].is_null() {
            missing.push(format!("{} {path}", route.method));
        }
    }
    assert!(
        missing.is_empty(),
        "{} route(s) missing from /api/v1/openapi.json:\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// The training façade, end to end

/// What a client written from the training plan sends: `detection` for `detect`, the base config
/// as its workspace path, the dataset as an extracted folder; and what it gets back: paths
/// relative to the workspace, errors without the sandbox's errno.
#[test]
fn training_facade_speaks_the_plans_request_shapes() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let token = aws.token("ui", &[], &["trainer"]);
    let r = server.get(
        "/api/v1/training/config/default?framework=ultralytics&task=detection",
        &token,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "configs/ultralytics/detect/default.yaml");
    let r = server.post(
        "/api/v1/training/config/resolve",
        &token,
        &json!({"framework": "ultralytics", "task": "detection",
                "base_config": "configs/ultralytics/detect/default.yaml",
                "overrides": {"epochs": 3}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config"]["epochs"], 3, "{}", r.text());
    let r = server.post(
        "/api/v1/training/config/resolve",
        &token,
        &json!({"framework": "ultralytics", "task": "detect", "base_config": "detect/nope.yaml"}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("cannot read 'detect/nope.yaml'") && !r.text().contains("os error"),
        "{}",
        r.text()
    );

    let r = server.post(
        "/api/v1/training/extract-release",
        &token,
        &json!({"zip_path": "projects/demo/releases/demo-release.zip"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["dataset_dir"], "projects/demo/training_data/demo-release",
        "{v}"
    );
    assert_eq!(
        v["data_yaml"], "projects/demo/training_data/demo-release/data.yaml",
        "{v}"
    );
    assert!(!r.text().contains(&aws.marker()), "{}", r.text());

    let start = json!({"project_id": "demo", "training_name": "plan1", "framework": "ultralytics",
        "task": "detection", "dataset_path": "projects/demo/training_data/demo-release/",
        "config": {"epochs": 1, "imgsz": 64, "batch": 4, "device": "cpu"}});
    let r = server.post("/api/v1/training/start", &token, &start);
    assert_eq!(r.status, 201, "{}", r.text());
    let run_id = r.json()["run_id"].as_str().unwrap().to_owned();
    let run = server.wait_run(&run_id, &token, 120);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["params"]["release"], "demo-release.zip", "{run}");
    assert_eq!(run["params"]["task"], "detect", "{run}");

    for (body, expected) in [
        (
            json!({"project_id": "demo", "training_name": "plan2", "framework": "ultralytics",
                   "task": "detect", "dataset_path": "projects/demo/training_data/nope"}),
            "projects/demo/training_data/nope does not exist",
        ),
        (
            json!({"project_id": "demo", "training_name": "plan2", "framework": "ultralytics",
                   "task": "detect"}),
            "exactly one of them",
        ),
    ] {
        let r = server.post("/api/v1/training/start", &token, &body);
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(r.text().contains(expected), "{}", r.text());
    }
}

#[test]
fn training_facade_previews_starts_follows_and_lists_checkpoints() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let token = aws.token("ui", &[], &["trainer"]);
    let r = server.get(
        "/api/v1/training/config/default?framework=ultralytics&task=detect",
        &token,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["yaml"].as_str().unwrap().contains("epochs:"));
    let r = server.post(
        "/api/v1/training/config/resolve",
        &token,
        &json!({"framework": "ultralytics", "task": "detect",
                "overrides": {"epochs": 2, "imgsz": 64, "lr0": 0.1}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["config"]["epochs"], 2, "{v}");
    assert_eq!(v["rejected"][0]["key"], "lr0", "user mode drops lr0: {v}");
    assert!(
        v["cli_preview"]
            .as_str()
            .unwrap()
            .starts_with("yolo detect train"),
        "{v}"
    );

    let zip = "projects/demo/releases/demo-release.zip";
    let r = server.get(
        &format!("/api/v1/training/check-extracted?zip_path={zip}"),
        &token,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extracted"], false, "{}", r.text());

    let start = json!({"project_id": "demo", "training_name": "ui1", "framework": "ultralytics",
        "task": "detect", "release": "demo-release.zip",
        "config": {"epochs": 2, "imgsz": 64, "batch": 4, "device": "cpu"}});
    let r = server.post("/api/v1/training/start", &token, &start);
    assert_eq!(r.status, 201, "{}", r.text());
    let run_id = r.json()["run_id"].as_str().unwrap().to_owned();
    let run = server.wait_run(&run_id, &token, 120);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["created_by"], "ui");

    let q = "project_id=demo&training_name=ui1";
    let r = server.get(&format!("/api/v1/training/logs?{q}"), &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("2/2"), "{}", r.text());
    let r = server.get(&format!("/api/v1/training/checkpoints?{q}"), &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let names: Vec<String> = r.json()["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert!(names.contains(&"best.pt".to_owned()), "{names:?}");
    let r = server.get(
        &format!("/api/v1/training/check-extracted?zip_path={zip}"),
        &token,
    );
    assert_eq!(r.json()["extracted"], true, "{}", r.text());
    server
        .post(
            "/api/v1/training/stop",
            &token,
            &json!({"project_id": "demo", "training_name": "ui1"}),
        )
        .problem(404, "no_active_training");
    // A second start of the same training is refused, naming the run that owns it.
    let r = server.post("/api/v1/training/start", &token, &start);
    let problem = r.problem(409, "conflict");
    assert!(
        problem["detail"].as_str().unwrap().contains(&run_id),
        "{problem}"
    );

    // Extracting a release outside a run: done (or found done), and done once.
    std::fs::copy(
        aws.ws.root().join(zip),
        aws.ws.root().join("projects/demo/releases/second.zip"),
    )
    .unwrap();
    for extracted in [true, false] {
        let r = server.post(
            "/api/v1/training/extract-release",
            &token,
            &json!({"zip_path": "projects/demo/releases/second.zip"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["extracted"], extracted, "{}", r.text());
        assert_eq!(r.json()["slug"], "second", "{}", r.text());
    }
    // A folder Kiln did not extract is not replaced: 409, not 500.
    std::fs::create_dir_all(aws.ws.root().join("projects/demo/training_data/third")).unwrap();
    std::fs::write(
        aws.ws
            .root()
            .join("projects/demo/training_data/third/mine.txt"),
        "x",
    )
    .unwrap();
    std::fs::copy(
        aws.ws.root().join(zip),
        aws.ws.root().join("projects/demo/releases/third.zip"),
    )
    .unwrap();
    let r = server.post(
        "/api/v1/training/extract-release",
        &token,
        &json!({"zip_path": "projects/demo/releases/third.zip"}),
    );
    let problem = r.problem(409, "conflict");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not extracted by Kiln"),
        "{problem}"
    );
    // Path-like names are refused before touching the file system.
    let r = server.get(
        "/api/v1/training/checkpoints?project_id=..&training_name=ui1",
        &token,
    );
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
    assert!(r.problem_error().is_none(), "{:?}", r.problem_error());
}

// ---------------------------------------------------------------------------------------------
// Slow and hostile clients

/// `GET /runs` with `token`, the connection closed after the answer.
fn get_runs(server: &Server, token: &str) -> Resp {
    server.get("/api/v1/runs", token)
}

/// `--plugin-instances 1`: the steps of concurrent runs take turns in the one instance slot
/// (none fails for want of one), and each finds its instance pristine, even after a step
/// that dirtied it crashed.
#[test]
fn steps_wait_for_a_free_plugin_instance_and_each_finds_it_pristine() {
    let aws = ApiWorkspace::new();
    let workflows = aws.ws.root().join("workflows");
    std::fs::write(
        workflows.join("remember.yaml"),
        r#"name: remember
steps:
  - {id: a, uses: hostile, action: remember}
  - {id: b, uses: hostile, action: remember}
  - {id: c, uses: hostile, action: remember}
  - {id: d, uses: hostile, action: remember, needs: [a, b, c]}
"#,
    )
    .unwrap();
    std::fs::write(
        workflows.join("crash.yaml"),
        r#"name: crash
steps:
  - {id: dirty, uses: hostile, action: remember}
  - {id: crash, uses: hostile, action: panic, needs: [dirty]}
"#,
    )
    .unwrap();
    let server = aws.serve_with(&["--plugin-instances", "1", "--max-parallel", "3"]);
    let token = aws.token("admin", &[], &["admin"]);
    let r = server.post("/api/v1/runs", &token, &json!({"workflow": "crash"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let crashed = server.wait_run(r.json()["id"].as_str().unwrap(), &token, 120);
    assert_eq!(crashed["status"], "failed", "{crashed}");
    let ids: Vec<String> = (0..4)
        .map(|_| {
            let r = server.post("/api/v1/runs", &token, &json!({"workflow": "remember"}));
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    for id in &ids {
        let run = server.wait_run(id, &token, 120);
        assert_eq!(run["status"], "succeeded", "{run}\n{}", server.log_text());
        let steps = run["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 4, "{run}");
        for s in steps {
            assert_eq!(
                s["outputs"]["result"], PRISTINE,
                "a step saw what an earlier instance left: {s}"
            );
        }
    }
}

/// A step waiting for an instance slot says so in its log, and its `timeout` names the wait
/// (as it does for GPUs); plugins installed meanwhile load at once, and a config preview is
/// answered at once (short calls have slots of their own); cancelling the step that holds the
/// slot lets the next one run.
#[test]
fn a_step_waiting_for_a_plugin_instance_says_so_and_plugins_still_load() {
    let aws = ApiWorkspace::new();
    let root = aws.ws.root();
    let long_spin = GRANTS.replace(
        "hostile: {programs: [yolo], memory_mb: 64, cpu_seconds_per_call: 1}",
        "hostile: {programs: [yolo], memory_mb: 64, cpu_seconds_per_call: 60}",
    );
    assert_ne!(long_spin, GRANTS);
    std::fs::write(root.join("configs/plugins.yaml"), long_spin).unwrap();
    let mmdetection = root.join(".kiln/plugins/mmdetection.wasm");
    let mmdetection_bytes = std::fs::read(&mmdetection).unwrap();
    std::fs::remove_file(&mmdetection).unwrap();
    for (name, step) in [
        ("spin", "{id: a, uses: hostile, action: spin}"),
        (
            "slow",
            "{id: a, uses: hostile, action: remember, timeout: 1s}",
        ),
        ("once", "{id: a, uses: hostile, action: remember}"),
    ] {
        std::fs::write(
            root.join(format!("workflows/{name}.yaml")),
            format!("name: {name}\nsteps:\n  - {step}\n"),
        )
        .unwrap();
    }
    let server = aws.serve_with(&["--plugin-instances", "1"]);
    let token = aws.token("admin", &[], &["admin"]);
    let trigger = |name: &str| {
        let r = server.post("/api/v1/runs", &token, &json!({"workflow": name}));
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_owned()
    };
    let spin = trigger("spin");
    wait_for(60, "the spinning step to run", || {
        let run = server.get(&format!("/api/v1/runs/{spin}"), &token).json();
        run["steps"][0]["status"] == "running"
    });
    std::thread::sleep(Duration::from_millis(300));

    let slow = trigger("slow");
    let run = server.wait_run(&slow, &token, 60);
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["steps"][0]["error_message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains(
            "timed out after 1s (the step's `timeout`) while waiting for a free plugin instance"
        ),
        "{run}"
    );
    let logs = text(&aws.kiln(&["logs", &slow]).stdout);
    assert!(
        logs.contains("waiting for a free plugin instance (all 1 are in use)"),
        "{logs}"
    );

    // A config preview, asked for while the only step slot is taken, is answered at once (a
    // short call: it never waits for the steps' slots, which trainings hold for hours).
    let r = server.post(
        "/api/v1/training/config/resolve",
        &token,
        &json!({"framework": "ultralytics", "task": "detect", "overrides": {"epochs": 2}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config"]["epochs"], 2, "{}", r.text());
    let run = server.get(&format!("/api/v1/runs/{spin}"), &token).json();
    assert_eq!(
        run["steps"][0]["status"], "running",
        "answered while the step holds the slot: {run}"
    );

    // A plugin installed while the only step slot is taken loads at once.
    std::fs::write(&mmdetection, &mmdetection_bytes).unwrap();
    let started = Instant::now();
    wait_for(20, "the new plugin to load", || {
        let list = server.get("/api/v1/plugins", &token).json();
        list.as_array()
            .is_some_and(|l| l.iter().any(|p| p["name"] == "mmdetection"))
    });
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "loading waited for the step slot: {:?}",
        started.elapsed()
    );

    let once = trigger("once");
    let r = server.call(
        "POST",
        &format!("/api/v1/runs/{spin}/cancel"),
        Some(&token),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let run = server.wait_run(&once, &token, 60);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"][0]["outputs"]["result"], PRISTINE);
    assert_eq!(server.wait_run(&spin, &token, 60)["status"], "cancelled");
}

#[test]
fn slow_clients_are_cut_off_and_healthy_streams_are_not() {
    let aws = ApiWorkspace::with(
        Workspace::new().with_env("FAKE_YOLO_EPOCH_SECONDS", "1.5"),
        None,
    );
    let server = aws.serve_with(&[
        "--header-timeout",
        "2s",
        "--idle-timeout",
        "1s",
        "--body-timeout",
        "2s",
    ]);
    let token = aws.token("trainer", &[], &["trainer"]);
    // Each of these would go on for a minute; the server must end them long before.
    let limit = Duration::from_secs(60);

    // Headers dribbled one byte at a time: disconnected, without being served.
    // Raw (Dribbler): no client library dribbles its request.
    let headers = Dribbler::headers(server.addr, limit);
    // A body dribbled one byte at a time: cut off with a 408 problem. Raw, as above.
    let body = Dribbler::run_body(server.addr, &token, 1000, Duration::from_millis(300), limit);
    // A kept-alive connection left idle after its answer: closed.
    // Raw: the test holds the connection itself to see the server close it.
    let mut idle = std::net::TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(limit)).unwrap();
    std::io::Write::write_all(
        &mut idle,
        b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: kiln\r\n\r\n",
    )
    .unwrap();
    let idle_start = std::time::Instant::now();
    let mut answer = Vec::new();
    let idle_read = std::io::Read::read_to_end(&mut idle, &mut answer);
    let idle_elapsed = idle_start.elapsed();

    let h = headers.wait();
    assert!(
        h.closed_after.is_some_and(|d| d < Duration::from_secs(30)),
        "a client dribbling its headers was not disconnected: {h:?}"
    );
    assert_ne!(
        h.status(),
        Some(200),
        "the dribbled request was served: {h:?}"
    );
    let b = body.wait();
    assert!(
        b.closed_after.is_some_and(|d| d < Duration::from_secs(30)),
        "a client dribbling its body was not cut off: {b:?}"
    );
    assert_eq!(
        b.status(),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&b.response)
    );
    let problem: Value = serde_json::from_str(&b.body()).unwrap();
    assert_eq!(problem["code"], "body_timeout", "{problem}");
    assert!(
        String::from_utf8_lossy(&b.response).contains("application/problem+json"),
        "{b:?}"
    );
    assert!(idle_read.is_ok(), "idle connection: {idle_read:?}");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "the kept-alive request was answered first"
    );
    assert!(
        idle_elapsed < Duration::from_secs(30),
        "an idle kept-alive connection stayed open for {idle_elapsed:?}"
    );

    // A live log stream lasts longer than every timeout above and is not cut.
    let r = server.post("/api/v1/runs", &token, &demo_run("slow"));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let mut stream = server.sse(&format!("/api/v1/runs/{id}/logs?step=train"), &token, None);
    assert_eq!(stream.status, 200);
    let events = stream.until_end();
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("end"),
        "the stream ended early after {:?}: {events:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the training was too short to outlast the timeouts"
    );
}

#[test]
fn the_connection_bound_holds_and_valid_requests_are_served() {
    let aws = ApiWorkspace::new();
    let server = aws.serve_with(&[
        "--max-connections",
        "4",
        "--header-timeout",
        "10s",
        "--idle-timeout",
        "1s",
    ]);
    let token = aws.token("viewer", &[], &["viewer"]);
    let limit = Duration::from_secs(90);
    // Three slow clients: the server still answers a valid request at once.
    // Raw (Dribbler): the slow clients hold connections open; the valid requests go through ureq.
    let mut slow: Vec<Dribbler> = (0..3)
        .map(|_| Dribbler::headers(server.addr, limit))
        .collect();
    assert_eq!(get_runs(&server, &token).status, 200);
    // A fourth fills the bound: the next connection is refused with a 503 problem. (Under
    // load the previous request's connection may still hold its slot when the fourth slow
    // client arrives, which is then the one refused: add slow clients until the bound is full.)
    let mut refused = None;
    for _ in 0..20 {
        slow.push(Dribbler::headers(server.addr, limit));
        for _ in 0..10 {
            let r = get_runs(&server, &token);
            if r.status == 503 {
                refused = Some(r);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if refused.is_some() {
            break;
        }
    }
    let r = refused.expect("a connection over --max-connections was served");
    r.problem(503, "too_many_connections");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    // Once the slow clients are cut off by the header timeout, requests are served again.
    let served = (0..600).any(|_| {
        let ok = get_runs(&server, &token).status == 200;
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(
        served,
        "valid requests were not served after the slow clients"
    );
    for d in slow {
        let end = d.wait();
        assert!(end.closed_after.is_some(), "a slow client held on: {end:?}");
    }
}

/// A burst of requests with a valid token the server has not verified yet (it just started,
/// as an engine joining a fleet does) is served: they wait for one verification instead of
/// each counting against the lockout.
#[test]
fn a_burst_with_a_new_valid_token_is_not_locked_out() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let token = aws.token("burst", &[], &["viewer"]);
    let auth = format!("Bearer {token}");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|_| {
                scope.spawn(|| {
                    request(
                        server.addr,
                        "GET",
                        "/api/v1/runs",
                        &[("Authorization", auth.as_str())],
                        None,
                        Duration::from_secs(60),
                    )
                    .map(|r| r.status)
                    .unwrap_or(0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[test]
fn bad_tokens_are_locked_out_without_slowing_valid_ones() {
    let aws = ApiWorkspace::new();
    let server = aws.serve_with(&["--auth-max-failures", "3", "--auth-lockout", "60s"]);
    let good = aws.token("good", &[], &["viewer"]);
    let victim = aws.token("victim", &[], &["viewer"]);
    let other = aws.token("other", &[], &["viewer"]);
    let wrong = |token: &str| {
        let (id, secret) = token.rsplit_once('_').unwrap();
        format!("{id}_{}", "0".repeat(secret.len()))
    };
    // The scheme is case-insensitive.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {good}");
        let r = server.send("GET", "/api/v1/runs", &[("Authorization", &auth)], None);
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
    // A burst of wrong secrets for one token id, in parallel: at most 3 are checked (401),
    // the rest are refused at once (429 with Retry-After).
    let bad = wrong(&victim);
    let statuses: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| s.spawn(|| get_runs(&server, &bad)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unauthorized = statuses.iter().filter(|r| r.status == 401).count();
    let locked: Vec<&Resp> = statuses.iter().filter(|r| r.status == 429).collect();
    assert!(
        unauthorized <= 3 && unauthorized + locked.len() == statuses.len(),
        "burst statuses: {:?}",
        statuses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in &locked {
        r.problem(429, "too_many_failures");
        let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&secs), "Retry-After: {secs}");
    }
    // Now surely locked: even the right secret of that id waits (it is not verified).
    get_runs(&server, &bad).problem(429, "too_many_failures");
    get_runs(&server, &victim).problem(429, "too_many_failures");
    // A token that already authenticated keeps working while its id is under attack...
    let bad_good = wrong(&good);
    let attack = std::thread::scope(|s| {
        let attacker = s.spawn(|| {
            (0..20)
                .map(|_| get_runs(&server, &bad_good).status)
                .collect::<Vec<_>>()
        });
        let started = std::time::Instant::now();
        for _ in 0..5 {
            assert_eq!(get_runs(&server, &good).status, 200);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "valid requests slowed to {:?}",
            started.elapsed()
        );
        attacker.join().unwrap()
    });
    assert!(attack.contains(&429), "{attack:?}");
    assert!(attack.iter().all(|s| matches!(s, 401 | 429)), "{attack:?}");
    // ...and the other tokens are not affected at all.
    assert_eq!(get_runs(&server, &other).status, 200);
    // Random ids are answered 401 (never locked, never hashed).
    for i in 0..20 {
        let r = get_runs(&server, &format!("kiln_{i:012}_{}", "f".repeat(64)));
        r.problem(401, "unauthorized");
    }
}

#[test]
fn undecodable_paths_and_out_of_range_numbers_are_400_problems() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let token = aws.token("admin", &[], &["admin"]);
    let auth = format!("Bearer {token}");
    let mut p = Problems::default();
    let mut expect = |method: &str, path: &str, headers: &[(&str, &str)], code: &str| {
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        let r = server.send(method, path, &all, None);
        let ok = r.status == 400 && r.problem_error().is_none() && r.json()["code"] == code;
        p.check(ok, || {
            format!(
                "{method} {path} {headers:?}: expected 400 {code}, got {} {:?} {}",
                r.status,
                r.header("content-type"),
                r.text()
            )
        });
    };
    for path in [
        "/api/v1/runs/%FF",
        "/api/v1/runs/%C3%28/logs",
        "/api/v1/runs/a%80b/cancel",
        "/api/v1/models/%FE%FF",
    ] {
        let method = if path.ends_with("cancel") {
            "POST"
        } else {
            "GET"
        };
        expect(method, path, &[], "invalid_path");
    }
    let huge = "9223372036854775808";
    let wrap = "18446744073709551616";
    for v in ["-1", huge, wrap, "abc", "1.5", "+1", "", "0x10"] {
        expect(
            "GET",
            &format!("/api/v1/runs?offset={v}"),
            &[],
            "invalid_offset",
        );
        expect(
            "GET",
            &format!("/api/v1/runs/{FAKE_ID}/logs?offset={v}"),
            &[],
            "invalid_offset",
        );
        expect(
            "GET",
            &format!("/api/v1/training/logs?project_id=demo&training_name=t&offset={v}"),
            &[],
            "invalid_offset",
        );
        for accept in ["text/event-stream", "application/json"] {
            expect(
                "GET",
                &format!("/api/v1/runs/{FAKE_ID}/logs"),
                &[("Accept", accept), ("Last-Event-ID", v)],
                "invalid_last_event_id",
            );
        }
    }
    for v in ["0", "-1", "501", huge, wrap, "ten"] {
        expect(
            "GET",
            &format!("/api/v1/runs?limit={v}"),
            &[],
            "invalid_limit",
        );
    }
    for v in ["0", "-1", "10001", huge] {
        expect(
            "GET",
            &format!("/api/v1/runs/{FAKE_ID}/logs?limit={v}"),
            &[],
            "invalid_limit",
        );
    }
    expect(
        "GET",
        "/api/v1/runs?status=SUCCEEDED",
        &[],
        "invalid_status",
    );
    // The largest offset is valid: an empty page, no overflow.
    let r = server.get("/api/v1/runs?offset=9223372036854775807&limit=500", &token);
    p.check(r.status == 200 && r.json()["next_offset"].is_null(), || {
        format!("largest offset: {} {}", r.status, r.text())
    });
    // The method and route errors are problems too, and 405 lists the allowed methods.
    let r = server.call("PUT", "/api/v1/runs", Some(&token), None);
    r.problem(405, "method_not_allowed");
    let allow = r.header("allow").unwrap_or_default().to_owned();
    p.check(allow.contains("GET") && allow.contains("POST"), || {
        format!("Allow: {allow}")
    });
    server
        .call(
            "PATCH",
            &format!("/api/v1/runs/{FAKE_ID}"),
            Some(&token),
            None,
        )
        .problem(405, "method_not_allowed");
    p.assert_none("undecodable paths and numbers");
}

/// `%` and `_` in a run id prefix are literal and case matters, on both databases.
fn run_prefixes_match_literally(aws: &ApiWorkspace) {
    let server = aws.serve();
    let token = aws.token("trainer", &[], &["trainer"]);
    let mut body = demo_run("prefix");
    body["params"]["release"] = json!("missing.zip");
    let r = server.post("/api/v1/runs", &token, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    server.wait_run(&id, &token, 60);
    let prefix = &id[..8];
    assert_eq!(
        server.get(&format!("/api/v1/runs/{prefix}"), &token).json()["id"],
        id.as_str()
    );
    let mut wildcards = vec![
        "%25".to_owned(),
        "_".to_owned(),
        format!("{}%25", &prefix[..4]),
        format!("{}_", &prefix[..7]),
        format!("%25{}", &id[1..8]),
        format!("_{}", &id[1..8]),
    ];
    // Case matters (SQLite's LIKE ignored it, PostgreSQL's did not).
    for candidate in [prefix.to_uppercase(), id.to_uppercase()] {
        if !id.starts_with(&candidate) {
            wildcards.push(candidate);
        }
    }
    for w in wildcards {
        server
            .get(&format!("/api/v1/runs/{w}"), &token)
            .problem(404, "run_not_found");
    }
}

#[test]
fn run_prefixes_match_literally_on_sqlite() {
    run_prefixes_match_literally(&ApiWorkspace::new());
}

#[test]
fn run_prefixes_match_literally_on_postgres() {
    let Some(url) = fresh_postgres() else {
        eprintln!(
            "skipped: KILN_TEST_POSTGRES_URL is not set (scripts/start-postgres.sh prints one)"
        );
        return;
    };
    run_prefixes_match_literally(&ApiWorkspace::with(Workspace::new(), Some(url)));
}

// ---------------------------------------------------------------------------------------------
// What the web monitor reads: the caller, projects, frameworks, options, epoch metrics, the DAG

#[test]
fn the_monitors_endpoints_describe_the_caller_the_workspace_and_a_run() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let viewer = aws.token("watcher", &[], &["viewer"]);
    let trainer = aws.token("trainer", &[], &["trainer"]);

    // Who is asking: any valid token may, and gets exactly its claims.
    let me = server.get("/api/v1/session", &viewer);
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(
        me.json(),
        json!({"name": "watcher", "claims": ["ViewTrainingRuns"], "insecure": false})
    );
    let r = server.call("GET", "/api/v1/session", Some("kiln_nope"), None);
    assert_eq!(r.status, 401, "{}", r.text());

    // Projects and their release ZIPs; a hidden or oddly named entry is not one.
    std::fs::create_dir_all(aws.ws.root().join("projects/.hidden/releases")).unwrap();
    std::fs::write(aws.ws.root().join("projects/demo/releases/notes.txt"), "x").unwrap();
    let p = server.get("/api/v1/projects", &viewer).json();
    assert_eq!(p["truncated"], false);
    let names: Vec<&str> = p["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo"], "{p}");
    let releases = &p["projects"][0]["releases"];
    assert_eq!(releases.as_array().unwrap().len(), 1, "{p}");
    assert_eq!(releases[0]["file"], "demo-release.zip");
    assert_eq!(
        releases[0]["path"],
        "projects/demo/releases/demo-release.zip"
    );
    assert!(releases[0]["size"].as_u64().unwrap() > 0);

    // Frameworks: both installed with their tasks; one whose plugin is gone says so.
    let f = server.get("/api/v1/training/frameworks", &viewer).json();
    let fw = |name: &str| {
        f["frameworks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap_or_else(|| panic!("no framework {name}: {f}"))
            .clone()
    };
    let ultra = fw("ultralytics");
    assert_eq!(ultra["startable"], true, "{ultra}");
    assert_eq!(ultra["workflow"], "ultralytics-detect");
    assert!(
        ultra["tasks"]
            .as_array()
            .unwrap()
            .contains(&json!("detect"))
    );
    std::fs::remove_file(aws.ws.root().join(".kiln/plugins/mmdetection.wasm")).unwrap();
    wait_for(30, "the removed plugin to be noticed", || {
        let f = server.get("/api/v1/training/frameworks", &viewer).json();
        f["frameworks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "mmdetection" && x["startable"] == false)
    });

    // The options a form offers, from the plugin: user-mode ones first.
    let r = server.post(
        "/api/v1/training/config/resolve",
        &viewer,
        &json!({"framework": "ultralytics", "task": "detect", "mode": "developer", "overrides": {}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let options = r.json()["options"].as_array().unwrap().clone();
    assert_eq!(options[0]["key"], "epochs", "{:?}", &options[..2]);
    assert_eq!(options[0]["type"], "int");
    assert_eq!(options[0]["user"], true);
    assert_eq!(options[0]["default"], 50, "the base config's value");
    assert!(
        options
            .iter()
            .any(|o| o["key"] == "lr0" && o["user"] == false),
        "a developer option"
    );
    assert!(
        !options.iter().any(|o| o["key"] == "data"),
        "a reserved key"
    );

    // A run's DAG edges and its metrics per epoch.
    let r = server.post("/api/v1/runs", &trainer, &demo_run("charted"));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let run = server.wait_run(&id, &viewer, 120);
    assert_eq!(run["status"], "succeeded", "{run}");
    let needs = |step: &str| -> Vec<String> {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step_id"] == step)
            .unwrap()["needs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(needs("extract").is_empty());
    assert!(needs("train").contains(&"resolve".to_owned()), "{run}");
    let (m, epochs) = run_metrics(&server, &id, &viewer);
    assert_eq!(epochs, [1, 2], "{m}");
    let last = &m["epochs"][1];
    assert_eq!(last["step"], "train");
    assert!(last["metrics"]["metrics/mAP50(B)"].is_number(), "{last}");
    assert!(last["metrics"]["train/box_loss"].is_number(), "{last}");
    let r = server.get(&format!("/api/v1/runs/{FAKE_ID}/metrics"), &viewer);
    assert_eq!(r.status, 404);

    // A preflight says whether a training name is free in a project.
    let name_problem = |name: &str| {
        let r = server.post(
            "/api/v1/training/config/resolve",
            &viewer,
            &json!({"framework": "ultralytics", "task": "detect", "training_name": name,
                    "project_id": "demo"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["training_name_problem"].clone()
    };
    assert_eq!(name_problem("fresh"), Value::Null);
    let taken = name_problem("charted");
    assert!(
        taken
            .as_str()
            .is_some_and(|p| p.contains("belongs to run") && p.contains(&id)),
        "{taken}"
    );
    std::fs::create_dir_all(
        aws.ws
            .root()
            .join("projects/demo/model/training/stray/weights"),
    )
    .unwrap();
    let stray = name_problem("stray");
    assert!(
        stray.as_str().is_some_and(|p| p.contains("no run owns it")),
        "{stray}"
    );
}

/// The page is part of the binary: served at /ui/ without a token, revalidated by ETag, with a
/// policy that lets it load nothing from elsewhere; an unknown asset is a 404 problem.
#[test]
fn the_web_monitor_is_served_from_the_binary() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let r = server.call("GET", "/", None, None);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/ui/"));
    let page = server.call("GET", "/ui/", None, None);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.text()
            .contains(r#"<script type="module" src="js/app.js">"#)
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let etag = page.header("etag").unwrap().to_owned();
    let again = request(
        server.addr,
        "GET",
        "/ui/",
        &[("If-None-Match", &etag)],
        None,
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(again.status, 304);
    for (path, kind) in [
        ("/ui/js/app.js", "text/javascript"),
        ("/ui/vendor/uplot.mjs", "text/javascript"),
        ("/ui/vendor/cytoscape.mjs", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = server.call("GET", path, None, None);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
    }
    for path in ["/ui/nope.js", "/ui/../Cargo.toml", "/ui/%2e%2e/Cargo.toml"] {
        let r = server.call("GET", path, None, None);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
}

/// `GET /metrics`: Prometheus' text format, behind a token with ViewTrainingRuns.
#[test]
fn metrics_are_served_to_a_viewer_in_prometheus_format() {
    let aws = ApiWorkspace::new();
    let server = aws.serve();
    let viewer = aws.token("prometheus", &[], &["viewer"]);
    let trainer = aws.token("t", &[], &["trainer"]);
    let only_create = aws.token("c", &["CreateTrainingRun"], &[]);
    let r = server.post("/api/v1/runs", &trainer, &demo_run("measured"));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    server.wait_run(&id, &viewer, 120);
    assert_eq!(server.call("GET", "/metrics", None, None).status, 401);
    assert_eq!(
        server
            .call("GET", "/metrics", Some(&only_create), None)
            .status,
        403
    );
    let r = server.call("GET", "/metrics", Some(&viewer), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .contains("openmetrics-text")
    );
    let text = r.text();
    for line in [
        "kiln_runs{status=\"succeeded\"} 1",
        "kiln_steps{status=\"succeeded\"} 5",
        "kiln_step_duration_seconds_count{uses=\"ultralytics\"} 2",
        "kiln_engine_runs_executing 0",
        "kiln_engine_programs_followed 0",
        "kiln_engine_leases_held 0",
        "kiln_engine_runs_claimed_total 1",
        "kiln_engine_takeovers_total 0",
        "kiln_engine_leases_lost_total 0",
        "kiln_engine_lease_renewals_total ",
        "kiln_engines{host=",
        "# EOF",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
}

/// `GET /runs/{id}/metrics` and the epochs it lists, in order.
fn run_metrics(server: &Server, id: &str, token: &str) -> (Value, Vec<i64>) {
    let m = server
        .get(&format!("/api/v1/runs/{id}/metrics"), token)
        .json();
    let epochs = m["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_i64().unwrap())
        .collect();
    (m, epochs)
}
