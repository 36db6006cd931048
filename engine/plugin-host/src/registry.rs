//! Loading plugin components: compile (or load from cache), check the interface version,
//! pre-instantiate once, ask each plugin to describe itself; then run steps in fresh instances.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::{Plugin, PluginPre, types};
use crate::capability::process::ProcessState;
use crate::invocation::{FailureKind, Role, StepFailure, StepInvocation};
use crate::sandbox::{StepState, new_store};
use crate::{Error, PluginEngine, PluginGrant, Result, cache};

/// The WIT package version this host serves.
pub const INTERFACE_VERSION: &str = "0.1.0";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputInfo {
    pub name: String,
    pub required: bool,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActionInfo {
    pub name: String,
    pub description: String,
    pub inputs: Vec<InputInfo>,
    pub outputs: Vec<String>,
}

/// What a plugin says about itself, plus what the engine knows of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// `sha256:<hex>` of the component file.
    pub digest: String,
    pub path: PathBuf,
    pub actions: Vec<ActionInfo>,
    pub programs: Vec<String>,
}

/// A compiled, pre-instantiated plugin.
pub struct LoadedPlugin {
    pub info: PluginInfo,
    pub grant: PluginGrant,
    pre: PluginPre<StepState>,
}

/// All plugins of a plugin directory, by name.
pub struct PluginRegistry {
    engine: PluginEngine,
    plugins: BTreeMap<String, LoadedPlugin>,
}

fn linker(engine: &PluginEngine) -> Result<Linker<StepState>> {
    let mut linker = Linker::new(&engine.engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| Error::Engine(format!("{e:#}")))?;
    Plugin::add_to_linker::<StepState, HasSelf<StepState>>(&mut linker, |s| s)
        .map_err(|e| Error::Engine(format!("{e:#}")))?;
    Ok(linker)
}

/// Reject components built against another major/minor version of `kiln:plugin`, naming both.
fn check_interface_version(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
    path: &Path,
) -> Result<()> {
    // Versions 0.x break at every minor version, later ones at every major (semver).
    let ours = semver::Version::parse(INTERFACE_VERSION).map_err(|e| {
        Error::Engine(format!(
            "kiln:plugin@{INTERFACE_VERSION} is not a version: {e}"
        ))
    })?;
    let compatible = semver::VersionReq::parse(&format!("^{ours}"))
        .map_err(|e| Error::Engine(format!("kiln:plugin@{INTERFACE_VERSION}: {e}")))?;
    for (name, _) in component.component_type().imports(engine) {
        if let Some(rest) = name.strip_prefix("kiln:plugin/") {
            let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("(none)");
            let theirs = semver::Version::parse(version).ok();
            // A plugin may be built against an older patch of the same interface.
            let same_line = theirs.as_ref().is_some_and(|v| {
                compatible.matches(v)
                    || semver::VersionReq::parse(&format!("^{v}")).is_ok_and(|r| r.matches(&ours))
            });
            if !same_line {
                return Err(Error::InvalidPlugin {
                    path: path.to_owned(),
                    message: format!(
                        "it was built against kiln:plugin@{version} but this engine serves \
                         kiln:plugin@{INTERFACE_VERSION}; rebuild it against plugins/wit"
                    ),
                });
            }
        }
    }
    Ok(())
}

impl PluginRegistry {
    /// Load every `*.wasm` component in `dir` (a missing directory holds no plugins).
    /// A registry with no plugin (for work that runs no plugin step: cancel, delete).
    pub fn empty(engine: &PluginEngine) -> Self {
        Self {
            engine: engine.clone(),
            plugins: BTreeMap::new(),
        }
    }

    pub async fn load(engine: &PluginEngine, dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(Error::ReadDir {
                    path: dir.to_owned(),
                    source,
                });
            }
        };
        files.sort();
        let linker = linker(engine)?;
        let mut plugins: BTreeMap<String, LoadedPlugin> = BTreeMap::new();
        for path in files {
            let plugin = Self::load_one(engine, &linker, &path).await?;
            if let Some(existing) = plugins.get(&plugin.info.name) {
                return Err(Error::DuplicatePlugin {
                    name: plugin.info.name.clone(),
                    first: existing.info.path.clone(),
                    second: path,
                });
            }
            plugins.insert(plugin.info.name.clone(), plugin);
        }
        Ok(Self {
            engine: engine.clone(),
            plugins,
        })
    }

    async fn load_one(
        engine: &PluginEngine,
        linker: &Linker<StepState>,
        path: &Path,
    ) -> Result<LoadedPlugin> {
        let invalid = |message: String| Error::InvalidPlugin {
            path: path.to_owned(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::ReadPlugin {
            path: path.to_owned(),
            source,
        })?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let (component, cached) =
            cache::load_or_compile(&engine.engine, &engine.config.cache_dir, &digest, &bytes)
                .map_err(invalid)?;
        tracing::debug!(plugin = %path.display(), cached, "plugin compiled");
        check_interface_version(&engine.engine, &component, path)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| invalid(format!("{e:#}")))?;
        // Describe with default limits and no grants: describe must not need any.
        let default_grant = engine.config.grants.for_plugin("");
        let mut store = new_store(
            engine,
            "?",
            &default_grant,
            &[],
            None,
            empty_process(engine),
        )
        .map_err(invalid)?;
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| invalid(format!("cannot instantiate: {e:#}")))?;
        store.data_mut().cpu.call_started = std::time::Instant::now();
        let described = instance
            .call_describe(&mut store)
            .await
            .map_err(|e| invalid(format!("describe() failed: {e:#}")))?;
        let grant = engine.config.grants.for_plugin(&described.name);
        let info = PluginInfo {
            version: described.version,
            digest: format!("sha256:{digest}"),
            path: path.to_owned(),
            actions: described
                .actions
                .into_iter()
                .map(|a| ActionInfo {
                    name: a.name,
                    description: a.description,
                    inputs: a
                        .inputs
                        .into_iter()
                        .map(|i| InputInfo {
                            name: i.name,
                            required: i.required,
                            description: i.description,
                        })
                        .collect(),
                    outputs: a.outputs,
                })
                .collect(),
            programs: grant.programs.clone(),
            name: described.name,
        };
        Ok(LoadedPlugin { info, grant, pre })
    }

    pub fn get(&self, name: &str) -> Option<&LoadedPlugin> {
        self.plugins.get(name)
    }

    pub fn plugins(&self) -> impl Iterator<Item = &LoadedPlugin> {
        self.plugins.values()
    }

    pub fn names(&self) -> Vec<&str> {
        self.plugins.keys().map(String::as_str).collect()
    }

    /// Run one step in a fresh instance of plugin `name`.
    pub async fn run(
        &self,
        name: &str,
        inv: &StepInvocation,
    ) -> Result<serde_json::Value, StepFailure> {
        let plugin = self
            .plugins
            .get(name)
            .ok_or_else(|| StepFailure::plugin(format!("no plugin named `{name}` is loaded")))?;
        let result = plugin.run(&self.engine, inv).await;
        // A plugin must not leave programs behind, whatever happened to it.
        inv.processes
            .terminate_all(self.engine.config.kill_grace)
            .await;
        result
    }
}

fn empty_process(engine: &PluginEngine) -> ProcessState {
    ProcessState::new(
        vec![],
        vec![],
        vec![],
        vec![],
        None,
        engine.config.supervisor_exe.clone(),
        String::new(),
        PathBuf::new(),
        PathBuf::new(),
        Default::default(),
    )
}

impl LoadedPlugin {
    async fn run(
        &self,
        engine: &PluginEngine,
        inv: &StepInvocation,
    ) -> Result<serde_json::Value, StepFailure> {
        let name = &self.info.name;
        // The base environment, plus the engine variables the operator passes on to this plugin.
        let mut base_env = engine.config.program_base_env.clone();
        for name in &self.grant.env {
            if let Ok(value) = std::env::var(name) {
                base_env.retain(|(k, _)| k != name);
                base_env.push((name.clone(), value));
            }
        }
        let process = ProcessState::new(
            self.grant.programs.clone(),
            engine.config.program_search_path.clone(),
            base_env,
            inv.dirs.iter().map(|d| d.host_path.clone()).collect(),
            inv.dirs
                .iter()
                .find(|d| d.role == Role::TrainingOutput)
                .map(|d| d.host_path.clone()),
            engine.config.supervisor_exe.clone(),
            inv.step_id.clone(),
            inv.log_dir.clone(),
            inv.state_dir.clone(),
            inv.processes.clone(),
        )
        .with_gpus(inv.gpus.clone())
        .with_before_launch(inv.before_launch.clone());
        let mut store = new_store(
            engine,
            name,
            &self.grant,
            &inv.dirs,
            inv.events.clone(),
            process,
        )
        .map_err(StepFailure::plugin)?;
        let instance = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            StepFailure::plugin(format!("cannot instantiate plugin `{name}`: {e:#}"))
        })?;
        let ctx = types::StepContext {
            run_id: inv.run_id.clone(),
            step_id: inv.step_id.clone(),
            attempt: inv.attempt,
            inputs_json: inv.inputs.to_string(),
            dirs: inv
                .dirs
                .iter()
                .map(|d| types::GrantedDir {
                    role: d.role.name().to_owned(),
                    guest_path: d.guest_path().to_owned(),
                    host_path: d.host_path.display().to_string(),
                    writable: d.writable(),
                })
                .collect(),
            retry: inv.retry.as_ref().map(|r| types::RetryInfo {
                reason: match r.reason {
                    crate::RetryReason::Failure => types::RetryReason::Failure,
                    crate::RetryReason::Infrastructure => types::RetryReason::Infrastructure,
                },
                previous_error: r.previous_error.clone(),
            }),
        };
        store.data_mut().cpu.call_started = std::time::Instant::now();
        let outcome = instance.call_run(&mut store, &inv.action, &ctx).await;
        // A program lost to the machine is an infrastructure failure, whatever the plugin made
        // of it.
        if let Some(lost) = store.data().process.infrastructure_failure.clone() {
            return Err(StepFailure {
                kind: FailureKind::Infrastructure,
                message: lost,
            });
        }
        match outcome {
            Ok(Ok(json)) => match serde_json::from_str::<serde_json::Value>(&json) {
                Ok(v @ serde_json::Value::Object(_)) => Ok(v),
                Ok(_) | Err(_) => Err(StepFailure::plugin(format!(
                    "plugin `{name}` action `{}` returned outputs that are not a JSON object: {}",
                    inv.action,
                    json.chars().take(200).collect::<String>()
                ))),
            },
            Ok(Err(e)) => Err(StepFailure {
                kind: match e.kind {
                    types::ErrorKind::InvalidInput => FailureKind::InvalidInput,
                    types::ErrorKind::ProgramFailed => FailureKind::ProgramFailed,
                    types::ErrorKind::Denied => FailureKind::Denied,
                    types::ErrorKind::Internal => FailureKind::Plugin,
                },
                message: e.message,
            }),
            Err(trap) => Err(describe_trap(name, &self.grant, store.data(), &trap)),
        }
    }
}

/// Turn a trap into a message that says what the plugin did and what to do about it.
fn describe_trap(
    name: &str,
    grant: &PluginGrant,
    state: &StepState,
    trap: &wasmtime::Error,
) -> StepFailure {
    if state.memory.exceeded {
        return StepFailure::plugin(format!(
            "plugin `{name}` exceeded its memory limit of {} MiB and was stopped; raise \
             `plugins.{name}.memory_mb` in configs/plugins.yaml if it really needs more",
            grant.memory_bytes >> 20
        ));
    }
    if state.cpu.exceeded {
        return StepFailure::plugin(format!(
            "plugin `{name}` computed for more than {:.1}s in one call (an endless loop?) and was \
             stopped; raise `plugins.{name}.cpu_seconds_per_call` in configs/plugins.yaml if needed",
            grant.cpu_per_call.as_secs_f64()
        ));
    }
    let stderr = String::from_utf8_lossy(&state.stderr.contents())
        .trim()
        .to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
    let said = if tail.is_empty() {
        String::new()
    } else {
        format!("; it printed:\n  {tail}")
    };
    StepFailure::plugin(format!("plugin `{name}` crashed ({trap:#}){said}"))
}
