//! Read-only commands: `runs list|show|stats`, `logs`, `models list`, `engines`.

use crate::output::{errln, outln};

use kiln_store::RunStatus;

use crate::cli::{ModelsCommand, RunsCommand};
use crate::context::Context;
use crate::exit::Exit;

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

/// `kiln engines`: the engines sharing the database.
pub async fn engines(ctx: &Context, json: bool) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    // Engines of this machine whose process is gone (a `kiln run` that ended or was killed)
    // are not listed: the next engine here records them stopped.
    let engines: Vec<_> = store
        .engines(None)
        .await?
        .into_iter()
        .filter(|e| !kiln_runner::engine::provably_gone(e))
        .collect();
    if json {
        print_json(&engines)?;
        return Ok(Exit::Success);
    }
    outln!(
        "{:<36}  {:<6}  {:<20}  {:>8}  {:>6}  {:>9}  LABELS",
        "ID",
        "KIND",
        "HOST",
        "PID",
        "LEASES",
        "RENEWED"
    );
    for e in engines {
        let labels: Vec<String> = e
            .labels
            .iter()
            .filter(|(k, _)| *k != "host")
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        outln!(
            "{:<36}  {:<6}  {:<20}  {:>8}  {:>6}  {:>8.1}s  {}",
            e.id,
            e.kind,
            e.host,
            e.pid,
            e.leases,
            e.silent_ms as f64 / 1000.0,
            labels.join(",")
        );
    }
    Ok(Exit::Success)
}

pub async fn runs(ctx: &Context, cmd: RunsCommand) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    match cmd {
        RunsCommand::List {
            status,
            limit,
            json,
        } => {
            let status = match status.map(|s| s.parse::<RunStatus>()).transpose() {
                Ok(s) => s,
                Err(e) => {
                    errln!("error: --status: {e}");
                    return Ok(Exit::InvalidInput);
                }
            };
            let runs = store.list_runs(status, limit).await?;
            if json {
                print_json(&runs)?;
            } else {
                outln!(
                    "{:<36}  {:<24}  {:<9}  {:<24}  {:>9}",
                    "ID",
                    "WORKFLOW",
                    "STATUS",
                    "CREATED",
                    "DURATION"
                );
                for r in runs {
                    let dur = r
                        .duration_ms
                        .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                        .unwrap_or_else(|| "-".into());
                    outln!(
                        "{:<36}  {:<24}  {:<9}  {:<24}  {:>9}",
                        r.id,
                        r.workflow_name,
                        r.status,
                        r.created_at,
                        dur
                    );
                }
            }
        }
        RunsCommand::Show { run, json } => {
            let run = match store.run(&run).await {
                Ok(r) => r,
                Err(
                    e
                    @ (kiln_store::Error::RunNotFound(_) | kiln_store::Error::AmbiguousRun { .. }),
                ) => {
                    errln!("error: {e}");
                    return Ok(Exit::InvalidInput);
                }
                Err(e) => return Err(e.into()),
            };
            let steps = store.steps(&run.id).await?;
            let checkpoints = store.checkpoints(&run.id).await?;
            if json {
                print_json(&serde_json::json!({
                    "run": run, "steps": steps, "checkpoints": checkpoints,
                }))?;
            } else {
                outln!("run        {}", run.id);
                outln!(
                    "workflow   {} ({})",
                    run.workflow_name,
                    or_dash(run.workflow_file.as_deref())
                );
                outln!("status     {}", run.status);
                if let Some(engine) = &run.engine {
                    outln!("engine     {engine}");
                }
                outln!("created    {} by {}", run.created_at, run.created_by);
                outln!("started    {}", or_dash(run.started_at.as_deref()));
                outln!("finished   {}", or_dash(run.finished_at.as_deref()));
                if let Some(d) = run.duration_ms {
                    outln!("duration   {:.1}s", d as f64 / 1000.0);
                }
                outln!("params     {}", run.params);
                if let Some(m) = &run.metrics {
                    outln!("metrics    {m}");
                }
                if let Some(e) = &run.error_message {
                    outln!("error      {e}");
                }
                outln!("steps:");
                for s in steps {
                    let what = match &s.action {
                        Some(a) => format!("{} {a}", s.uses),
                        None => s.uses.clone(),
                    };
                    let dur = s
                        .duration_ms
                        .map(|d| format!(" {:.1}s", d as f64 / 1000.0))
                        .unwrap_or_default();
                    outln!(
                        "  {:<16} {:<10} {what}{dur}",
                        s.step_id,
                        s.status.to_string()
                    );
                    if let (Some(n), Some(v), Some(d)) =
                        (&s.plugin_name, &s.plugin_version, &s.plugin_digest)
                    {
                        outln!("  {:<16} plugin {n} {v} {d}", "");
                    }
                    if let Some(from) = &s.cached_from {
                        outln!("  {:<16} cached: outputs reused from {from}", "");
                    }
                    if let Some(g) = &s.gpus {
                        outln!("  {:<16} GPUs {g}", "");
                    }
                    if s.status == kiln_store::StepStatus::Running
                        && let Some(p) = &s.progress
                    {
                        let mut parts = Vec::new();
                        if let Some(pct) = p["percent"].as_f64() {
                            parts.push(format!("{pct:.0}%"));
                        }
                        if let (Some(e), Some(n)) = (p["epoch"].as_u64(), p["epochs"].as_u64()) {
                            parts.push(format!("epoch {e}/{n}"));
                        }
                        if let Some(m) = p["message"].as_str() {
                            parts.push(m.chars().take(200).collect());
                        }
                        if !parts.is_empty() {
                            outln!("  {:<16} progress: {}", "", parts.join(", "));
                        }
                    }
                    if s.failure_retries + s.infrastructure_retries > 0 {
                        outln!(
                            "  {:<16} retries: {} after failures, {} after infrastructure failures",
                            "",
                            s.failure_retries,
                            s.infrastructure_retries
                        );
                    }
                    if let Some(e) = &s.error_message {
                        let kind = s
                            .failure_kind
                            .as_deref()
                            .map(|k| format!("[{k}] "))
                            .unwrap_or_default();
                        outln!("  {:<16} {kind}{e}", "");
                    }
                }
                for c in checkpoints {
                    let best = if c.is_best { " (best)" } else { "" };
                    outln!("checkpoint {} {}{best}", c.step_id, c.path);
                }
            }
        }
        RunsCommand::Cancel { .. } | RunsCommand::Retry(_) | RunsCommand::Delete { .. } => {
            unreachable!("dispatched to commands::control")
        }
        RunsCommand::Stats { json } => {
            let stats = store.run_stats().await?;
            if json {
                print_json(&stats)?;
            } else {
                for (status, n) in &stats.by_status {
                    outln!("{status:<10} {n}");
                }
                outln!("{:<10} {}", "total", stats.total);
                match stats.success_rate {
                    Some(r) => outln!("success rate {:.1}% of finished runs", r * 100.0),
                    None => outln!("success rate - (no finished runs)"),
                }
            }
        }
    }
    Ok(Exit::Success)
}

pub async fn logs(ctx: &Context, run: &str, step: Option<&str>) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let run = match store.run(run).await {
        Ok(r) => r,
        Err(e @ (kiln_store::Error::RunNotFound(_) | kiln_store::Error::AmbiguousRun { .. })) => {
            errln!("error: {e}");
            return Ok(Exit::InvalidInput);
        }
        Err(e) => return Err(e.into()),
    };
    let steps = store.steps(&run.id).await?;
    if let Some(s) = step
        && !steps.iter().any(|x| x.step_id == s)
    {
        errln!(
            "error: run {} has no step `{s}`; steps: {}",
            run.id,
            steps
                .iter()
                .map(|x| x.step_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(Exit::InvalidInput);
    }
    let events = store.events(&run.id, None).await?;
    for s in steps
        .iter()
        .filter(|s| step.is_none_or(|want| want == s.step_id))
    {
        outln!("== step {} ({}) ==", s.step_id, s.status);
        for e in events
            .iter()
            .filter(|e| e.step_id.as_deref() == Some(&s.step_id))
        {
            outln!("{} {:<5} {}", e.at, e.level, e.message);
        }
        if let Some(e) = &s.error_message {
            outln!("error: {e}");
        }
        // Programs' raw output, launch by launch.
        let mut n = 1;
        loop {
            let path = ctx.ws.step_log(&run.id, &s.step_id, n);
            let Ok(mut file) = std::fs::File::open(&path) else {
                break;
            };
            outln!("-- output ({}) --", path.display());
            // Streamed: a training's log can be larger than memory.
            use std::io::{Seek, Write};
            let mut out = std::io::stdout().lock();
            let copied = std::io::copy(&mut file, &mut out)?;
            let mut last = [0u8; 1];
            if copied > 0
                && file.seek(std::io::SeekFrom::Start(copied - 1)).is_ok()
                && std::io::Read::read_exact(&mut file, &mut last).is_ok()
                && last[0] != b'\n'
            {
                writeln!(out)?;
            }
            n += 1;
        }
    }
    Ok(Exit::Success)
}

pub async fn models(ctx: &Context, cmd: ModelsCommand) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let ModelsCommand::List { project, json } = cmd;
    let models = store.list_models(project.as_deref()).await?;
    if json {
        print_json(&models)?;
    } else {
        outln!(
            "{:<36}  {:<12}  {:<20}  {:>3}  {:<8}  {:<12}  {:<9}  FILE",
            "ID",
            "PROJECT",
            "NAME",
            "VER",
            "TASK",
            "FRAMEWORK",
            "PUBLISHED"
        );
        for m in models {
            outln!(
                "{:<36}  {:<12}  {:<20}  {:>3}  {:<8}  {:<12}  {:<9}  {}",
                m.id,
                m.project,
                m.name,
                m.version,
                or_dash(m.task.as_deref()),
                or_dash(m.framework.as_deref()),
                m.is_published,
                m.file_path
            );
        }
    }
    Ok(Exit::Success)
}
