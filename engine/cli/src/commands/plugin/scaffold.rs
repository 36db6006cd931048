//! `kiln plugin new NAME`: a plugin crate that builds to a component and loads without edits.
//!
//! The crate is standalone (its own `[workspace]`) and carries, under `vendor/`, the SDK, the
//! test harness and the WIT of this kiln (embedded in the binary from `plugins/sdk`,
//! `plugins/testing` and `plugins/wit/<version>`), plus this repository's `Cargo.lock`, so it
//! builds with the dependency versions Kiln was tested with, offline once they are fetched.

use std::path::Path;

use include_dir::{Dir, include_dir};
use kiln_plugin_host::INTERFACE_VERSION;

use crate::exit::Exit;
use crate::output::{errln, outln};

static SDK_SRC: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../plugins/sdk/src");
static TESTING_SRC: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../plugins/testing/src");
static WIT: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../plugins/wit/0.2.0");
const LOCK: &str = include_str!("../../../../../Cargo.lock");

const CARGO_TOML: &str = include_str!("template/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("template/lib.rs.tmpl");
const COMPONENT_RS: &str = include_str!("template/component.rs.tmpl");
const README: &str = include_str!("template/README.md.tmpl");
const GITIGNORE: &str = include_str!("template/gitignore.tmpl");
const SDK_TOML: &str = include_str!("template/sdk.Cargo.toml.tmpl");
const TESTING_TOML: &str = include_str!("template/testing.Cargo.toml.tmpl");

fn fill(template: &str, name: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{crate}}", &format!("kiln-plugin-{name}"))
        .replace("{{interface}}", INTERFACE_VERSION)
        .replace("{{kiln_version}}", env!("CARGO_PKG_VERSION"))
}

fn write(root: &Path, rel: impl AsRef<Path>, text: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn write_dir(root: &Path, under: &str, dir: &Dir<'_>) -> anyhow::Result<()> {
    for file in dir.files() {
        write(root, Path::new(under).join(file.path()), file.contents())?;
    }
    for sub in dir.dirs() {
        write_dir(root, under, sub)?;
    }
    Ok(())
}

pub fn new(name: &str, dir: &Path) -> anyhow::Result<Exit> {
    if let Err(e) = kiln_plugin_host::check_plugin_name(name) {
        errln!("error: {e}");
        return Ok(Exit::InvalidInput);
    }
    // The crate is `kiln-plugin-NAME`: these two are the vendored crates' names.
    if matches!(name, "sdk" | "test") {
        errln!(
            "error: a plugin called `{name}` would be the crate kiln-plugin-{name}, the name of \
             the SDK or test harness it vendors; choose another name"
        );
        return Ok(Exit::InvalidInput);
    }
    if dir.exists() && !dir.is_dir() {
        errln!("error: --dir {} is not a folder", dir.display());
        return Ok(Exit::InvalidInput);
    }
    let root = dir.join(name);
    if root.exists() {
        errln!(
            "error: {} already exists; `kiln plugin new` never writes over files (choose another \
             --dir or name)",
            root.display()
        );
        return Ok(Exit::InvalidInput);
    }
    write(&root, "Cargo.toml", fill(CARGO_TOML, name))?;
    write(&root, "Cargo.lock", LOCK)?;
    write(&root, "src/lib.rs", fill(LIB_RS, name))?;
    write(&root, "tests/component.rs", fill(COMPONENT_RS, name))?;
    write(&root, "README.md", fill(README, name))?;
    write(&root, ".gitignore", GITIGNORE)?;
    write(
        &root,
        "vendor/kiln-plugin-sdk/Cargo.toml",
        fill(SDK_TOML, name),
    )?;
    write_dir(&root, "vendor/kiln-plugin-sdk/src", &SDK_SRC)?;
    write(
        &root,
        "vendor/kiln-plugin-test/Cargo.toml",
        fill(TESTING_TOML, name),
    )?;
    write_dir(&root, "vendor/kiln-plugin-test/src", &TESTING_SRC)?;
    // The SDK and the harness read `../wit/<version>`, as in Kiln's repository.
    write_dir(&root, &format!("vendor/wit/{INTERFACE_VERSION}"), &WIT)?;
    outln!(
        "created plugin `{name}` (kiln:plugin@{INTERFACE_VERSION}) in {}",
        root.display()
    );
    outln!("next:");
    outln!(
        "  cd {} && cargo test          # unit and component tests",
        root.display()
    );
    outln!(
        "  kiln plugin build {}         # from your workspace (or with --workspace): build and install",
        root.display()
    );
    outln!("  grant it `echo` in configs/plugins.yaml: plugins: {{{name}: {{programs: [echo]}}}}");
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(kiln_plugin_host::check_plugin_name("greeter").is_ok());
        assert!(kiln_plugin_host::check_plugin_name("yolo-v2").is_ok());
        for bad in [
            "",
            "Greeter",
            "2x",
            "a_b",
            "a--b",
            "a-",
            "builtin",
            "../x",
            &"a".repeat(65),
        ] {
            assert!(kiln_plugin_host::check_plugin_name(bad).is_err(), "{bad}");
        }
    }

    /// The vendored crates' manifests name the versions the workspace builds with.
    #[test]
    fn vendored_manifests_match_the_workspace() {
        let workspace = include_str!("../../../../../Cargo.toml");
        for template in [SDK_TOML, TESTING_TOML] {
            let deps = template.split("[dependencies]").nth(1).unwrap();
            for line in deps.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    workspace.lines().any(|w| w.trim() == line.trim()),
                    "`{line}` is not in the workspace's Cargo.toml"
                );
            }
        }
        for (crate_toml, template) in [
            (
                include_str!("../../../../../plugins/sdk/Cargo.toml"),
                SDK_TOML,
            ),
            (
                include_str!("../../../../../plugins/testing/Cargo.toml"),
                TESTING_TOML,
            ),
        ] {
            let deps: Vec<&str> = crate_toml
                .split("[dependencies]")
                .nth(1)
                .unwrap()
                .lines()
                .filter_map(|l| l.split_once(".workspace").map(|(n, _)| n.trim()))
                .collect();
            for dep in deps {
                assert!(
                    template.lines().any(|l| l.starts_with(&format!("{dep} ="))),
                    "the vendored manifest lacks {dep}"
                );
            }
        }
    }
}
