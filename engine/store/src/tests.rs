use super::*;

/// A fresh store on SQLite, and one on PostgreSQL too when KILN_TEST_POSTGRES_URL names a
/// server (each test gets its own database there).
async fn stores() -> Vec<(tempfile::TempDir, Store)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/kiln.db", dir.path().display());
    let mut out = vec![(dir, Store::connect(&url).await.unwrap())];
    if let Ok(admin) = std::env::var("KILN_TEST_POSTGRES_URL") {
        let url = test_support::fresh_postgres_database(&admin).await;
        out.push((
            tempfile::tempdir().unwrap(),
            Store::connect(&url).await.unwrap(),
        ));
    }
    out
}

fn new_run(id: &str) -> NewRun {
    NewRun {
        id: id.into(),
        workflow_name: "wf".into(),
        workflow_file: Some("workflows/wf.yaml".into()),
        workflow_yaml: "name: wf".into(),
        params: serde_json::json!({"epochs": 2}),
        created_by: "tester".into(),
        requires: None,
    }
}

#[tokio::test]
async fn run_lifecycle_records_times_and_status() {
    for (_d, s) in stores().await {
        let steps = [NewStep {
            step_id: "a".into(),
            uses: "builtin/x".into(),
            action: None,
        }];
        let r = s
            .create_run(&new_run("0001-aaaa"), &steps, &[], None)
            .await
            .unwrap()
            .0;
        assert_eq!(r.status, RunStatus::Queued);
        assert_eq!(r.params["epochs"], 2);
        s.start_run("0001-aaaa").await.unwrap();
        let attempt = s
            .start_step("0001-aaaa", "a", &serde_json::json!({"k": 1}), None, None)
            .await
            .unwrap();
        assert_eq!(attempt, 1);
        s.finish_step("0001-aaaa", "a", StepStatus::Failed, None, Some("boom"))
            .await
            .unwrap();
        let done = s
            .finish_run(
                "0001-aaaa",
                RunStatus::Failed,
                Some("step a failed: boom"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(done.status, RunStatus::Failed);
        assert!(done.finished_at.is_some() && done.duration_ms.is_some());
        let step = s.step("0001-aaaa", "a").await.unwrap();
        assert_eq!(step.status, StepStatus::Failed);
        assert_eq!(step.error_message.as_deref(), Some("boom"));
        let stats = s.run_stats().await.unwrap();
        assert_eq!(stats.total, 1);
        assert_eq!(stats.success_rate, Some(0.0));
    }
}
#[tokio::test]
async fn prefix_lookup_is_unambiguous_or_says_so() {
    for (_d, s) in stores().await {
        s.create_run(&new_run("abc-1"), &[], &[], None)
            .await
            .unwrap();
        s.create_run(&new_run("abc-2"), &[], &[], None)
            .await
            .unwrap();
        assert!(matches!(
            s.run("abc").await,
            Err(Error::AmbiguousRun { .. })
        ));
        assert!(matches!(s.run("zzz").await, Err(Error::RunNotFound(_))));
        assert_eq!(s.run("abc-2").await.unwrap().id, "abc-2");
        assert_eq!(
            s.list_runs(Some(RunStatus::Queued), 10)
                .await
                .unwrap()
                .len(),
            2
        );
        assert!(
            s.list_runs(Some(RunStatus::Running), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
/// `%` and `_` are not wildcards and case matters, on SQLite (whose LIKE ignores ASCII case)
/// and PostgreSQL alike.
#[tokio::test]
async fn prefix_lookup_is_literal_and_case_sensitive() {
    for (_d, s) in stores().await {
        for id in [
            "ab%x-1",
            "abcx-2",
            "a_c-3",
            "abc-4",
            "Upper-5",
            "uni-\u{e9}t\u{e9}-6",
        ] {
            s.create_run(&new_run(id), &[], &[], None).await.unwrap();
        }
        // `%` matches only a `%`.
        assert_eq!(s.run("ab%").await.unwrap().id, "ab%x-1");
        assert!(matches!(s.run("%").await, Err(Error::RunNotFound(_))));
        assert!(matches!(s.run("a%").await, Err(Error::RunNotFound(_))));
        // `_` matches only a `_`.
        assert_eq!(s.run("a_").await.unwrap().id, "a_c-3");
        assert!(matches!(s.run("_").await, Err(Error::RunNotFound(_))));
        assert!(matches!(s.run("ab_").await, Err(Error::RunNotFound(_))));
        // Still a prefix match, ambiguous when it should be.
        assert!(matches!(
            s.run("abc").await,
            Err(Error::AmbiguousRun { .. })
        ));
        assert_eq!(s.run("abcx").await.unwrap().id, "abcx-2");
        // Case-sensitive everywhere.
        assert_eq!(s.run("Upper").await.unwrap().id, "Upper-5");
        assert!(matches!(s.run("upper").await, Err(Error::RunNotFound(_))));
        assert!(matches!(s.run("ABC").await, Err(Error::RunNotFound(_))));
        // Characters, not bytes.
        assert_eq!(s.run("uni-\u{e9}").await.unwrap().id, "uni-\u{e9}t\u{e9}-6");
        assert!(matches!(
            s.run("uni-\u{c9}").await,
            Err(Error::RunNotFound(_))
        ));
        // Empty and unstorable keys match nothing (and are no database error on PostgreSQL).
        assert!(matches!(s.run("").await, Err(Error::RunNotFound(_))));
        assert!(matches!(s.run("ab\0").await, Err(Error::RunNotFound(_))));
        assert!(matches!(s.model("m\0").await, Err(Error::ModelNotFound(_))));
        assert!(s.token("t\0").await.unwrap().is_none());
        assert!(s.list_models(Some("p\0")).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn model_registration_is_idempotent_per_step_and_versions_per_name() {
    for (_d, s) in stores().await {
        s.create_run(&new_run("r1"), &[], &[], None).await.unwrap();
        s.create_run(&new_run("r2"), &[], &[], None).await.unwrap();
        let m = |run: &str| NewModel {
            name: "det".into(),
            project: "demo".into(),
            task: Some("detect".into()),
            framework: Some("ultralytics".into()),
            format: Some("pt".into()),
            file_path: "projects/demo/model/x/weights/best.pt".into(),
            config_path: None,
            input_size: Some(64),
            class_names: vec!["a".into(), "b".into()],
            metrics: Some(serde_json::json!({"map50": 0.5})),
            dataset: Some("release.zip".into()),
            training_run_id: run.into(),
            training_step_id: "register".into(),
            base_model: Some("yolo11n.yaml".into()),
            created_by: "tester".into(),
        };
        let a = s.register_model(&m("r1")).await.unwrap();
        assert_eq!(a.framework.as_deref(), Some("ultralytics"));
        let again = s.register_model(&m("r1")).await.unwrap();
        assert_eq!(a.id, again.id);
        assert_eq!(again.version, 1);
        let b = s.register_model(&m("r2")).await.unwrap();
        assert_eq!(b.version, 2);
        assert!(!b.is_published);
        assert_eq!(b.class_names, vec!["a", "b"]);
        assert_eq!(s.list_models(Some("demo")).await.unwrap().len(), 2);
    }
}
#[tokio::test]
async fn events_are_ordered_per_run() {
    for (_d, s) in stores().await {
        s.create_run(&new_run("r"), &[], &[], None).await.unwrap();
        s.append_event("r", Some("a"), "info", "one").await.unwrap();
        s.append_event("r", None, "warn", "two").await.unwrap();
        let all = s.events("r", None).await.unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(s.events("r", Some("a")).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn epoch_metrics_are_one_row_per_epoch_and_go_with_their_run() {
    for (_d, s) in stores().await {
        s.create_run(&new_run("r"), &[], &[], None).await.unwrap();
        let m = |pairs: &[(&str, f64)]| -> serde_json::Map<String, serde_json::Value> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).into()))
                .collect()
        };
        s.set_epoch_metrics_soon("r", "train", 2, &m(&[("loss", 0.5)]));
        s.set_epoch_metrics_soon("r", "train", 1, &m(&[("loss", 0.9)]));
        // A later report of an epoch replaces its row (the caller merged the epoch's reports).
        s.set_epoch_metrics_soon("r", "train", 2, &m(&[("loss", 0.4), ("mAP", 0.7)]));
        s.flush().await.unwrap();
        let rows = s.epoch_metrics("r").await.unwrap();
        let got: Vec<(i64, serde_json::Value)> = rows
            .iter()
            .map(|r| (r.epoch, serde_json::Value::Object(r.metrics.clone())))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, serde_json::json!({"loss": 0.9})),
                (2, serde_json::json!({"loss": 0.4, "mAP": 0.7}))
            ]
        );
        s.delete_run("r").await.unwrap();
        assert!(s.epoch_metrics("r").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_training_has_one_owner_until_its_run_is_deleted() {
    for (_d, s) in stores().await {
        let first = TrainingRef {
            project: "demo".into(),
            name: "first".into(),
        };
        let other = TrainingRef {
            project: "demo".into(),
            name: "other".into(),
        };
        s.create_run(&new_run("r1"), &[], std::slice::from_ref(&first), None)
            .await
            .unwrap();
        // A second run naming the same training is not recorded at all.
        let err = s
            .create_run(&new_run("r2"), &[], &[other.clone(), first.clone()], None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::TrainingTaken { owner, .. } if owner == "r1"),
            "{err}"
        );
        assert!(err.to_string().contains("delete run r1"), "{err}");
        assert!(matches!(s.run("r2").await, Err(Error::RunNotFound(_))));
        assert_eq!(s.training_owner(&other).await.unwrap(), None);
        // Claims at step start: held by the owner, refused to others.
        s.create_run(&new_run("r3"), &[], &[], None).await.unwrap();
        assert_eq!(
            s.claim_training("r1", &first).await.unwrap(),
            ClaimOutcome::Held
        );
        assert!(matches!(
            s.claim_training("r3", &first).await,
            Err(Error::TrainingTaken { .. })
        ));
        assert_eq!(
            s.claim_training("r3", &other).await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert_eq!(s.trainings_of("r3").await.unwrap(), vec![other.clone()]);
        s.release_training("r3", &other).await.unwrap();
        assert!(s.trainings_of("r3").await.unwrap().is_empty());
        // Deleting the owner frees the name.
        s.delete_run("r1").await.unwrap();
        assert_eq!(s.training_owner(&first).await.unwrap(), None);
        assert_eq!(
            s.claim_training("r3", &first).await.unwrap(),
            ClaimOutcome::Claimed
        );
    }
}

#[tokio::test]
async fn dataset_uses_are_shared_and_go_with_their_runs() {
    for (_d, s) in stores().await {
        s.create_run(&new_run("r1"), &[], &[], None).await.unwrap();
        s.create_run(&new_run("r2"), &[], &[], None).await.unwrap();
        s.use_dataset("r1", "demo", "data", "aa").await.unwrap();
        s.use_dataset("r2", "demo", "data", "aa").await.unwrap();
        s.use_dataset("r2", "demo", "data", "bb").await.unwrap();
        let users = s.dataset_users("demo", "data").await.unwrap();
        assert_eq!(
            users.iter().map(|u| u.run_id.as_str()).collect::<Vec<_>>(),
            vec!["r1", "r2"]
        );
        assert_eq!(users[1].release_sha256, "bb");
        assert_eq!(
            s.datasets_of("r1").await.unwrap(),
            vec![("demo".to_owned(), "data".to_owned())]
        );
        s.delete_run("r1").await.unwrap();
        assert_eq!(s.dataset_users("demo", "data").await.unwrap().len(), 1);
    }
}

/// A write of an event with a given sequence number, as the journal takes it.
fn log_write(
    seq: i64,
    message: &'static str,
) -> impl for<'c> Fn(&'c mut sqlx::AnyConnection) -> journal::BoxFuture<'c, Result<()>> + Send + 'static
{
    move |conn| {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO events (run_id, seq, step_id, at, level, message) \
                 VALUES ('run-ok', $1, NULL, '2026-01-01T00:00:00.000Z', 'info', $2)",
            )
            .bind(seq)
            .bind(message)
            .execute(conn)
            .await
            .map(|_| ())
            .map_err(query_err("a test write"))
        })
    }
}

/// Writes queued together share one commit; one that fails is rolled back alone and its caller
/// hears why, while the others commit, each once (the batch is rolled back and applied again
/// with a savepoint around each write). On both databases: on PostgreSQL a failed statement
/// aborts the whole transaction.
#[tokio::test]
async fn a_failing_write_does_not_take_its_batch_down() {
    for (_dir, store) in stores().await {
        store
            .create_run(&new_run("run-ok"), &[], &[], None)
            .await
            .unwrap();
        let journal = store.journal();
        // Deferred writes wait for the urgent one: all three go in one transaction.
        let first = journal.queue(false, "test", None, None, log_write(1, "before"));
        let broken = journal.queue(false, "test", None, None, |conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO no_such_table VALUES (1)")
                    .execute(conn)
                    .await
                    .map(|_| ())
                    .map_err(query_err("a broken write"))
            })
        });
        let last = journal.now("test", None, log_write(2, "after")).await;
        assert!(last.is_ok(), "{last:?}");
        assert!(first.await.unwrap().is_ok());
        let e = broken.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("no_such_table"), "{e}");
        assert_eq!(
            logged(&store).await,
            [(1, "before".to_owned()), (2, "after".to_owned())]
        );
    }
}

/// The events of `run-ok`, as (seq, message).
async fn logged(store: &Store) -> Vec<(i64, String)> {
    store
        .events_after("run-ok", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.message))
        .collect()
}

/// A write that is one statement inserting event `seq` of `run-ok`.
fn log_statement(seq: i64, message: &str) -> journal::Statement {
    journal::Statement {
        sql: "INSERT INTO events (run_id, seq, step_id, at, level, message) \
              VALUES ($1, $2, NULL, $3, 'info', $4)"
            .into(),
        args: vec![
            "run-ok".into(),
            seq.into(),
            "2026-01-01T00:00:00.000Z".into(),
            message.into(),
        ],
    }
}

/// Batches made only of statements go to SQLite's synchronous writer (PostgreSQL applies them
/// through sqlx): each statement with its own values; one that fails is rolled back alone and
/// its caller hears why, while the others commit once.
#[tokio::test]
async fn statement_batches_keep_their_values_and_failures() {
    for (_dir, store) in stores().await {
        store
            .create_run(&new_run("run-ok"), &[], &[], None)
            .await
            .unwrap();
        let journal = store.journal();
        let first = journal.queue_statement(false, "test", None, log_statement(1, "one"));
        let second = journal.queue_statement(false, "test", None, log_statement(2, "two"));
        let duplicate = journal.queue_statement(false, "test", None, log_statement(2, "again"));
        let third = journal.queue_statement(false, "test", None, log_statement(3, "three"));
        journal.flush(None).await.unwrap();
        for ok in [first, second, third] {
            assert!(ok.await.unwrap().is_ok());
        }
        let e = duplicate.await.unwrap().unwrap_err().to_string();
        assert!(e.to_lowercase().contains("unique"), "{e}");
        assert_eq!(
            logged(&store).await,
            [
                (1, "one".to_owned()),
                (2, "two".to_owned()),
                (3, "three".to_owned())
            ]
        );
    }
}

/// Rows written before the `*_ms` columns get them from their text timestamps when the
/// migration runs: the same instants `time` computes, on both databases (integer arithmetic
/// only; leap years, January and February, before and after 2000).
#[tokio::test]
async fn the_millisecond_columns_are_filled_in_for_older_rows() {
    let migration = include_str!("../../../migrations/20261206000008_step_started_ms.sql");
    let backfills: Vec<String> = migration
        .split(';')
        .map(|s| {
            s.lines()
                .filter(|l| !l.starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .map(|s| s.trim().to_owned())
        .filter(|s| s.starts_with("UPDATE"))
        .collect();
    assert_eq!(backfills.len(), 3, "{migration}");
    let times = [
        "1999-12-31T23:59:59.999Z",
        "2000-02-29T12:00:00.001Z",
        "2024-02-29T00:00:00.000Z",
        "2024-03-01T08:30:15.250Z",
        "2026-01-15T13:07:28.123Z",
        "2026-12-06T21:19:00.000Z",
    ];
    for (_d, s) in stores().await {
        let steps: Vec<NewStep> = (0..times.len())
            .map(|i| NewStep {
                step_id: format!("s{i}"),
                uses: "builtin/x".into(),
                action: None,
            })
            .collect();
        s.create_run(&new_run("old"), &steps, &[], None)
            .await
            .unwrap();
        for (i, at) in times.iter().enumerate() {
            sqlx::query("UPDATE steps SET started_at = $1, started_ms = NULL WHERE step_id = $2")
                .bind(*at)
                .bind(format!("s{i}"))
                .execute(s.pool())
                .await
                .unwrap();
        }
        sqlx::query(
            "UPDATE runs SET created_at = $1, started_at = $2, created_ms = NULL, \
             started_ms = NULL WHERE id = 'old'",
        )
        .bind(times[0])
        .bind(times[5])
        .execute(s.pool())
        .await
        .unwrap();
        for sql in &backfills {
            sqlx::query(sql).execute(s.pool()).await.unwrap();
        }
        let millis = |at: &str| {
            let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .unwrap();
            (t.unix_timestamp_nanos() / 1_000_000) as i64
        };
        for (i, at) in times.iter().enumerate() {
            let got: Option<i64> =
                sqlx::query_scalar("SELECT started_ms FROM steps WHERE step_id = $1")
                    .bind(format!("s{i}"))
                    .fetch_one(s.pool())
                    .await
                    .unwrap();
            assert_eq!(got, Some(millis(at)), "{at}");
        }
        let (created, started): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT created_ms, started_ms FROM runs WHERE id = 'old'")
                .fetch_one(s.pool())
                .await
                .unwrap();
        assert_eq!(created, Some(millis(times[0])));
        assert_eq!(started, Some(millis(times[5])));
    }
}

/// A SQLite URL's options hold for every write, and an in-memory database is refused: with
/// `mode=memory` the file of that name was not written (the journal's direct writer only takes
/// a plain read-write file; it wrote the file while sqlx used memory), and each connection of
/// the pool had a database of its own, without tables. Now such a URL is an error that says
/// why, and the file is untouched.
#[tokio::test]
async fn url_options_hold_for_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let url = format!("sqlite://{}", db.display());
    Store::connect(&url).await.unwrap().close().await;
    for memory in [
        format!("{url}?mode=memory"),
        format!("{url}?mode=mem%6Fry"),
        format!("{url}?mode=rwc&mode=memory"),
        "sqlite::memory:".to_owned(),
        "sqlite://:memory:".to_owned(),
    ] {
        let Err(err) = Store::connect(&memory).await else {
            panic!("{memory} was accepted");
        };
        assert!(
            err.to_string().contains("in-memory SQLite"),
            "{memory}: {err}"
        );
    }
    let file = Store::connect(&url).await.unwrap();
    assert!(matches!(file.run("r").await, Err(Error::RunNotFound(_))));
    // A path with `?` and `#` (escaped in the URL) names that file.
    let odd = dir.path().join("odd ?#.db");
    let escaped = odd
        .display()
        .to_string()
        .replace('?', "%3F")
        .replace('#', "%23");
    Store::connect(&format!("sqlite://{escaped}"))
        .await
        .unwrap()
        .close()
        .await;
    assert!(odd.is_file());
    // One SQLite would be given altered (`%41` read as `A` on sqlx's way back) is refused.
    let altered = format!("sqlite://{}/x%2541.db", dir.path().display());
    let Err(err) = Store::connect(&altered).await else {
        panic!("{altered} was accepted");
    };
    assert!(err.to_string().contains("another path"), "{err}");
    assert!(!dir.path().join("xA.db").exists() && !dir.path().join("x%41.db").exists());
}

/// The deferred writes of several leased runs in one batch (their fences read together on
/// SQLite): those of a run another engine took over are refused, the others commit.
#[tokio::test]
async fn a_batch_over_several_runs_refuses_only_the_taken_one() {
    for (_d, a) in stores().await {
        let b = a.reopen().await;
        let steps = [NewStep {
            step_id: "s".into(),
            uses: "builtin/x".into(),
            action: None,
        }];
        for run in ["r1", "r2", "r3"] {
            a.create_run(&new_run(run), &steps, &[], Some(&engine("A")))
                .await
                .unwrap();
        }
        // Taken over by B, as a claim after A's expiry would.
        sqlx::query("UPDATE runs SET lease_owner = 'B', lease_epoch = 2 WHERE id = 'r2'")
            .execute(b.pool())
            .await
            .unwrap();
        for run in ["r1", "r2", "r3"] {
            a.start_step_soon(run, "s", 1, &serde_json::json!({}), None, None);
            a.append_event_soon(run, Some("s"), "info", "hello");
        }
        a.flush().await.unwrap();
        for (run, started) in [("r1", true), ("r2", false), ("r3", true)] {
            let step = a.step(run, "s").await.unwrap();
            assert_eq!(step.status == StepStatus::Running, started, "{run}");
            assert_eq!(
                a.events(run, None).await.unwrap().len(),
                usize::from(started)
            );
        }
        // The end of a step computes its duration from its start.
        a.end_step_soon(
            "r1",
            "s",
            StepEnd {
                status: StepStatus::Succeeded,
                outputs: None,
                error_message: None,
                failure_kind: None,
                cached_from: None,
            },
        );
        a.flush().await.unwrap();
        let step = a.step("r1", "s").await.unwrap();
        assert_eq!(step.status, StepStatus::Succeeded);
        assert!(step.duration_ms.is_some_and(|d| d >= 0), "{step:?}");
        // Closing waits for the journal's connection, which its writer gives back.
        for s in [&a, &b] {
            s.flush().await.unwrap();
            s.close().await;
        }
        let closed = a.append_event("r1", None, "info", "too late").await;
        assert!(closed.is_err(), "{closed:?}");
    }
}

/// Sets `column` of the rows `filter` selects in `table` to `value` (SQL text), as a damaged or
/// hand-edited database would have it.
async fn corrupt(s: &Store, table: &str, column: &str, value: &str, filter: &str) {
    sqlx::query(&format!(
        "UPDATE {table} SET {column} = {value} WHERE {filter}"
    ))
    .execute(s.pool())
    .await
    .unwrap();
}

const RUN_STATUSES: &str = "queued running succeeded failed cancelled ";
const STEP_STATUSES: &str = "queued running succeeded failed cancelled skipped ";

/// A bad status or JSON text in a record is a typed error naming what was read, never a panic;
/// JSON lists of the wrong shape read as empty, unknown statuses of owners as `queued`.
#[tokio::test]
async fn corrupt_records_are_typed_errors() {
    #[track_caller]
    fn err<T>(r: Result<T>) -> String {
        match r {
            Err(e @ Error::Corrupt { .. }) => e.to_string(),
            Err(e) => panic!("not a corrupt record: {e}"),
            Ok(_) => panic!("a corrupt record was read"),
        }
    }
    for (_d, s) in stores().await {
        let steps = [NewStep {
            step_id: "a".into(),
            uses: "builtin/x".into(),
            action: None,
        }];
        let training = TrainingRef {
            project: "demo".into(),
            name: "t".into(),
        };
        s.create_run(&new_run("r"), &steps, std::slice::from_ref(&training), None)
            .await
            .unwrap();
        s.create_run(&new_run("q"), &[], &[], None).await.unwrap();

        // Runs: status, then the JSON columns.
        corrupt(&s, "runs", "status", "'bogus'", "id = 'r'").await;
        let bad_status = format!(
            "corrupt record while reading a run: unknown status `bogus`; expected one of: \
             {RUN_STATUSES}"
        );
        assert_eq!(err(s.run("r").await), bad_status);
        assert_eq!(err(s.list_runs(None, 10).await), bad_status);
        assert_eq!(err(s.page_runs(None, 10, 0).await), bad_status);
        let stats = s.run_stats().await.unwrap();
        assert_eq!(stats.total, 1, "unknown statuses are not counted");
        // The owner of a training is read with the same vocabulary: no guess.
        let unknown = format!("unknown status `bogus`; expected one of: {RUN_STATUSES}");
        assert_eq!(
            err(s.training_owner(&training).await),
            format!("corrupt record while reading the owner of a training folder: {unknown}")
        );
        assert_eq!(
            err(s.claim_training("q", &training).await),
            format!("corrupt record while claiming a training folder: {unknown}")
        );
        corrupt(&s, "runs", "status", "'QUEUED'", "id = 'r'").await;
        assert_eq!(s.run("r").await.unwrap().status, RunStatus::Queued);
        corrupt(&s, "runs", "status", "'queued'", "id = 'r'").await;
        corrupt(&s, "runs", "params_json", "'not json'", "id = 'r'").await;
        assert_eq!(
            err(s.run("r").await),
            "corrupt record while reading a run: column params_json: expected ident at line 1 \
             column 2"
        );
        corrupt(&s, "runs", "params_json", "'{}'", "id = 'r'").await;
        corrupt(&s, "runs", "metrics_json", "'{'", "id = 'r'").await;
        assert_eq!(
            err(s.active_runs().await),
            "corrupt record while reading a run: column metrics_json: EOF while parsing an \
             object at line 1 column 1"
        );
        corrupt(&s, "runs", "metrics_json", "NULL", "id = 'r'").await;
        assert_eq!(s.active_runs().await.unwrap().len(), 2);

        // Steps.
        corrupt(&s, "steps", "status", "'later'", "run_id = 'r'").await;
        let bad_status = format!(
            "corrupt record while reading a step: unknown status `later`; expected one of: \
             {STEP_STATUSES}"
        );
        assert_eq!(err(s.step("r", "a").await), bad_status);
        assert_eq!(err(s.steps("r").await), bad_status);
        corrupt(&s, "steps", "status", "'queued'", "run_id = 'r'").await;
        for column in ["inputs_json", "outputs_json", "progress_json"] {
            corrupt(&s, "steps", column, "'[1,'", "run_id = 'r'").await;
            assert_eq!(
                err(s.steps("r").await),
                format!(
                    "corrupt record while reading a step: column {column}: EOF while parsing a \
                     value at line 1 column 3"
                )
            );
            corrupt(&s, "steps", column, "NULL", "run_id = 'r'").await;
        }
        assert_eq!(s.step("r", "a").await.unwrap().inputs, None);

        // Models: class names that are no list of strings read as none.
        let model = s
            .register_model(&NewModel {
                name: "det".into(),
                project: "demo".into(),
                task: None,
                framework: None,
                format: None,
                file_path: "best.pt".into(),
                config_path: None,
                input_size: None,
                class_names: vec!["a".into()],
                metrics: None,
                dataset: None,
                training_run_id: "r".into(),
                training_step_id: "a".into(),
                base_model: None,
                created_by: "tester".into(),
            })
            .await
            .unwrap();
        corrupt(&s, "models", "class_names_json", "'{\"a\": 1}'", "1 = 1").await;
        assert!(s.model(&model.id).await.unwrap().class_names.is_empty());
        corrupt(&s, "models", "class_names_json", "NULL", "1 = 1").await;
        assert!(s.model(&model.id).await.unwrap().class_names.is_empty());
        corrupt(&s, "models", "class_names_json", "'nope'", "1 = 1").await;
        let bad_names = "corrupt record while reading a model: column class_names_json: \
                         expected ident at line 1 column 2";
        assert_eq!(err(s.model(&model.id).await), bad_names);
        assert_eq!(err(s.list_models(None).await), bad_names);
        corrupt(&s, "models", "class_names_json", "'[\"a\"]'", "1 = 1").await;
        corrupt(&s, "models", "metrics_json", "'1 2'", "1 = 1").await;
        assert_eq!(
            err(s.find_models(Some("demo"), None).await),
            "corrupt record while reading a model: column metrics_json: trailing characters at \
             line 1 column 3"
        );
        corrupt(&s, "models", "metrics_json", "NULL", "1 = 1").await;
        corrupt(&s, "models", "is_published", "7", "1 = 1").await;
        assert!(s.model(&model.id).await.unwrap().is_published);

        // Tokens: the same for claims and roles.
        s.create_token("tok", "ci", "hash", &["runs:read".into()], &[])
            .await
            .unwrap();
        corrupt(&s, "tokens", "roles_json", "'\"admin\"'", "1 = 1").await;
        let token = s.token("tok").await.unwrap().unwrap();
        assert_eq!(
            (token.claims, token.roles),
            (vec!["runs:read".to_owned()], vec![])
        );
        corrupt(&s, "tokens", "claims_json", "'['", "1 = 1").await;
        let bad_claims = "corrupt record while reading a token: column claims_json: EOF while \
                          parsing a list at line 1 column 1";
        assert_eq!(err(s.token("tok").await), bad_claims);
        assert_eq!(err(s.tokens().await), bad_claims);

        // The step cache.
        s.store_outputs("key", &serde_json::json!({"x": 1}), "r", "a")
            .await
            .unwrap();
        corrupt(&s, "step_cache", "outputs_json", "'{\"x\"'", "1 = 1").await;
        assert_eq!(
            err(s.cached_outputs("key").await),
            "corrupt record while reading the step cache: column outputs_json: EOF while \
             parsing an object at line 1 column 4"
        );

        // Checkpoints: any non-zero flag is the best.
        s.record_checkpoint("r", "a", "last.pt", Some(3), false)
            .await
            .unwrap();
        corrupt(&s, "checkpoints", "is_best", "2", "1 = 1").await;
        let checkpoints = s.checkpoints("r").await.unwrap();
        assert_eq!(checkpoints.len(), 1);
        assert!(checkpoints[0].is_best);
        assert_eq!(checkpoints[0].epoch, Some(3));
    }
}

/// A value of the wrong type (SQLite stores what it is given) is a database error naming the
/// record being read, whichever query read it.
#[tokio::test]
async fn mistyped_columns_name_the_record_being_read() {
    let (_d, s) = stores().await.swap_remove(0);
    s.create_run(&new_run("r"), &[], &[], None).await.unwrap();
    corrupt(&s, "runs", "duration_ms", "'long'", "id = 'r'").await;
    for result in [
        s.run("r").await.map(|_| ()),
        s.list_runs(None, 1).await.map(|_| ()),
    ] {
        match result {
            Err(Error::Query { doing, source }) => {
                assert_eq!(doing, "reading a run");
                assert!(source.to_string().contains("duration_ms"), "{source}");
            }
            other => panic!("{other:?}"),
        }
    }
}

fn engine(id: &str) -> NewEngine {
    NewEngine {
        id: id.into(),
        kind: "serve".into(),
        host: "h".into(),
        boot_id: "b/ns".into(),
        pid: 1,
        pid_start: 1,
        labels: Default::default(),
        ttl: std::time::Duration::from_secs(60),
    }
}

/// A run created leased belongs to its engine: another cannot take it while it is renewed,
/// takes it once it expires or its engine is recorded stopped, and from then on every write of
/// the first engine for that run is refused (journal and plain transactions), while its writes
/// of other runs commit.
#[tokio::test]
async fn a_taken_over_run_refuses_its_old_engines_writes() {
    use std::time::Duration;
    for (_d, a) in stores().await {
        // Engine B: another process on the same database (its own fences).
        let b = a.reopen().await;
        let (ea, eb, ec) = (engine("A"), engine("B"), engine("C"));
        let long = Duration::from_secs(60);
        let (run, lease) = a
            .create_run(&new_run("r1"), &[], &[], Some(&ea))
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(lease.unwrap().epoch, 1);
        a.create_run(&new_run("r2"), &[], &[], Some(&ea))
            .await
            .unwrap();
        let held = b.acquire_lease("r1", &eb).await.unwrap().unwrap_err();
        assert_eq!(held.owner, "A");
        assert!(held.expires_in_ms > 50_000, "{held:?}");
        assert!(held.to_string().contains("pid 1 on h"), "{held}");
        assert!(
            b.claim_runs(&eb, 10, &|_, _| true, &mut None)
                .await
                .unwrap()
                .is_empty()
        );
        // A renews both; its engine is recorded stopped: both free at once.
        let mut kept = a.renew_leases("A", long).await.unwrap();
        kept.sort();
        assert_eq!(kept, vec![("r1".into(), 1), ("r2".into(), 1)]);
        assert_eq!(a.stop_engine("A", "test").await.unwrap(), 2);
        let taken = b.acquire_lease("r1", &eb).await.unwrap().unwrap();
        assert_eq!((taken.epoch, taken.taken_from.as_deref()), (2, None));
        // A still acts on r1 (it has not noticed): refused, everything else commits.
        let refused = a
            .append_event("r1", None, "info", "stale")
            .await
            .unwrap_err();
        assert!(matches!(refused, Error::LeaseLost { .. }), "{refused}");
        let refused = a.set_step_gpus("r1", "x", "0").await.unwrap_err();
        assert!(matches!(refused, Error::LeaseLost { .. }), "{refused}");
        let refused = a
            .finish_run("r1", RunStatus::Failed, Some("stale"), None)
            .await
            .unwrap_err();
        assert!(matches!(refused, Error::LeaseLost { .. }), "{refused}");
        assert_eq!(a.run("r1").await.unwrap().status, RunStatus::Running);
        b.append_event("r1", None, "info", "new owner")
            .await
            .unwrap();
        // r2: free (A stopped), claimed by B with claim_runs; A's renewal no longer has it.
        let claimed = b
            .claim_runs(&eb, 10, &|_, _| true, &mut None)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].run_id, "r2");
        assert!(a.renew_leases("A", long).await.unwrap().is_empty());
        // The leases of an engine that stops renewing are free once it expires.
        let d = a.reopen().await;
        let ed = NewEngine {
            ttl: Duration::from_millis(1),
            ..engine("D")
        };
        d.create_run(&new_run("r3"), &[], &[], Some(&ed))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = a.reopen().await;
        let claimed = c
            .claim_runs(&ec, 10, &|_, _| true, &mut None)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].taken_from.as_deref(), Some("D"));
        let refused = d
            .append_event("r3", None, "info", "late")
            .await
            .unwrap_err();
        assert!(matches!(refused, Error::LeaseLost { .. }), "{refused}");
        // A run's end frees its lease: retry or delete from any engine.
        let done = c
            .finish_run("r3", RunStatus::Succeeded, None, None)
            .await
            .unwrap();
        assert_eq!(done.status, RunStatus::Succeeded);
        assert!(b.acquire_lease("r3", &eb).await.unwrap().is_ok());
        // Requirements decide what an engine claims.
        let mut wants_a100 = new_run("r4");
        wants_a100.requires = Some(serde_json::json!({"labels": {"gpu": "a100"}}));
        c.create_run(&wants_a100, &[], &[], None).await.unwrap();
        let only_a100 = |_: &str, r: Option<&serde_json::Value>| {
            r.is_some_and(|r| r["labels"]["gpu"] == "a100")
        };
        assert!(
            b.claim_runs(&eb, 10, &|id, r| !only_a100(id, r), &mut None)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            b.claim_runs(&eb, 10, &only_a100, &mut None)
                .await
                .unwrap()
                .len(),
            1
        );
        // A renewal says which leases the engine still holds; a stopped engine holds none.
        assert!(d.renew_leases("D", long).await.unwrap().is_empty());
        for s in [&a, &b, &c, &d] {
            s.close().await;
        }
    }
}

/// Runs no engine here can take do not hide the ones it can: claims page through the queue.
#[tokio::test]
async fn claims_look_past_runs_the_engine_cannot_take() {
    for (_d, s) in stores().await {
        for i in 0..150 {
            let mut run = new_run(&format!("big-{i:03}"));
            run.requires = Some(serde_json::json!({"labels": {"pool": "big"}}));
            s.create_run(&run, &[], &[], None).await.unwrap();
        }
        s.create_run(&new_run("plain"), &[], &[], None)
            .await
            .unwrap();
        let me = engine("E");
        let claimed = s
            .claim_runs(&me, 5, &|_, requires| requires.is_none(), &mut None)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].run_id, "plain");
        // The engine is recorded with its first lease, and a skipped id stays unclaimed.
        assert_eq!(s.engines(None).await.unwrap()[0].id, "E");
        let claimed = s
            .claim_runs(&me, 5, &|id, _| id != "big-000", &mut None)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 5);
        assert!(claimed.iter().all(|l| l.run_id != "big-000"));
        // More than one scan of runs it cannot take ahead: the cursor carries on from where
        // the last claim stopped, and comes round to the oldest again.
        for i in 0..1100 {
            let mut run = new_run(&format!("far-{i:04}"));
            run.requires = Some(serde_json::json!({"labels": {"pool": "far"}}));
            s.create_run(&run, &[], &[], None).await.unwrap();
        }
        s.create_run(&new_run("last"), &[], &[], None)
            .await
            .unwrap();
        let mut cursor = None;
        let mut found = Vec::new();
        for _ in 0..4 {
            let claimed = s
                .claim_runs(&me, 5, &|_, requires| requires.is_none(), &mut cursor)
                .await
                .unwrap();
            found.extend(claimed.into_iter().map(|l| l.run_id));
        }
        assert_eq!(found, vec!["last".to_owned()]);
    }
}

/// On a plain SQLite file a token, a run and its steps are read directly (`sqlite_reader`),
/// and read the same as through sqlx (a URL with another option, or `Reads::Pooled`, has no
/// direct reads).
#[tokio::test]
async fn direct_reads_match_reads_through_sqlx() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.db");
    let direct = Store::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let through_sqlx = Store::connect(&format!("sqlite://{}?cache=private", file.display()))
        .await
        .unwrap();
    assert!(direct.reader.is_some() && through_sqlx.reader.is_none());
    // A short command's store reads through the pool, on the connection it has open.
    let pooled = Store::connect_with(&format!("sqlite://{}", file.display()), Reads::Pooled)
        .await
        .unwrap();
    assert!(pooled.reader.is_none());
    let steps = [
        NewStep {
            step_id: "a".into(),
            uses: "builtin/x".into(),
            action: None,
        },
        NewStep {
            step_id: "b".into(),
            uses: "hostile".into(),
            action: Some("ok".into()),
        },
    ];
    direct
        .create_run(&new_run("r1"), &steps, &[], None)
        .await
        .unwrap();
    direct.start_run("r1").await.unwrap();
    direct
        .start_step("r1", "a", &serde_json::json!({"k": [1, 2]}), None, None)
        .await
        .unwrap();
    direct
        .finish_step("r1", "a", StepStatus::Failed, None, Some("boom ü"))
        .await
        .unwrap();
    direct
        .finish_run("r1", RunStatus::Failed, Some("step a failed"), None)
        .await
        .unwrap();
    direct
        .create_token(
            "tok",
            "ci",
            "hash",
            &["runs:read".into()],
            &["viewer".into()],
        )
        .await
        .unwrap();

    let run = direct.run("r1").await.unwrap();
    assert_eq!(run, through_sqlx.run("r1").await.unwrap());
    assert_eq!(run, pooled.run("r1").await.unwrap());
    assert_eq!(
        pooled.steps("r1").await.unwrap(),
        direct.steps("r1").await.unwrap()
    );
    assert_eq!(run.status, RunStatus::Failed);
    let read = direct.steps("r1").await.unwrap();
    assert_eq!(read, through_sqlx.steps("r1").await.unwrap());
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].error_message.as_deref(), Some("boom ü"));
    let token = direct.token("tok").await.unwrap();
    assert_eq!(token, through_sqlx.token("tok").await.unwrap());
    assert_eq!(token.unwrap().roles, ["viewer"]);
    assert_eq!(direct.token("nope").await.unwrap(), None);
    let reader = direct.reader.as_ref().unwrap();
    assert_eq!(reader.fallbacks(), 0, "every read above was direct");

    // A row that does not fit the row type is read through sqlx, which names the column.
    corrupt(&direct, "runs", "duration_ms", "'long'", "id = 'r1'").await;
    let err = direct.run("r1").await.unwrap_err().to_string();
    assert!(err.contains("duration_ms"), "{err}");
    assert_eq!(reader.fallbacks(), 1);

    // Closed: reads go to sqlx, which refuses them as a closed pool does.
    direct.close().await;
    assert!(direct.run("r1").await.is_err());
}

/// A write transaction begun by a task that is aborted at any point leaves no lock behind:
/// the next one begins at once. (sqlx's SQLite `begin_with`, dropped after its `BEGIN
/// IMMEDIATE` ran but before it returned, left the transaction open on a pooled connection,
/// and every later writer waited out the busy timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_transaction_abandoned_while_it_begins_leaves_no_lock() {
    for (_dir, store) in stores().await {
        for i in 0..300u64 {
            let begun = tokio::spawn({
                let store = store.clone();
                async move {
                    let _tx = store.begin_write("a test").await;
                    std::future::pending::<()>().await;
                }
            });
            // Aborted at a moment that moves through the begin's steps.
            for _ in 0..(i % 7) {
                tokio::task::yield_now().await;
            }
            if i % 3 == 0 {
                tokio::time::sleep(std::time::Duration::from_micros(i % 200)).await;
            }
            begun.abort();
            let _ = begun.await;
            let next = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                store.begin_write("the next"),
            )
            .await
            .unwrap_or_else(|_| panic!("round {i}: a write transaction was left open"))
            .unwrap();
            next.rollback().await.unwrap();
        }
    }
}

/// A run's end frees its lease in the commit that records it: from then until the engine lets
/// the lease go, a renewal no longer returns it, and `finished_with_lease` tells that end
/// apart from a takeover or from an engine found dead (the renewal took such a run for lost:
/// "another engine has taken the run over", with one engine).
#[tokio::test]
async fn a_finished_runs_freed_lease_is_no_takeover() {
    for (_d, a) in stores().await {
        let ea = engine("A");
        for run in ["done", "taken", "orphaned"] {
            a.create_run(&new_run(run), &[], &[], Some(&ea))
                .await
                .unwrap();
        }
        a.finish_run("done", RunStatus::Succeeded, None, None)
            .await
            .unwrap();
        sqlx::query("UPDATE runs SET lease_owner = 'B', lease_epoch = 2 WHERE id = 'taken'")
            .execute(a.pool())
            .await
            .unwrap();
        let held = [
            ("done".to_owned(), 1),
            ("taken".to_owned(), 1),
            ("orphaned".to_owned(), 1),
        ];
        let kept = a
            .renew_leases("A", std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(kept, vec![("orphaned".to_owned(), 1)]);
        assert_eq!(a.finished_with_lease(&held).await.unwrap(), ["done"]);
        // Another epoch of the finished run is not that lease.
        let other_epoch = [("done".to_owned(), 2)];
        assert!(
            a.finished_with_lease(&other_epoch)
                .await
                .unwrap()
                .is_empty()
        );
        // An engine recorded stopped has its running runs' leases freed: not finished.
        a.stop_engine("A", "test").await.unwrap();
        assert_eq!(a.finished_with_lease(&held).await.unwrap(), ["done"]);
    }
}

/// A database that exists and is migrated opens without sqlx (`Reads::Direct`): no pooled
/// connection until one is needed, and the write-ahead log is folded in and removed at close.
/// A migration record that differs from this build's sends the open through sqlx's migrator,
/// which says what is wrong.
#[tokio::test]
async fn a_migrated_database_opens_without_sqlx_and_a_changed_one_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.db");
    let url = format!("sqlite://{}", file.display());
    // Created and migrated through sqlx: the file did not exist.
    let first = Store::connect(&url).await.unwrap();
    assert!(first.pool.size() >= 1);
    first
        .create_run(&new_run("r1"), &[], &[], None)
        .await
        .unwrap();
    first.close().await;
    assert!(!dir.path().join("kiln.db-wal").exists());

    let again = Store::connect(&url).await.unwrap();
    assert_eq!(again.pool.size(), 0, "sqlx opened a connection");
    again
        .finish_run("r1", RunStatus::Succeeded, None, None)
        .await
        .unwrap();
    assert_eq!(again.run("r1").await.unwrap().status, RunStatus::Succeeded);
    assert_eq!(again.pool.size(), 0, "a direct read went through sqlx");
    // A read with no direct path connects the pool then.
    assert_eq!(again.list_runs(None, 10).await.unwrap().len(), 1);
    assert!(again.pool.size() >= 1);
    again.close().await;
    assert!(
        !dir.path().join("kiln.db-wal").exists(),
        "the log was left at close"
    );
    // A short command's store opens through sqlx as before.
    let pooled = Store::connect_with(&url, Reads::Pooled).await.unwrap();
    assert!(pooled.pool.size() >= 1);
    pooled.close().await;

    // A migration applied with other contents than this build's.
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.execute(
        "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = \
         (SELECT max(version) FROM _sqlx_migrations)",
        [],
    )
    .unwrap();
    drop(conn);
    let changed = Store::connect(&url).await.unwrap_err();
    assert!(matches!(changed, Error::Migrate { .. }), "{changed}");
    assert!(
        changed.to_string().contains("was previously applied"),
        "{changed}"
    );
}

/// A file that is not a SQLite database is reported at once, by every kind of store, with
/// what to do (sqlx's pool alone retried it until its 30 s timeout).
#[tokio::test]
async fn a_file_that_is_no_database_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.db");
    std::fs::write(&file, vec![0x5a_u8; 8192]).unwrap();
    let url = format!("sqlite://{}", file.display());
    for reads in [Reads::Direct, Reads::Pooled] {
        let refused = Store::connect_with(&url, reads).await.unwrap_err();
        assert!(matches!(refused, Error::Open { .. }), "{refused}");
        let message = refused.to_string();
        assert!(
            message.contains("is not a SQLite database") && message.contains("move it aside"),
            "{message}"
        );
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        vec![0x5a_u8; 8192],
        "the file was changed"
    );
}

/// A damaged database, and a folder where the file should be, are refused at once with what
/// to do.
#[tokio::test]
async fn a_damaged_database_or_a_folder_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    let url = |p: &std::path::Path| format!("sqlite://{}", p.display());
    let store = Store::connect(&url(&good)).await.unwrap();
    store
        .create_run(&new_run("r1"), &[], &[], None)
        .await
        .unwrap();
    store.close().await;
    // The first pages only: its schema points past the end of the file.
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, &std::fs::read(&good).unwrap()[..8192]).unwrap();
    for reads in [Reads::Direct, Reads::Pooled] {
        let refused = Store::connect_with(&url(&damaged), reads)
            .await
            .unwrap_err();
        assert!(matches!(refused, Error::Open { .. }), "{refused}");
        assert!(
            refused.to_string().contains("restore it from a backup"),
            "{refused}"
        );
    }
    let folder = dir.path().join("folder.db");
    std::fs::create_dir(&folder).unwrap();
    let refused = Store::connect(&url(&folder)).await.unwrap_err();
    assert!(
        refused.to_string().contains("is a folder: name a file"),
        "{refused}"
    );
}

/// Stores opened at the same time on a new file all open: one creates and migrates it, and the
/// others, which may find it empty or half made, wait for it. (SQLite answers "database is
/// locked" without waiting to a connection that sets the journal mode while another writes.)
#[test]
fn stores_opened_at_once_on_a_new_file_all_open() {
    for round in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let opening: Vec<_> = (0..8)
            .map(|i| {
                let (url, start) = (url.clone(), start.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    start.wait();
                    rt.block_on(async {
                        let reads = if i % 2 == 0 {
                            Reads::Direct
                        } else {
                            Reads::Pooled
                        };
                        let store = Store::connect_with(&url, reads).await?;
                        store
                            .create_run(&new_run(&format!("r{i}")), &[], &[], None)
                            .await?;
                        store.close().await;
                        Ok::<_, Error>(())
                    })
                })
            })
            .collect();
        for opened in opening {
            if let Err(e) = opened.join().unwrap() {
                panic!("round {round}: {e}");
            }
        }
    }
}

/// A PostgreSQL server that refuses connections (down, another port) is reported with why and
/// what to check, not after sqlx's 30 s pool timeout as "pool timed out"; the URL's password is
/// never shown.
#[tokio::test]
async fn a_refusing_postgres_server_is_reported_with_what_to_check() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://kiln:s3cret@127.0.0.1:{port}/kiln");
    let refused = Store::connect(&url).await.unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("Connection refused")
            && message.contains("is the PostgreSQL server running"),
        "{message}"
    );
    assert!(
        message.contains(&format!("postgres://kiln:***@127.0.0.1:{port}/kiln")),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
}

/// Passwords are taken out of the URLs that messages show, wherever the URL holds one.
#[test]
fn messages_show_database_urls_without_their_password() {
    for (url, shown) in [
        (
            "postgres://kiln:pa%40ss@db:5432/kiln",
            "postgres://kiln:***@db:5432/kiln",
        ),
        (
            "postgres://kiln@db/kiln?sslmode=require&password=x",
            "postgres://kiln@db/kiln?sslmode=require&password=***",
        ),
        ("postgres://kiln@db/kiln", "postgres://kiln@db/kiln"),
        // URLs that do not parse (their error shows them), an `@` in the password, the key in
        // capitals.
        (
            "postgres://kiln:s3cret@127.0.0.1:99999/kiln",
            "postgres://kiln:***@127.0.0.1:99999/kiln",
        ),
        (
            "postgresql://kiln:s3cret@/kiln?host=/nonexist",
            "postgresql://kiln:***@/kiln?host=/nonexist",
        ),
        (
            "postgres://kiln:s3cret@[::1:1/kiln",
            "postgres://kiln:***@[::1:1/kiln",
        ),
        ("postgres://kiln:a@b@db/kiln", "postgres://kiln:***@db/kiln"),
        (
            "postgres://kiln@db/kiln?PASSWORD=x&application_name=k",
            "postgres://kiln@db/kiln?PASSWORD=***&application_name=k",
        ),
        // `?` in the password, no `//`, an escaped key, the TLS key's password.
        (
            "postgresql://u:S3c?ret@127.0.0.1:5996/db",
            "postgresql://u:***@127.0.0.1:5996/db",
        ),
        (
            "postgresql:u:S3cret@127.0.0.1/db",
            "postgresql:u:***@127.0.0.1/db",
        ),
        (
            "postgres://u@h/db?pass%77ord=S3cret&sslpassword=k",
            "postgres://u@h/db?pass%77ord=***&sslpassword=***",
        ),
        // SQLite URLs are shown as they were given.
        ("sqlite:///tmp/a b/kiln.db", "sqlite:///tmp/a b/kiln.db"),
        ("sqlite:kiln.db?mode=rwc", "sqlite:kiln.db?mode=rwc"),
    ] {
        assert_eq!(crate::shown_url(url), shown, "{url}");
    }
}

/// A store on a new SQLite file in a folder of its own (`?options` after its path), with a
/// run recorded: the folder, the file, the store.
async fn store_with_a_run(options: &str) -> (tempfile::TempDir, std::path::PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let store = Store::connect(&format!("sqlite://{}{options}", db.display()))
        .await
        .unwrap();
    store
        .create_run(&new_run("before"), &[], &[], None)
        .await
        .unwrap();
    (dir, db, store)
}

/// Restores over `db` a copy of it, as a backup is restored: another file at the same path.
fn restore_copy(db: &std::path::Path) {
    let copy = db.with_file_name("restored.db");
    std::fs::copy(db, &copy).unwrap();
    std::fs::rename(&copy, db).unwrap();
}

/// A database file replaced at its path (a backup restored over it) or removed while a store
/// has it open: the store's writes would go to the old file, which nothing reads any more; they
/// are refused, saying what happened and what to do.
#[tokio::test]
async fn writes_are_refused_once_the_database_file_is_replaced_or_removed() {
    for removed in [false, true] {
        let (_dir, db, store) = store_with_a_run("").await;
        if removed {
            std::fs::remove_file(&db).unwrap();
        } else {
            restore_copy(&db);
        }
        let refused = store
            .create_run(&new_run("after"), &[], &[], None)
            .await
            .unwrap_err()
            .to_string();
        let what = if removed { "removed" } else { "replaced" };
        assert!(
            refused.contains(&format!(
                "the database file {} was {what} while this process had it open",
                db.display()
            )) && refused.contains("then start again"),
            "{refused}"
        );
        // Writes through the pool are refused too, and whoever waits hears it.
        let claimed = store
            .claim_runs(&engine("other"), 1, &|_, _| true, &mut None)
            .await;
        assert!(
            claimed.is_err_and(|e| matches!(e, Error::DatabaseLost { .. })),
            "a claim wrote to the old file"
        );
        let pruned = store.prune_engines(std::time::Duration::ZERO).await;
        assert!(
            pruned.is_err_and(|e| matches!(e, Error::DatabaseLost { .. })),
            "a write outside a transaction reached the old file"
        );
        let lost = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            store.database_lost_wait(std::time::Duration::from_millis(50)),
        )
        .await
        .expect("the loss is heard");
        assert_eq!(Some(lost), store.database_lost());
        // Not closed: the writer stops, its connection left open.
        store.close().await;
    }
}

/// A backup restored over the database file while another program reads the old file in a
/// transaction: the old file's write-ahead log cannot be emptied, and the store's last words
/// say so and what to do (the restored file would take the log's pages for its own).
#[tokio::test]
async fn a_log_that_cannot_be_emptied_is_said() {
    let (_dir, db, store) = store_with_a_run("").await;
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM runs", [], |row| row.get(0))
        .unwrap();
    restore_copy(&db);
    assert!(
        store
            .create_run(&new_run("after"), &[], &[], None)
            .await
            .is_err()
    );
    store.close().await;
    let said = store.database_lost_report().expect("lost");
    assert!(
        said.contains("could not be emptied (another connection still reads")
            && said.contains("Stop every process"),
        "{said}"
    );
    drop(reader);
}

/// A database URL naming other options (no writer of the store's own): its writes are refused
/// once the file is replaced too, and the log it could not empty is said.
#[tokio::test]
async fn a_file_with_other_options_is_watched_too() {
    let (_dir, db, store) = store_with_a_run("?mode=rwc&cache=private").await;
    restore_copy(&db);
    let refused = store.create_run(&new_run("after"), &[], &[], None).await;
    assert!(
        refused.is_err_and(|e| matches!(e, Error::DatabaseLost { .. })),
        "a write reached the old file"
    );
    store.close().await;
    let said = store.database_lost_report().expect("lost");
    assert!(
        said.contains("was replaced while this process had it open"),
        "{said}"
    );
    // Its log still holds the old file's pages: said, with what to do.
    let wal = db.with_file_name("kiln.db-wal");
    assert!(std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0));
    assert!(
        said.contains("could not be emptied (this process has no connection"),
        "{said}"
    );
}

/// A file replaced while the store opens it (after the store looked at it, before the store
/// has it open) is found at once, not taken for the one the store opened.
#[test]
fn a_file_replaced_while_it_is_opened_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    std::fs::write(&db, b"old").unwrap();
    let watch = crate::database_file::FileWatch::new(&db);
    std::fs::write(dir.path().join("new.db"), b"new").unwrap();
    std::fs::rename(dir.path().join("new.db"), &db).unwrap();
    watch.opened(&db);
    assert!(watch.lost_already().is_some());
    // A file the store creates is recorded once it exists.
    let created = dir.path().join("created.db");
    let watch = crate::database_file::FileWatch::new(&created);
    std::fs::write(&created, b"").unwrap();
    watch.opened(&created);
    assert_eq!(watch.check(), None);
    std::fs::remove_file(&created).unwrap();
    assert!(watch.check().is_some_and(|why| why.contains("was removed")));
}

/// A store whose file stays where it is is never lost, and the wait for it does not end.
#[tokio::test]
async fn a_database_file_left_in_place_is_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.database_lost(), None);
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        store.database_lost_wait(std::time::Duration::from_millis(20)),
    )
    .await;
    assert!(waited.is_err());
    store.close().await;
    assert!(!dir.path().join("kiln.db-wal").exists());
}
