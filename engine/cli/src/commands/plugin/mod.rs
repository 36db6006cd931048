//! `kiln plugins …` (alias `kiln plugin …`): list the installed plugins; inspect a component
//! file; scaffold a plugin crate (`scaffold.rs`); build one and install it.

mod scaffold;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_plugin_host::{PluginEngine, PluginInfo, PluginRegistry, SUPPORTED_INTERFACES};

use crate::cli::PluginsCommand;
use crate::commands::inspect::print_json;
use crate::context::Context;
use crate::exit::Exit;
use crate::output::{errln, outln};

pub async fn plugins(ctx: &Context, cmd: PluginsCommand) -> anyhow::Result<Exit> {
    match cmd {
        PluginsCommand::List { json } => list(ctx, json).await,
        PluginsCommand::Inspect { file, json } => inspect(ctx, &file, json).await,
        PluginsCommand::New { name, dir } => scaffold::new(&name, &dir),
        PluginsCommand::Build { dir } => build(ctx, &dir).await,
    }
}

async fn list(ctx: &Context, json: bool) -> anyhow::Result<Exit> {
    let registry = ctx.plugins(Duration::from_secs(10), 0).await?;
    for name in registry.granted_but_missing() {
        errln!(
            "warning: configs/plugins.yaml grants plugin `{name}`, which is not installed (a misspelt name?)"
        );
    }
    let infos: Vec<_> = registry.plugins().map(|p| p.info.clone()).collect();
    if json {
        print_json(&infos)?;
    } else {
        for p in infos {
            outln!("{} {} {}", p.name, p.version, p.digest);
            outln!("  file     {}", p.path.display());
            outln!("  built    for kiln:plugin@{}", p.interface);
            outln!("  programs [{}]", p.programs.join(", "));
            for a in p.actions {
                outln!("  action   {}: {}", a.name, a.description);
            }
        }
    }
    Ok(Exit::Success)
}

fn supported() -> String {
    SUPPORTED_INTERFACES
        .iter()
        .map(|v| format!("kiln:plugin@{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads `file` with this workspace's grants. Outside a workspace (no `.kiln/`), nothing is
/// written where the command runs: the compiled code goes to a temporary cache.
async fn load(ctx: &Context, file: &Path) -> anyhow::Result<Result<PluginInfo, String>> {
    let mut config = ctx.host_config(Duration::from_secs(10), 0)?;
    let scratch = tempfile::TempDir::new()?;
    if ctx.global.cache_dir.is_none() && !ctx.ws.kiln_dir().is_dir() {
        config.cache_dir = scratch.path().to_owned();
    }
    let engine = PluginEngine::new(config)?;
    Ok(PluginRegistry::load_file(&engine, file)
        .await
        .map(|p| p.info)
        .map_err(|e| e.to_string()))
}

async fn inspect(ctx: &Context, file: &Path, json: bool) -> anyhow::Result<Exit> {
    let unreadable = |message: String| -> anyhow::Result<Exit> {
        if json {
            print_json(&serde_json::json!({
                "path": file.display().to_string(),
                "loads": false,
                "error": message,
                "engine_serves": SUPPORTED_INTERFACES,
            }))?;
        }
        errln!("error: {message}");
        Ok(Exit::InvalidInput)
    };
    let size = match std::fs::metadata(file) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return unreadable(format!("{} is not a file", file.display())),
        Err(e) => return unreadable(format!("cannot read {}: {e}", file.display())),
    };
    let info = match load(ctx, file).await? {
        Ok(info) => info,
        Err(message) => {
            if json {
                print_json(&serde_json::json!({
                    "path": file.display().to_string(),
                    "size": size,
                    "loads": false,
                    "error": message,
                    "engine_serves": SUPPORTED_INTERFACES,
                }))?;
            } else {
                outln!("{}: {size} bytes", file.display());
                outln!("  loads      no: {message}");
                outln!("  this kiln serves {}", supported());
            }
            return Ok(Exit::Failure);
        }
    };
    let ungranted = info.ungranted();
    if json {
        let mut v = serde_json::to_value(&info)?;
        v["loads"] = true.into();
        v["ungranted"] = serde_json::to_value(&ungranted)?;
        v["engine_serves"] = serde_json::to_value(SUPPORTED_INTERFACES)?;
        print_json(&v)?;
        return Ok(Exit::Success);
    }
    outln!("{} {}", info.name, info.version);
    outln!("  file       {} ({size} bytes)", file.display());
    outln!("  digest     {}", info.digest);
    outln!(
        "  interface  kiln:plugin@{} (this kiln serves {})",
        info.interface,
        supported()
    );
    outln!("  loads      yes");
    if info.launches.is_empty() {
        outln!("  launches   nothing it declares");
    } else {
        outln!("  launches   {}", info.launches.join(", "));
    }
    if ungranted.is_empty() {
        outln!(
            "  grants     [{}] in configs/plugins.yaml",
            info.programs.join(", ")
        );
    } else {
        outln!(
            "  grants     missing: {}; add `{}: {{programs: [{}]}}` under `plugins:` in configs/plugins.yaml",
            ungranted.join(", "),
            info.name,
            info.launches.join(", ")
        );
    }
    for action in &info.actions {
        outln!("  action {}: {}", action.name, action.description);
        for input in &action.inputs {
            outln!(
                "    input  {:<16} {:<8} {:<9} {}",
                input.name,
                input.kind.name(),
                if input.required {
                    "required"
                } else {
                    "optional"
                },
                input.description
            );
        }
        for output in &action.outputs {
            outln!("    output {:<16} {}", output.name, output.description);
        }
    }
    Ok(Exit::Success)
}

/// A component of `plugins_dir`, other than `except`, whose plugin is called `name`.
async fn provider_of(
    ctx: &Context,
    plugins_dir: &Path,
    name: &str,
    except: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(plugins_dir) else {
        return Ok(None);
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path == except || path.extension().is_none_or(|x| x != "wasm") || !path.is_file() {
            continue;
        }
        if let Ok(info) = load(ctx, &path).await?
            && info.name == name
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// `rustup target add wasm32-wasip2` unless it is there (without rustup: let cargo say).
fn ensure_wasm_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = installed
        && out.status.success()
        && !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-wasip2")
    {
        errln!("adding the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status();
    }
}

/// Whether the workspace of `dir` (the manifest with `[workspace]`, or `dir`'s own) defines
/// the `plugin` profile.
fn plugin_profile(root_manifest: &Path) -> &'static str {
    let defines = std::fs::read_to_string(root_manifest)
        .map(|t| t.lines().any(|l| l.trim() == "[profile.plugin]"))
        .unwrap_or(false);
    if defines { "plugin" } else { "release" }
}

async fn build(ctx: &Context, dir: &Path) -> anyhow::Result<Exit> {
    if dir.is_file() {
        errln!(
            "error: {} is a file; name the plugin crate's folder (the one with its Cargo.toml)",
            dir.display()
        );
        return Ok(Exit::InvalidInput);
    }
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        errln!(
            "error: {} has no Cargo.toml; name a plugin crate's folder (`kiln plugin new NAME` makes one)",
            dir.display()
        );
        return Ok(Exit::InvalidInput);
    }
    ensure_wasm_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let metadata = Command::new(&cargo)
        .current_dir(dir)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()?;
    if !metadata.status.success() {
        errln!(
            "error: cargo metadata failed in {}:\n{}",
            dir.display(),
            String::from_utf8_lossy(&metadata.stderr)
        );
        return Ok(Exit::InvalidInput);
    }
    let meta: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    let profile = plugin_profile(
        &PathBuf::from(meta["workspace_root"].as_str().unwrap_or_default()).join("Cargo.toml"),
    );
    let own = manifest.canonicalize()?;
    let Some(package) = meta["packages"].as_array().and_then(|ps| {
        ps.iter().find(|p| {
            p["manifest_path"]
                .as_str()
                .is_some_and(|m| Path::new(m) == own)
        })
    }) else {
        errln!("error: {} declares no package", manifest.display());
        return Ok(Exit::InvalidInput);
    };
    let name = package["name"].as_str().unwrap_or_default().to_owned();
    errln!("building {name} for wasm32-wasip2 (profile {profile})");
    let out = Command::new(&cargo)
        .current_dir(dir)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            profile,
            "--message-format",
            "json-render-diagnostics",
            "-p",
            &name,
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        errln!("error: cargo build of {name} failed (its errors are above)");
        return Ok(Exit::Failure);
    }
    // The component: the cdylib artifact cargo reported.
    let wasm = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact" && m["target"]["name"] == name.replace('-', "_")
        })
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .find(|f| f.extension().is_some_and(|x| x == "wasm"));
    let Some(wasm) = wasm else {
        errln!(
            "error: building {name} produced no .wasm: add `crate-type = [\"cdylib\"]` under [lib] in its Cargo.toml"
        );
        return Ok(Exit::Failure);
    };
    let info = match load(ctx, &wasm).await? {
        Ok(info) => info,
        Err(message) => {
            errln!("error: {} does not load: {message}", wasm.display());
            return Ok(Exit::Failure);
        }
    };
    let plugins_dir = ctx
        .global
        .plugins_dir
        .clone()
        .unwrap_or_else(|| ctx.ws.plugins_dir());
    if let Err(e) = std::fs::create_dir_all(&plugins_dir) {
        errln!(
            "error: cannot create the plugins directory {}: {e}",
            plugins_dir.display()
        );
        return Ok(Exit::Failure);
    }
    let dest = plugins_dir.join(format!("{}.wasm", info.name));
    // Another file providing the same plugin would make the directory unusable (two plugins
    // of one name): say so instead of installing beside it.
    if let Some(other) = provider_of(ctx, &plugins_dir, &info.name, &dest).await? {
        errln!(
            "error: {} already provides plugin `{}`; remove it (or rename the plugin) before \
             installing this build as {}",
            other.display(),
            info.name,
            dest.display()
        );
        return Ok(Exit::InvalidInput);
    }
    // Written beside, then renamed: a server watching the folder never loads half a file.
    let tmp = plugins_dir.join(format!(".{}.wasm.tmp{}", info.name, std::process::id()));
    std::fs::copy(&wasm, &tmp)?;
    std::fs::rename(&tmp, &dest)?;
    outln!(
        "installed {} {} ({}, kiln:plugin@{}) as {}",
        info.name,
        info.version,
        info.digest,
        info.interface,
        dest.display()
    );
    let ungranted = info.ungranted();
    if !ungranted.is_empty() {
        outln!(
            "it launches {} but configs/plugins.yaml does not grant it; add:\n  plugins:\n    {}:\n      programs: [{}]",
            ungranted.join(", "),
            info.name,
            info.launches.join(", ")
        );
    }
    Ok(Exit::Success)
}
