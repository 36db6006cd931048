//! Read-only commands: `runs list|show|stats`, `logs`, `models list`, `plugins list`.

use std::time::Duration;

use kiln_store::RunStatus;

use crate::cli::{ModelsCommand, PluginsCommand, RunsCommand};
use crate::context::Context;
use crate::exit::Exit;

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
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
                    eprintln!("error: --status: {e}");
                    return Ok(Exit::InvalidInput);
                }
            };
            let runs = store.list_runs(status, limit).await?;
            if json {
                print_json(&runs)?;
            } else {
                println!(
                    "{:<36}  {:<24}  {:<9}  {:<24}  {:>9}",
                    "ID", "WORKFLOW", "STATUS", "CREATED", "DURATION"
                );
                for r in runs {
                    let dur = r
                        .duration_ms
                        .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<36}  {:<24}  {:<9}  {:<24}  {:>9}",
                        r.id, r.workflow_name, r.status, r.created_at, dur
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
                    eprintln!("error: {e}");
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
                println!("run        {}", run.id);
                println!(
                    "workflow   {} ({})",
                    run.workflow_name,
                    or_dash(run.workflow_file.as_deref())
                );
                println!("status     {}", run.status);
                println!("created    {} by {}", run.created_at, run.created_by);
                println!("started    {}", or_dash(run.started_at.as_deref()));
                println!("finished   {}", or_dash(run.finished_at.as_deref()));
                if let Some(d) = run.duration_ms {
                    println!("duration   {:.1}s", d as f64 / 1000.0);
                }
                println!("params     {}", run.params);
                if let Some(m) = &run.metrics {
                    println!("metrics    {m}");
                }
                if let Some(e) = &run.error_message {
                    println!("error      {e}");
                }
                println!("steps:");
                for s in steps {
                    let what = match &s.action {
                        Some(a) => format!("{} {a}", s.uses),
                        None => s.uses.clone(),
                    };
                    let dur = s
                        .duration_ms
                        .map(|d| format!(" {:.1}s", d as f64 / 1000.0))
                        .unwrap_or_default();
                    println!(
                        "  {:<16} {:<10} {what}{dur}",
                        s.step_id,
                        s.status.to_string()
                    );
                    if let (Some(n), Some(v), Some(d)) =
                        (&s.plugin_name, &s.plugin_version, &s.plugin_digest)
                    {
                        println!("  {:<16} plugin {n} {v} {d}", "");
                    }
                    if let Some(from) = &s.cached_from {
                        println!("  {:<16} cached: outputs reused from {from}", "");
                    }
                    if let Some(g) = &s.gpus {
                        println!("  {:<16} GPUs {g}", "");
                    }
                    if s.failure_retries + s.infrastructure_retries > 0 {
                        println!(
                            "  {:<16} retries: {} after failures, {} after infrastructure failures",
                            "", s.failure_retries, s.infrastructure_retries
                        );
                    }
                    if let Some(e) = &s.error_message {
                        let kind = s
                            .failure_kind
                            .as_deref()
                            .map(|k| format!("[{k}] "))
                            .unwrap_or_default();
                        println!("  {:<16} {kind}{e}", "");
                    }
                }
                for c in checkpoints {
                    let best = if c.is_best { " (best)" } else { "" };
                    println!("checkpoint {} {}{best}", c.step_id, c.path);
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
                    println!("{status:<10} {n}");
                }
                println!("{:<10} {}", "total", stats.total);
                match stats.success_rate {
                    Some(r) => println!("success rate {:.1}% of finished runs", r * 100.0),
                    None => println!("success rate - (no finished runs)"),
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
            eprintln!("error: {e}");
            return Ok(Exit::InvalidInput);
        }
        Err(e) => return Err(e.into()),
    };
    let steps = store.steps(&run.id).await?;
    if let Some(s) = step
        && !steps.iter().any(|x| x.step_id == s)
    {
        eprintln!(
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
        println!("== step {} ({}) ==", s.step_id, s.status);
        for e in events
            .iter()
            .filter(|e| e.step_id.as_deref() == Some(&s.step_id))
        {
            println!("{} {:<5} {}", e.at, e.level, e.message);
        }
        if let Some(e) = &s.error_message {
            println!("error: {e}");
        }
        // Programs' raw output, launch by launch.
        let dir = ctx.ws.log_dir(&run.id);
        let mut n = 1;
        loop {
            let path = match n {
                1 => dir.join(format!("{}.log", s.step_id)),
                n => dir.join(format!("{}-{n}.log", s.step_id)),
            };
            let Ok(bytes) = std::fs::read(&path) else {
                break;
            };
            println!("-- output ({}) --", path.display());
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            if !bytes.ends_with(b"\n") {
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
        println!(
            "{:<36}  {:<12}  {:<20}  {:>3}  {:<8}  {:<9}  FILE",
            "ID", "PROJECT", "NAME", "VER", "TASK", "PUBLISHED"
        );
        for m in models {
            println!(
                "{:<36}  {:<12}  {:<20}  {:>3}  {:<8}  {:<9}  {}",
                m.id,
                m.project,
                m.name,
                m.version,
                or_dash(m.task.as_deref()),
                m.is_published,
                m.file_path
            );
        }
    }
    Ok(Exit::Success)
}

pub async fn plugins(ctx: &Context, cmd: PluginsCommand) -> anyhow::Result<Exit> {
    let PluginsCommand::List { json } = cmd;
    let registry = ctx.plugins(Duration::from_secs(10)).await?;
    let infos: Vec<_> = registry.plugins().map(|p| p.info.clone()).collect();
    if json {
        print_json(&infos)?;
    } else {
        for p in infos {
            println!("{} {} {}", p.name, p.version, p.digest);
            println!("  file     {}", p.path.display());
            println!("  programs [{}]", p.programs.join(", "));
            for a in p.actions {
                println!("  action   {}: {}", a.name, a.description);
            }
        }
    }
    Ok(Exit::Success)
}
