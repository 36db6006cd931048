//! `kiln init [DIR]`: a working workspace from the `kiln` binary alone: `configs/` (grants,
//! roles, the frameworks' base configs), `workflows/` (the reference workflows and the demo
//! releases' makers), the demo releases under `projects/demo/releases/`, and the bundled plugin
//! components in `.kiln/plugins/` (built from this repository by `build.rs`).

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};

use crate::exit::Exit;
use crate::output::{errln, outln};

static CONFIGS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../configs");
static WORKFLOWS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../workflows");

/// The plugin components bundled into this binary (empty when it was built without the
/// wasm32-wasip2 target; see build.rs).
pub const BUNDLED_PLUGINS: &[(&str, &[u8])] = &[
    (
        "ultralytics",
        include_bytes!(concat!(env!("OUT_DIR"), "/bundled/ultralytics.wasm")),
    ),
    (
        "mmdetection",
        include_bytes!(concat!(env!("OUT_DIR"), "/bundled/mmdetection.wasm")),
    ),
];

/// What `kiln init` writes at the top of a workspace.
const TOP_LEVEL: &[&str] = &["configs", "workflows", "projects", ".kiln", ".gitignore"];

/// The demo releases, copied from `workflows/data/` into `projects/demo/releases/`.
const DEMO_RELEASES: &[&str] = &["demo-release.zip", "demo-coco-release.zip"];

const GITIGNORE: &str = "# Kiln's own state (database, compiled plugins, run logs, locks); the plugins are kept.\n\
.kiln/*\n!.kiln/plugins/\n# Trainers' Python environments.\n.venv/\n.venv-*/\n";

fn write(root: &Path, rel: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(&path, bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn write_dir(root: &Path, under: &Path, dir: &Dir<'_>) -> anyhow::Result<usize> {
    let mut written = 0;
    for file in dir.files() {
        write(root, &under.join(file.path()), file.contents())?;
        written += 1;
    }
    for sub in dir.dirs() {
        written += write_dir(root, under, sub)?;
    }
    Ok(written)
}

pub fn init(dir: Option<PathBuf>) -> anyhow::Result<Exit> {
    let root = dir.unwrap_or_else(|| PathBuf::from("."));
    if root.exists() && !root.is_dir() {
        errln!(
            "error: {} is a file; `kiln init` creates a workspace in an empty or new directory",
            root.display()
        );
        return Ok(Exit::InvalidInput);
    }
    // What an interrupted `kiln init` left (its staging folder, and what it had moved out of
    // it, nothing else) is started over.
    let staging = root.join(".kiln-init");
    let only_init_left = std::fs::read_dir(&root).is_ok_and(|entries| {
        entries.flatten().all(|e| {
            let name = e.file_name();
            name == ".kiln-init" || TOP_LEVEL.iter().any(|t| name == *t)
        })
    });
    if staging.is_dir() && only_init_left {
        errln!(
            "a previous `kiln init` of {} was interrupted; starting over",
            root.display()
        );
        for name in TOP_LEVEL.iter().chain(&[".kiln-init"]) {
            let path = root.join(name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot remove {}: {e}", path.display()),
            }
        }
    }
    match std::fs::read_dir(&root) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                errln!(
                    "error: {} is not empty; `kiln init` creates a workspace in an empty or new \
                     directory (name another one: `kiln init DIR`)",
                    root.display()
                );
                return Ok(Exit::InvalidInput);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            errln!("error: cannot read {}: {e}", root.display());
            return Ok(Exit::InvalidInput);
        }
    }
    if let Some((name, _)) = BUNDLED_PLUGINS.iter().find(|(_, bytes)| bytes.is_empty()) {
        errln!(
            "error: this kiln was built without its bundled plugins ({name} is missing: the \
             wasm32-wasip2 target was not installed when it was built); run `rustup target add \
             wasm32-wasip2` and build kiln again"
        );
        return Ok(Exit::Failure);
    }
    let created = !root.exists();
    std::fs::create_dir_all(&root)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", root.display()))?;
    // Written into a staging folder, then moved into place: a failure (a full disk) leaves the
    // directory as it was, not half a workspace.
    let written = stage(&staging).and_then(|counts| {
        for entry in std::fs::read_dir(&staging)? {
            let entry = entry?;
            std::fs::rename(entry.path(), root.join(entry.file_name()))?;
        }
        std::fs::remove_dir(&staging)?;
        Ok(counts)
    });
    let (configs, workflows) = match written {
        Ok(counts) => counts,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            if created {
                let _ = std::fs::remove_dir(&root);
            }
            errln!(
                "error: cannot create the workspace in {}: {}",
                root.display(),
                crate::output::error_chain(&e)
            );
            return Ok(Exit::Failure);
        }
    };
    print_summary(&root, configs, workflows);
    Ok(Exit::Success)
}

/// Writes the workspace's files under `root`; returns how many configs and workflow files.
fn stage(root: &Path) -> anyhow::Result<(usize, usize)> {
    let configs = write_dir(root, Path::new("configs"), &CONFIGS)?;
    let workflows = write_dir(root, Path::new("workflows"), &WORKFLOWS)?;
    for release in DEMO_RELEASES {
        let file = WORKFLOWS
            .get_file(Path::new("data").join(release))
            .ok_or_else(|| anyhow::anyhow!("the demo release {release} is not bundled"))?;
        write(
            root,
            &Path::new("projects/demo/releases").join(release),
            file.contents(),
        )?;
    }
    for (name, bytes) in BUNDLED_PLUGINS {
        write(
            root,
            &Path::new(".kiln/plugins").join(format!("{name}.wasm")),
            bytes,
        )?;
    }
    write(root, Path::new(".gitignore"), GITIGNORE.as_bytes())?;
    Ok((configs, workflows))
}

fn print_summary(root: &Path, configs: usize, workflows: usize) {
    let shown = root.display();
    let path = root.display().to_string();
    // The `cd` line is for copying into a shell: quoted as one.
    let cd = shlex::try_quote(&path).map_or_else(|_| path.clone(), |q| q.into_owned());
    outln!("created a Kiln workspace in {shown}:");
    outln!(
        "  configs/                  plugin grants (plugins.yaml), API roles, launcher (launchers.yaml), base training configs ({configs} files)"
    );
    outln!(
        "  workflows/                the reference workflows, and the demo releases' makers ({workflows} files)"
    );
    outln!("  projects/demo/releases/   {}", DEMO_RELEASES.join(", "));
    outln!(
        "  .kiln/plugins/            {} (bundled with kiln {})",
        BUNDLED_PLUGINS
            .iter()
            .map(|(n, _)| format!("{n}.wasm"))
            .collect::<Vec<_>>()
            .join(", "),
        env!("CARGO_PKG_VERSION")
    );
    outln!("next: the trainer, then the demo training (2 epochs of a tiny YOLO on CPU):");
    outln!("  cd {cd}");
    outln!(
        "  python3 -m venv .venv && .venv/bin/pip install ultralytics   # kiln finds .venv/bin/yolo"
    );
    outln!(
        "  kiln run workflows/ultralytics-detect.yaml -p project=demo -p release=demo-release.zip \\\n      \
         -p training_name=first -p mode=developer \\\n      \
         -p overrides='{{epochs: 2, imgsz: 64, batch: 4, device: cpu, workers: 0}}'"
    );
    outln!("  kiln models list --project demo");
}
