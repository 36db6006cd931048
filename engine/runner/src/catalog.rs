//! What workflows may use: the builtins plus the actions of the loaded plugins.

use kiln_plugin_host::PluginRegistry;
use kiln_workflow::{ActionSpec, Catalog, CatalogError, CatalogErrorKind, InputKind, InputSpec};

use crate::builtins;

pub struct EngineCatalog<'a> {
    pub plugins: &'a PluginRegistry,
    /// The machine's GPU count, for `resources.gpus`; None when a scheduler (Slurm) places
    /// the steps, which then refuses what no node has.
    pub gpus: Option<u32>,
}

impl Catalog for EngineCatalog<'_> {
    fn gpus(&self) -> Option<u32> {
        self.gpus
    }

    fn action(&self, uses: &str, action: Option<&str>) -> Result<ActionSpec, CatalogError> {
        if uses.starts_with("builtin/") {
            let specs = builtins::specs();
            let known: Vec<&str> = specs.iter().map(|(n, _)| *n).collect();
            let Some((_, spec)) = specs.into_iter().find(|(n, _)| *n == uses) else {
                return Err(CatalogError::new(
                    CatalogErrorKind::UnknownUses,
                    format!("unknown builtin `{uses}`"),
                )
                .with_help(format!("builtins: {}", known.join(", "))));
            };
            if action.is_some() {
                return Err(CatalogError::new(
                    CatalogErrorKind::UnexpectedAction,
                    format!("builtin `{uses}` takes no `action`"),
                )
                .with_help("remove `action:` from this step"));
            }
            return Ok(spec);
        }
        let Some(plugin) = self.plugins.get(uses) else {
            let names = self.plugins.names();
            return Err(CatalogError::new(
                CatalogErrorKind::UnknownUses,
                format!("unknown plugin `{uses}`"),
            )
            .with_help(if names.is_empty() {
                "no plugins are installed (a workspace made by `kiln init` has them in .kiln/plugins; in Kiln's repository run scripts/build-plugins.sh; a plugin of your own: kiln plugin build)".to_owned()
            } else {
                format!(
                    "installed plugins: {}; builtins start with `builtin/`",
                    names.join(", ")
                )
            }));
        };
        let actions: Vec<&str> = plugin
            .info
            .actions
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        let Some(action) = action else {
            return Err(CatalogError::new(
                CatalogErrorKind::MissingAction,
                format!("step uses plugin `{uses}` but names no `action`"),
            )
            .with_help(format!("add `action:` with one of: {}", actions.join(", "))));
        };
        let Some(info) = plugin.info.actions.iter().find(|a| a.name == action) else {
            return Err(CatalogError::new(
                CatalogErrorKind::UnknownAction,
                format!("plugin `{uses}` has no action `{action}`"),
            )
            .with_help(format!("actions of `{uses}`: {}", actions.join(", "))));
        };
        Ok(plugin_action_spec(info))
    }
}

/// What validation and the executor know of a plugin action: its inputs with their kinds, and
/// its outputs' names.
pub(crate) fn plugin_action_spec(info: &kiln_plugin_host::ActionInfo) -> ActionSpec {
    use kiln_plugin_host::InputKind as K;
    ActionSpec {
        inputs: info
            .inputs
            .iter()
            .map(|i| {
                InputSpec::new(i.name.clone(), i.required).of_kind(match i.kind {
                    K::Any => InputKind::Any,
                    K::String => InputKind::String,
                    K::Integer => InputKind::Integer,
                    K::Number => InputKind::Number,
                    K::Boolean => InputKind::Boolean,
                    K::List => InputKind::List,
                    K::Object => InputKind::Object,
                    K::Path => InputKind::Path,
                })
            })
            .collect(),
        outputs: info.output_names().map(str::to_owned).collect(),
        memoizable: true,
    }
}
