//! `configs/launchers.yaml`: where the programs of plugin steps run. `local` (the default, also
//! when the file is absent) starts them under a supervisor on this machine; `slurm` submits each
//! launch as a Slurm batch job (see `kiln_supervisor::slurm`), with the step's `resources.gpus`
//! as `--gres=gpu:N` and its `timeout` as `--time`. Plugins do not change: they call
//! `process.launch` either way.
//!
//! ```yaml
//! launcher: slurm
//! slurm:
//!   partition: gpu            # --partition (default: the cluster's default partition)
//!   account: vision           # --account
//!   sbatch_args: [--qos=high] # more sbatch arguments
//!   bin_dir: /opt/slurm/bin   # where sbatch, squeue, scontrol, scancel are (default: PATH)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use kiln_supervisor::{Launcher, SlurmOptions};

use crate::{Error, Result};

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaunchersFile {
    #[serde(default)]
    launcher: Kind,
    #[serde(default)]
    slurm: Option<SlurmFile>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Local,
    Slurm,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlurmFile {
    partition: Option<String>,
    account: Option<String>,
    #[serde(default)]
    sbatch_args: Vec<String>,
    bin_dir: Option<PathBuf>,
}

/// sbatch options Kiln sets itself for every job: the step decides them, not the config.
const KILN_SBATCH_OPTIONS: &[(&str, &str)] = &[
    (
        "--job-name",
        "Kiln names each job after its launch, to find it again",
    ),
    (
        "--output",
        "the supervisor's output goes to the launch's state folder",
    ),
    (
        "--error",
        "the supervisor's output goes to the launch's state folder",
    ),
    ("--chdir", "the job runs in the launch's state folder"),
    (
        "--export",
        "the program's environment is the step's, from spec.json",
    ),
    ("--parsable", "Kiln reads the job id"),
    ("--gres", "it is the step's `resources.gpus`"),
    ("--gpus", "it is the step's `resources.gpus`"),
    ("--time", "it is the step's `timeout`"),
    (
        "--requeue",
        "a job Slurm kills is retried by the step's retry policy",
    ),
    ("--array", "one launch is one job"),
    ("--wrap", "Kiln writes the job script"),
    ("--gpus-per-node", "it is the step's `resources.gpus`"),
    ("--gpus-per-task", "it is the step's `resources.gpus`"),
    ("--gpus-per-socket", "it is the step's `resources.gpus`"),
    ("--hold", "a held job would keep the step waiting"),
    ("--wait", "Kiln follows the job itself"),
];

/// The short forms of [`KILN_SBATCH_OPTIONS`] (`-J NAME`, `-Jname`...).
const KILN_SBATCH_SHORT: &[(char, &str)] = &[
    ('J', "--job-name"),
    ('o', "--output"),
    ('e', "--error"),
    ('D', "--chdir"),
    ('t', "--time"),
    ('G', "--gpus"),
    ('a', "--array"),
    ('H', "--hold"),
    ('W', "--wait"),
];

/// The option of Kiln's that `arg` sets, also written short (`-t5`) or abbreviated (`--out=`,
/// which sbatch accepts for `--output`), with why Kiln sets it.
fn kiln_option(arg: &str) -> Option<(&'static str, &'static str)> {
    let why = |long: &str| {
        KILN_SBATCH_OPTIONS
            .iter()
            .find(|(o, _)| *o == long)
            .copied()
    };
    if let Some(long) = arg.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        if name.is_empty() {
            return None;
        }
        return KILN_SBATCH_OPTIONS
            .iter()
            .find(|(o, _)| o[2..].starts_with(name))
            .copied();
    }
    let short = arg.strip_prefix('-')?.chars().next()?;
    KILN_SBATCH_SHORT
        .iter()
        .find(|(c, _)| *c == short)
        .and_then(|(_, long)| why(long))
}

/// The launcher of the workspace whose launchers file is `path` (absent: local).
pub fn read_launcher(path: &Path) -> Result<Launcher> {
    let text = match kiln_workflow::limits::read_text(path, 64 * 1024) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Launcher::Local),
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

fn parse(text: &str) -> std::result::Result<Launcher, String> {
    let file: LaunchersFile = if text.trim().is_empty() {
        LaunchersFile::default()
    } else {
        kiln_workflow::limits::check_yaml(text)?;
        serde_norway::from_str(text).map_err(|e| {
            format!("{e} (keys: `launcher: local|slurm`, `slurm: {{partition, account, sbatch_args, bin_dir}}`)")
        })?
    };
    let slurm = file.slurm.unwrap_or_default();
    let word = |key: &str, v: &Option<String>| -> std::result::Result<Option<String>, String> {
        match v {
            Some(s) if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                Err(format!("`slurm.{key}` must be one word, got {s:?}"))
            }
            other => Ok(other.clone()),
        }
    };
    let partition = word("partition", &slurm.partition)?;
    let account = word("account", &slurm.account)?;
    for (i, arg) in slurm.sbatch_args.iter().enumerate() {
        if !arg.starts_with('-') || arg.chars().any(|c| c.is_control()) {
            return Err(format!(
                "`slurm.sbatch_args[{i}]` ({arg:?}) is not an sbatch option: write options as \
                 `--name=value`"
            ));
        }
        if let Some((name, why)) = kiln_option(arg) {
            return Err(format!(
                "`slurm.sbatch_args[{i}]` ({arg:?}): Kiln sets {name} itself ({why}); remove it"
            ));
        }
    }
    if let Some(dir) = &slurm.bin_dir
        && !dir.is_absolute()
    {
        return Err(format!(
            "`slurm.bin_dir` must be an absolute path, got {}",
            dir.display()
        ));
    }
    Ok(match file.launcher {
        Kind::Local => Launcher::Local,
        Kind::Slurm => Launcher::Slurm(SlurmOptions {
            partition,
            account,
            sbatch_args: slurm.sbatch_args,
            bin_dir: slurm.bin_dir,
            ..Default::default()
        }),
    })
}

/// The launcher for one attempt of a step: `base` with the step's GPUs, time limit and a job
/// name that says which run and step it is.
pub fn for_step(
    base: &Launcher,
    run_id: &str,
    step_id: &str,
    gpus: u32,
    timeout: Option<std::time::Duration>,
) -> Launcher {
    match base {
        Launcher::Local => Launcher::Local,
        Launcher::Slurm(options) => Launcher::Slurm(SlurmOptions {
            gpus,
            time_limit: timeout,
            name: format!("kiln-{}-{step_id}", &run_id[..run_id.len().min(8)]),
            ..options.clone()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_or_empty_is_local() {
        assert_eq!(parse("").unwrap(), Launcher::Local);
        assert_eq!(parse("launcher: local").unwrap(), Launcher::Local);
        assert_eq!(
            read_launcher(Path::new("/nonexistent/launchers.yaml")).unwrap(),
            Launcher::Local
        );
    }

    #[test]
    fn slurm_takes_its_options() {
        let l = parse(
            "launcher: slurm\nslurm: {partition: gpu, account: vision, sbatch_args: [--qos=high]}",
        )
        .unwrap();
        let Launcher::Slurm(o) = l else {
            panic!("{l:?}")
        };
        assert_eq!(o.partition.as_deref(), Some("gpu"));
        assert_eq!(o.account.as_deref(), Some("vision"));
        assert_eq!(o.sbatch_args, ["--qos=high"]);
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = parse("launcher: kubernetes").unwrap_err();
        assert!(e.contains("kubernetes") && e.contains("line 1"), "{e}");
        let e = parse("launcher: slurm\nslurm: {partitoin: gpu}").unwrap_err();
        assert!(e.contains("partitoin"), "{e}");
        let e = parse("launcher: slurm\nslurm: {sbatch_args: [--time=10]}").unwrap_err();
        assert!(e.contains("sbatch_args[0]") && e.contains("--time"), "{e}");
        for sneaky in [
            "-Jevil",
            "-t1",
            "--out=/tmp/x",
            "--gpus-per-node=2",
            "-H",
            "--hold",
        ] {
            let e = parse(&format!(
                "launcher: slurm\nslurm: {{sbatch_args: [{sneaky}]}}"
            ))
            .unwrap_err();
            assert!(e.contains("Kiln sets"), "{sneaky}: {e}");
        }
        assert!(parse("launcher: slurm\nslurm: {sbatch_args: [--qos=high, -Cgpu]}").is_ok());
        let e = parse("launcher: slurm\nslurm: {sbatch_args: [qos]}").unwrap_err();
        assert!(e.contains("not an sbatch option"), "{e}");
        let e = parse("launcher: slurm\nslurm: {partition: 'a b'}").unwrap_err();
        assert!(e.contains("slurm.partition"), "{e}");
        let e = parse("launcher: slurm\nslurm: {bin_dir: bin}").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }
}
