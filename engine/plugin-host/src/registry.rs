//! Loading plugin components: compile (or load from cache), check the interface version,
//! pre-instantiate once, ask each plugin to describe itself; then run steps in fresh instances.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::{types, v0_1, v0_2};
use crate::capability::process::ProcessState;
use crate::engine::InstanceSlot;
use crate::invocation::{FailureKind, Role, StepFailure, StepInvocation};
use crate::sandbox::{StepState, new_store};
use crate::{Error, PluginEngine, PluginGrant, Result, cache};

/// The current `kiln:plugin` version: what the SDK and `kiln plugin new` build against.
pub const INTERFACE_VERSION: &str = "0.2.0";

/// Every `kiln:plugin` version this engine loads, oldest first. Components of each run side by
/// side; a released version is never edited (plugins/wit/<version>/).
pub const SUPPORTED_INTERFACES: &[&str] = &["0.1.0", "0.2.0"];

/// The JSON type an input takes (`kiln:plugin@0.2.0`'s `input-kind`; inputs of 0.1 plugins
/// are `any`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Any,
    String,
    Integer,
    Number,
    Boolean,
    List,
    Object,
    Path,
}

impl InputKind {
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Any => "any",
            InputKind::String => "string",
            InputKind::Integer => "integer",
            InputKind::Number => "number",
            InputKind::Boolean => "boolean",
            InputKind::List => "list",
            InputKind::Object => "object",
            InputKind::Path => "path",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputInfo {
    pub name: String,
    pub required: bool,
    pub description: String,
    pub kind: InputKind,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutputInfo {
    pub name: String,
    /// Empty for plugins built against `kiln:plugin@0.1.0`, which name outputs only.
    pub description: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActionInfo {
    pub name: String,
    pub description: String,
    pub inputs: Vec<InputInfo>,
    pub outputs: Vec<OutputInfo>,
}

impl ActionInfo {
    pub fn output_names(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().map(|o| o.name.as_str())
    }
}

/// What a plugin says about itself, plus what the engine knows of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// The `kiln:plugin` version the component was built against, e.g. `0.2.0`.
    pub interface: String,
    /// `sha256:<hex>` of the component file.
    pub digest: String,
    pub path: PathBuf,
    /// Size of the component file in bytes.
    pub size: u64,
    pub actions: Vec<ActionInfo>,
    /// The programs the operator granted it (`configs/plugins.yaml`).
    pub programs: Vec<String>,
    /// The programs the plugin says it launches (empty for `kiln:plugin@0.1.0` plugins, which
    /// cannot say).
    pub launches: Vec<String>,
}

impl PluginInfo {
    /// Programs the plugin launches that the operator has not granted.
    pub fn ungranted(&self) -> Vec<&str> {
        self.launches
            .iter()
            .filter(|p| !self.programs.contains(p))
            .map(String::as_str)
            .collect()
    }
}

/// The pre-instantiated component, by the interface version it was built against.
#[derive(Clone)]
enum Pre {
    V0_1(v0_1::PluginPre<StepState>),
    V0_2(v0_2::PluginPre<StepState>),
}

/// A compiled, pre-instantiated plugin.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub info: PluginInfo,
    pub grant: PluginGrant,
    pre: Pre,
}

/// A plugin file that could not be loaded by a reload, and why; the version of it loaded
/// before (if any) stays in use.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginProblem {
    pub path: PathBuf,
    pub message: String,
}

/// All plugins of a plugin directory, by name.
pub struct PluginRegistry {
    engine: PluginEngine,
    dir: PathBuf,
    plugins: BTreeMap<String, LoadedPlugin>,
    problems: Vec<PluginProblem>,
}

fn linker(engine: &PluginEngine) -> Result<Linker<StepState>> {
    let mut linker = Linker::new(&engine.engine);
    let err = |e: wasmtime::Error| Error::Engine(format!("{e:#}"));
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
    v0_1::Plugin::add_to_linker::<StepState, HasSelf<StepState>>(&mut linker, |s| s)
        .map_err(err)?;
    v0_2::Plugin::add_to_linker::<StepState, HasSelf<StepState>>(&mut linker, |s| s)
        .map_err(err)?;
    Ok(linker)
}

/// The `kiln:plugin` version a component was built against (from the names of its imports),
/// as one of [`SUPPORTED_INTERFACES`]; any other is refused, naming both.
pub fn interface_version(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
    path: &Path,
) -> Result<&'static str> {
    let invalid = |message: String| Error::InvalidPlugin {
        path: path.to_owned(),
        message,
    };
    let supported = SUPPORTED_INTERFACES
        .iter()
        .map(|v| format!("kiln:plugin@{v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut found: Option<&'static str> = None;
    for (name, _) in component.component_type().imports(engine) {
        let Some(rest) = name.strip_prefix("kiln:plugin/") else {
            continue;
        };
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("(none)");
        // Versions 0.x break at every minor version, later ones at every major (semver): a
        // component built against another patch of a supported version is that version.
        let ours = semver::Version::parse(version).ok().and_then(|theirs| {
            SUPPORTED_INTERFACES.iter().copied().find(|s| {
                let s = semver::Version::parse(s).expect("supported versions are versions");
                semver::VersionReq::parse(&format!("^{s}")).is_ok_and(|r| r.matches(&theirs))
                    || semver::VersionReq::parse(&format!("^{theirs}")).is_ok_and(|r| r.matches(&s))
            })
        });
        match (ours, found) {
            (None, _) => {
                return Err(invalid(format!(
                    "it was built against kiln:plugin@{version}, which this engine does not \
                     serve (it serves {supported}); rebuild it with this Kiln's SDK \
                     (`kiln plugin build`)"
                )));
            }
            (Some(v), Some(f)) if v != f => {
                return Err(invalid(format!(
                    "it imports both kiln:plugin@{f} and kiln:plugin@{v}; build it against one"
                )));
            }
            (Some(v), _) => found = Some(v),
        }
    }
    found.ok_or_else(|| {
        invalid(format!(
            "it imports no kiln:plugin interface: is it a Kiln plugin? (this engine serves \
             {supported})"
        ))
    })
}

fn v0_1_info(
    d: v0_1::kiln::plugin::types::PluginInfo,
) -> (String, String, Vec<ActionInfo>, Vec<String>) {
    let actions = d
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
                    kind: InputKind::Any,
                })
                .collect(),
            outputs: a
                .outputs
                .into_iter()
                .map(|name| OutputInfo {
                    name,
                    description: String::new(),
                })
                .collect(),
        })
        .collect();
    (d.name, d.version, actions, Vec::new())
}

fn v0_2_info(d: types::PluginInfo) -> (String, String, Vec<ActionInfo>, Vec<String>) {
    let actions = d
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
                    kind: match i.kind {
                        types::InputKind::Any => InputKind::Any,
                        types::InputKind::String => InputKind::String,
                        types::InputKind::Integer => InputKind::Integer,
                        types::InputKind::Number => InputKind::Number,
                        types::InputKind::Boolean => InputKind::Boolean,
                        types::InputKind::List => InputKind::List,
                        types::InputKind::Object => InputKind::Object,
                        types::InputKind::Path => InputKind::Path,
                    },
                })
                .collect(),
            outputs: a
                .outputs
                .into_iter()
                .map(|o| OutputInfo {
                    name: o.name,
                    description: o.description,
                })
                .collect(),
        })
        .collect();
    (d.name, d.version, actions, d.programs)
}

impl PluginRegistry {
    /// A registry with no plugin (for work that runs no plugin step: cancel, delete).
    pub fn empty(engine: &PluginEngine) -> Self {
        Self {
            engine: engine.clone(),
            dir: PathBuf::new(),
            plugins: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    /// The `*.wasm` files of `dir`, sorted (a missing directory holds none).
    fn files(dir: &Path) -> Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                return Err(Error::ReadDir {
                    path: dir.to_owned(),
                    error,
                });
            }
        };
        files.sort();
        Ok(files)
    }

    /// The plugins of `dir` now, with `engine`'s grants: for a server that keeps running
    /// while files change. Unlike [`PluginRegistry::load`] nothing fails as a whole: a file
    /// that does not load is a [`PluginProblem`] and the version of it that `self` holds (same
    /// path) stays; a file whose content did not change is not loaded again; a removed file's
    /// plugin is gone.
    pub async fn reload(&self, engine: &PluginEngine) -> Result<Self> {
        let dir = self.dir.clone();
        let mut files = Self::files(&dir)?;
        // The files that provided plugins go first: when a new file claims a name already in
        // use, the established plugin keeps it and the new file is the problem.
        files.sort_by_key(|p| !self.plugins.values().any(|l| &l.info.path == p));
        let linker = linker(engine)?;
        let mut plugins: BTreeMap<String, LoadedPlugin> = BTreeMap::new();
        let mut problems = Vec::new();
        for path in files {
            let previous = self.plugins.values().find(|p| p.info.path == path);
            let loaded = match read_component(&path) {
                Ok(bytes) => {
                    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
                    match previous.filter(|p| p.info.digest == digest) {
                        Some(same) => Ok(same.regranted(engine)),
                        None => Self::load_bytes(engine, &linker, &path, &bytes).await,
                    }
                }
                Err(error) => Err(Error::ReadPlugin {
                    path: path.clone(),
                    error,
                }),
            };
            let plugin = match loaded {
                Ok(plugin) => plugin,
                Err(e) => {
                    problems.push(PluginProblem {
                        path: path.clone(),
                        message: e.to_string(),
                    });
                    match previous {
                        Some(previous) => previous.regranted(engine),
                        None => continue,
                    }
                }
            };
            if let Some(existing) = plugins.get(&plugin.info.name) {
                problems.push(PluginProblem {
                    path: path.clone(),
                    message: Error::DuplicatePlugin {
                        name: plugin.info.name.clone(),
                        first: existing.info.path.clone(),
                        second: path,
                    }
                    .to_string(),
                });
                continue;
            }
            plugins.insert(plugin.info.name.clone(), plugin);
        }
        Ok(Self {
            engine: engine.clone(),
            dir,
            plugins,
            problems,
        })
    }

    /// The directory the plugins come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The engine the plugins were loaded with (its grants included).
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// Plugins that `configs/plugins.yaml` grants something but that are not loaded (a typo in
    /// a name grants nothing to the plugin meant).
    pub fn granted_but_missing(&self) -> Vec<&str> {
        self.engine
            .config
            .grants
            .plugin_names()
            .filter(|name| !self.plugins.contains_key(*name))
            .collect()
    }

    /// Files the last reload could not load.
    pub fn problems(&self) -> &[PluginProblem] {
        &self.problems
    }

    /// The same registry, also reporting `problem` (e.g. grants that do not parse).
    #[must_use]
    pub fn with_problem(mut self, problem: PluginProblem) -> Self {
        self.problems.push(problem);
        self
    }

    /// The plugins of `dir` as [`PluginRegistry::reload`] loads them: a file that does not load
    /// is a [`PluginProblem`], not a failure (for a server, which keeps running).
    pub async fn load_tolerant(engine: &PluginEngine, dir: &Path) -> Result<Self> {
        let mut empty = Self::empty(engine);
        empty.dir = dir.to_owned();
        empty.reload(engine).await
    }

    /// One component file, loaded as [`PluginRegistry::load`] loads each (for inspecting a
    /// file before installing it).
    pub async fn load_file(engine: &PluginEngine, path: &Path) -> Result<LoadedPlugin> {
        let linker = linker(engine)?;
        Self::load_one(engine, &linker, path).await
    }

    /// Load every `*.wasm` component in `dir` (a missing directory holds no plugins).
    pub async fn load(engine: &PluginEngine, dir: &Path) -> Result<Self> {
        let files = Self::files(dir)?;
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
            dir: dir.to_owned(),
            plugins,
            problems: Vec::new(),
        })
    }

    async fn load_one(
        engine: &PluginEngine,
        linker: &Linker<StepState>,
        path: &Path,
    ) -> Result<LoadedPlugin> {
        let bytes = read_component(path).map_err(|error| Error::ReadPlugin {
            path: path.to_owned(),
            error,
        })?;
        Self::load_bytes(engine, linker, path, &bytes).await
    }

    /// The component `bytes`, read from `path`.
    async fn load_bytes(
        engine: &PluginEngine,
        linker: &Linker<StepState>,
        path: &Path,
        bytes: &[u8],
    ) -> Result<LoadedPlugin> {
        let invalid = |message: String| Error::InvalidPlugin {
            path: path.to_owned(),
            message,
        };
        // What wasmtime would say of a file that is not a component is not for people.
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(invalid(
                    "it is a core WebAssembly module, not a component: build the plugin for \
                     wasm32-wasip2 (`kiln plugin build`)"
                        .into(),
                ));
            }
            _ => {
                return Err(invalid(
                    "it is not a WebAssembly component (it does not start with `\\0asm`)".into(),
                ));
            }
        }
        let digest = hex::encode(Sha256::digest(bytes));
        let (component, cached) =
            cache::load_or_compile(&engine.engine, &engine.config.cache_dir, &digest, bytes)
                .map_err(|e| {
                    if e.contains("unexpected end-of-file") {
                        invalid(format!(
                            "it is incomplete (truncated, or still being written): {e}"
                        ))
                    } else {
                        invalid(e)
                    }
                })?;
        tracing::debug!(plugin = %path.display(), cached, "plugin compiled");
        let interface = interface_version(&engine.engine, &component, path)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        // Describe with default limits and no grants: describe must not need any.
        let default_grant = engine.config.grants.for_plugin("");
        let mut store = new_store(
            engine,
            "?",
            &default_grant,
            &[],
            None,
            empty_process(engine),
            engine.short_call_slot().await,
        )
        .map_err(invalid)?;
        let describe_failed = |e: wasmtime::Error| invalid(format!("describe() failed: {e:#}"));
        let cannot_instantiate = |e: wasmtime::Error| invalid(format!("cannot instantiate: {e:#}"));
        let (pre, (name, version, actions, launches)) = match interface {
            "0.1.0" => {
                let pre = v0_1::PluginPre::new(pre).map_err(|e| invalid(format!("{e:#}")))?;
                let instance = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(cannot_instantiate)?;
                store.data_mut().cpu.call_started = std::time::Instant::now();
                let d = instance
                    .call_describe(&mut store)
                    .await
                    .map_err(describe_failed)?;
                (Pre::V0_1(pre), v0_1_info(d))
            }
            _ => {
                let pre = v0_2::PluginPre::new(pre).map_err(|e| invalid(format!("{e:#}")))?;
                let instance = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(cannot_instantiate)?;
                store.data_mut().cpu.call_started = std::time::Instant::now();
                let d = instance
                    .call_describe(&mut store)
                    .await
                    .map_err(describe_failed)?;
                (Pre::V0_2(pre), v0_2_info(d))
            }
        };
        check_plugin_name(&name)
            .and_then(|()| check_described(&actions, &launches))
            .map_err(|e| invalid(format!("its describe() is not usable: {e}")))?;
        let grant = engine.config.grants.for_plugin(&name);
        let info = PluginInfo {
            name,
            version,
            interface: interface.to_owned(),
            digest: format!("sha256:{digest}"),
            path: path.to_owned(),
            size: bytes.len() as u64,
            actions,
            programs: grant.programs.clone(),
            launches,
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

    /// Run one step in a fresh instance of plugin `name`, in `slot` (from this registry's
    /// [`PluginEngine::instance_slot`]).
    pub async fn run(
        &self,
        name: &str,
        inv: &StepInvocation,
        slot: InstanceSlot,
    ) -> Result<serde_json::Value, StepFailure> {
        let plugin = self
            .plugins
            .get(name)
            .ok_or_else(|| StepFailure::plugin(format!("no plugin named `{name}` is loaded")))?;
        let result = plugin.run(&self.engine, inv, slot).await;
        // A plugin must not leave programs behind, whatever happened to it.
        inv.processes
            .terminate_all(self.engine.config.kill_grace)
            .await;
        result
    }
}

/// Largest plugin component read (the bundled ones are well under 1 MiB).
pub const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// The bytes of the component file `path`: anything but a regular file (a FIFO, a device) and
/// anything over [`MAX_COMPONENT_BYTES`] is refused before it is read.
fn read_component(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    // Looked at before it is opened: opening a FIFO blocks until someone writes to it.
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_COMPONENT_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} bytes; a plugin component is at most {MAX_COMPONENT_BYTES} bytes",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(MAX_COMPONENT_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_COMPONENT_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "grew past the limit while read",
        ));
    }
    Ok(bytes)
}

/// A plugin's name is what workflows write in `uses:` and names its file in the plugins
/// directory: 1 to 64 lowercase letters, digits and single dashes, starting with a letter, and
/// not `builtin`.
pub fn check_plugin_name(name: &str) -> std::result::Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name != "builtin";
    if ok {
        Ok(())
    } else {
        let shown: String = name.chars().take(80).collect();
        Err(format!(
            "{shown:?} cannot name a plugin (workflows write it in `uses:`): use 1 to 64 \
             lowercase letters, digits and single dashes, starting with a letter, not `builtin`"
        ))
    }
}

/// What `describe()` says must be safe to show and unambiguous: action, input and output names
/// of 1 to 64 lowercase letters, digits, `-` and `_` (starting with a letter), none twice;
/// descriptions without control characters (they are printed on terminals), at most 4 KiB;
/// program names without `/` or control characters.
fn check_described(actions: &[ActionInfo], launches: &[String]) -> std::result::Result<(), String> {
    fn name_ok(n: &str) -> bool {
        (1..=64).contains(&n.len())
            && n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    }
    fn text_ok(t: &str) -> bool {
        t.len() <= 4096 && !t.chars().any(|c| c.is_control() && c != '\n')
    }
    let shown = |s: &str| format!("{:?}", s.chars().take(80).collect::<String>());
    let mut actions_seen = std::collections::HashSet::new();
    for a in actions {
        if !name_ok(&a.name) {
            return Err(format!(
                "action name {} is not 1 to 64 lowercase letters, digits, `-` and `_`",
                shown(&a.name)
            ));
        }
        if !actions_seen.insert(a.name.as_str()) {
            return Err(format!("action `{}` is described twice", a.name));
        }
        if !text_ok(&a.description) {
            return Err(format!(
                "the description of action `{}` has control characters or is over 4 KiB",
                a.name
            ));
        }
        let described = a
            .inputs
            .iter()
            .map(|i| ("input", &i.name, &i.description))
            .chain(
                a.outputs
                    .iter()
                    .map(|o| ("output", &o.name, &o.description)),
            );
        let mut seen = std::collections::HashSet::new();
        for (what, name, text) in described {
            if !name_ok(name) {
                return Err(format!(
                    "action `{}`: {what} name {} is not 1 to 64 lowercase letters, digits, `-` \
                     and `_`",
                    a.name,
                    shown(name)
                ));
            }
            if !seen.insert((what, name.as_str())) {
                return Err(format!(
                    "action `{}`: {what} `{name}` is described twice",
                    a.name
                ));
            }
            if !text_ok(text) {
                return Err(format!(
                    "action `{}`: the description of {what} `{name}` has control characters or \
                     is over 4 KiB",
                    a.name
                ));
            }
        }
    }
    for program in launches {
        if program.is_empty()
            || program.len() > 255
            || program.contains('/')
            || program.chars().any(char::is_control)
        {
            return Err(format!(
                "it launches {}, which is not a program name",
                shown(program)
            ));
        }
    }
    Ok(())
}

/// The step as the current interface describes it.
fn step_context(inv: &StepInvocation) -> types::StepContext {
    types::StepContext {
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
    /// The same component under `engine`'s grants.
    fn regranted(&self, engine: &PluginEngine) -> Self {
        let grant = engine.config.grants.for_plugin(&self.info.name);
        let mut info = self.info.clone();
        info.programs = grant.programs.clone();
        Self {
            info,
            grant,
            pre: self.pre.clone(),
        }
    }

    async fn run(
        &self,
        engine: &PluginEngine,
        inv: &StepInvocation,
        slot: InstanceSlot,
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
        .with_launcher(inv.launcher.clone())
        .with_before_launch(inv.before_launch.clone());
        let mut store = new_store(
            engine,
            name,
            &self.grant,
            &inv.dirs,
            inv.events.clone(),
            process,
            slot,
        )
        .map_err(StepFailure::plugin)?;
        let cannot_instantiate = |e: wasmtime::Error| {
            StepFailure::plugin(format!("cannot instantiate plugin `{name}`: {e:#}"))
        };
        let ctx = step_context(inv);
        let outcome = match &self.pre {
            Pre::V0_2(pre) => {
                let instance = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(cannot_instantiate)?;
                store.data_mut().cpu.call_started = std::time::Instant::now();
                instance
                    .call_run(&mut store, &inv.action, &ctx)
                    .await
                    .map(|r| r.map_err(|e| (e.kind, e.message)))
            }
            Pre::V0_1(pre) => {
                let instance = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(cannot_instantiate)?;
                store.data_mut().cpu.call_started = std::time::Instant::now();
                use v0_1::kiln::plugin::types as old;
                let ctx = old::StepContext {
                    run_id: ctx.run_id,
                    step_id: ctx.step_id,
                    attempt: ctx.attempt,
                    inputs_json: ctx.inputs_json,
                    dirs: ctx
                        .dirs
                        .into_iter()
                        .map(|d| old::GrantedDir {
                            role: d.role,
                            guest_path: d.guest_path,
                            host_path: d.host_path,
                            writable: d.writable,
                        })
                        .collect(),
                    retry: ctx.retry.map(|r| old::RetryInfo {
                        reason: match r.reason {
                            types::RetryReason::Failure => old::RetryReason::Failure,
                            types::RetryReason::Infrastructure => old::RetryReason::Infrastructure,
                        },
                        previous_error: r.previous_error,
                    }),
                };
                instance
                    .call_run(&mut store, &inv.action, &ctx)
                    .await
                    .map(|r| {
                        r.map_err(|e| {
                            let kind = match e.kind {
                                old::ErrorKind::InvalidInput => types::ErrorKind::InvalidInput,
                                old::ErrorKind::ProgramFailed => types::ErrorKind::ProgramFailed,
                                old::ErrorKind::Denied => types::ErrorKind::Denied,
                                old::ErrorKind::Internal => types::ErrorKind::Internal,
                            };
                            (kind, e.message)
                        })
                    })
            }
        };
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
            Ok(Err((kind, message))) => Err(StepFailure {
                kind: match kind {
                    types::ErrorKind::InvalidInput => FailureKind::InvalidInput,
                    types::ErrorKind::ProgramFailed => FailureKind::ProgramFailed,
                    types::ErrorKind::Denied => FailureKind::Denied,
                    types::ErrorKind::Internal => FailureKind::Plugin,
                },
                message,
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
