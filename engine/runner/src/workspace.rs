//! Where things live on disk. A workspace is a directory (the repository root by default):
//!
//! ```text
//! configs/plugins.yaml                     grants of plugins (programs, limits)
//! configs/<plugin>/...                     a plugin's own configuration (read-only to it)
//! projects/<project>/releases/<zip>        dataset releases
//! projects/<project>/training_data/<slug>/ extracted releases
//! projects/<project>/model/training/<name>/  a training's output (weights/, artifacts/)
//! .kiln/kiln.db                            the default SQLite database
//! .kiln/plugins/*.wasm                     installed plugin components
//! .kiln/cache/                             compiled plugin code
//! .kiln/gpus/<host>/gpu<n>.lock            GPU slots of one machine (`crate::gpu`)
//! .kiln/runs/<run-id>/logs/<step>.log      programs' output, appended as it arrives
//!                         <step>-<n>.log   (the n-th program the step launched)
//! .kiln/runs/<run-id>/state/<step>/attempt-<a>/launch-<n>/  supervisor records of a launch
//! ```
//!
//! Every path is built here, except a launch's log file name (`kiln_plugin_host::launch_log`,
//! which `step_log` calls, since the plugin host creates it). Which engine executes a run is a
//! database fact (its lease), not a file.

use std::path::{Path, PathBuf};

use crate::Error;

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

/// Names that become path components (projects, trainings, slugs) must be plain.
pub fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = kiln_workflow::is_plain_name(name, 128);
    if ok {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "{what} `{name}` is not a valid name: use letters, digits, `.`, `_` and `-`, \
             starting with a letter or digit (at most 128 characters)"
        )))
    }
}

impl Workspace {
    /// A workspace rooted at `root` (made absolute).
    pub fn new(root: impl AsRef<Path>) -> std::io::Result<Self> {
        let root = std::path::absolute(root.as_ref())?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn kiln_dir(&self) -> PathBuf {
        self.root.join(".kiln")
    }

    /// The GPU slot files of machine `host`: per machine, since a workspace on a shared file
    /// system is seen by engines on several machines, each with its own devices.
    pub fn gpu_dir(&self, host: &str) -> PathBuf {
        let host: String = host
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
                _ => '_',
            })
            .collect();
        let host = match host.trim_start_matches('.') {
            "" => "localhost".to_owned(),
            h => h.to_owned(),
        };
        self.kiln_dir().join("gpus").join(host)
    }

    /// `sqlite://<workspace>/.kiln/kiln.db`, with the path's `%`, `?` and `#` escaped: a URL
    /// would read them as an escape, the start of its options and of a fragment.
    pub fn default_database_url(&self) -> String {
        let path = self.kiln_dir().join("kiln.db").display().to_string();
        let escaped = path
            .replace('%', "%25")
            .replace('?', "%3F")
            .replace('#', "%23");
        format!("sqlite://{escaped}")
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.kiln_dir().join("plugins")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.kiln_dir().join("cache")
    }

    pub fn configs_dir(&self) -> PathBuf {
        self.root.join("configs")
    }

    pub fn grants_file(&self) -> PathBuf {
        self.configs_dir().join("plugins.yaml")
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.kiln_dir().join("runs").join(run_id)
    }

    /// Where the programs a run's steps launch write their output.
    pub fn log_dir(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("logs")
    }

    /// The output of a step's `launch`-th program (from 1).
    pub fn step_log(&self, run_id: &str, step: &str, launch: usize) -> PathBuf {
        kiln_plugin_host::launch_log(&self.log_dir(run_id), step, launch)
    }

    /// The supervisors' state of a run's launches (`STEP/attempt-N/launch-M`): what re-attaches
    /// after a restart and what stopping a dead engine's programs looks at.
    pub fn state_dir(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("state")
    }

    /// The state of one attempt of a step.
    pub fn attempt_state_dir(&self, run_id: &str, step: &str, attempt: i64) -> PathBuf {
        self.state_dir(run_id)
            .join(step)
            .join(format!("attempt-{attempt}"))
    }

    pub fn project_dir(&self, project: &str) -> Result<PathBuf, Error> {
        check_name("project", project)?;
        Ok(self.root.join("projects").join(project))
    }

    pub fn releases_dir(&self, project: &str) -> Result<PathBuf, Error> {
        Ok(self.project_dir(project)?.join("releases"))
    }

    pub fn training_data_dir(&self, project: &str) -> Result<PathBuf, Error> {
        Ok(self.project_dir(project)?.join("training_data"))
    }

    pub fn training_dir(&self, project: &str, training_name: &str) -> Result<PathBuf, Error> {
        check_name("training_name", training_name)?;
        Ok(self
            .project_dir(project)?
            .join("model")
            .join("training")
            .join(training_name))
    }

    /// A new, unique scratch folder path under `.kiln/scratch/` (not created).
    pub fn scratch_dir(&self) -> PathBuf {
        self.kiln_dir()
            .join("scratch")
            .join(uuid::Uuid::new_v4().to_string())
    }

    /// `path` for messages: relative to the workspace root when it lies inside it.
    pub fn display(&self, path: &Path) -> String {
        self.relative(path)
            .unwrap_or_else(|| path.to_path_buf())
            .display()
            .to_string()
    }

    /// `path` relative to the workspace root, when it lies inside it.
    pub fn relative(&self, path: &Path) -> Option<PathBuf> {
        path.strip_prefix(&self.root).ok().map(Path::to_path_buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_rejected() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", "x\0"] {
            assert!(check_name("project", bad).is_err(), "{bad:?}");
        }
        for good in ["demo", "Demo-1", "v1.2_final"] {
            check_name("project", good).unwrap();
        }
    }
}
