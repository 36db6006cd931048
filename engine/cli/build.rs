//! Bundles what `kiln init` writes into the binary: the plugin components built from this
//! repository (`plugins/ultralytics`, `plugins/mmdetection`) for `wasm32-wasip2` with the
//! `plugin` profile, exactly as `scripts/build-plugins.sh` builds them. `src/commands/init.rs`
//! embeds them from `$OUT_DIR/bundled/`, beside `configs/` and `workflows/` (include_dir).
//!
//! The nested `cargo build` uses the same target directory under its own profile, so it reuses
//! what `scripts/build-plugins.sh` built and never waits for the lock of the build running this
//! script. Without the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`) the binary is
//! built without plugins, with a warning; `kiln init` then says so. A plugin that does not
//! compile fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, file name in the workspace's plugins dir) of each bundled plugin.
const BUNDLED: &[(&str, &str)] = &[
    ("kiln-plugin-ultralytics", "ultralytics"),
    ("kiln-plugin-mmdetection", "mmdetection"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../..");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    pack_relative_relocations();
    for watched in ["plugins", "configs", "workflows", "Cargo.lock"] {
        println!("cargo:rerun-if-changed=../../{watched}");
    }
    let dest = out.join("bundled");
    std::fs::create_dir_all(&dest).expect("create OUT_DIR/bundled");
    // The target directory is the ancestor of OUT_DIR that cargo marked with CACHEDIR.TAG.
    let target_dir = out
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_owned)
        .unwrap_or_else(|| out.join("plugins-target"));

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "plugin"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _) in BUNDLED {
        build.args(["-p", package]);
    }
    // What the outer build set for its own crates must not leak into this one (clippy's
    // wrapper, the flags cargo encoded for this script's target, another target). RUSTFLAGS
    // stays: the components are then built exactly as `scripts/build-plugins.sh` builds them
    // from the same shell.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CLIPPY_ARGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        build.env_remove(var);
    }
    let output = build
        .output()
        .expect("run cargo to build the bundled plugins");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let bundled = if output.status.success() {
        true
    } else if stderr.contains("wasm32-wasip2") && stderr.contains("target may not be installed") {
        println!(
            "cargo:warning=kiln is built without its bundled plugins (`kiln init` will say so): \
             the wasm32-wasip2 target is missing; run `rustup target add wasm32-wasip2` and build again"
        );
        false
    } else {
        panic!("building the bundled plugins failed:\n{stderr}");
    };
    for (package, name) in BUNDLED {
        let file = dest.join(format!("{name}.wasm"));
        if bundled {
            let built = target_dir
                .join("wasm32-wasip2/plugin")
                .join(format!("{}.wasm", package.replace('-', "_")));
            std::fs::copy(&built, &file)
                .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
        } else {
            // Empty: `kiln init` refuses to write a plugin it does not have.
            std::fs::write(&file, b"").expect("write the empty stand-in");
        }
    }
}

/// Links `kiln` with its relative relocations packed (`DT_RELR`): the ~29,000 pointers the
/// loader adjusts at every start of a position-independent binary are then read from a table of
/// a few KB instead of 700 KB (benches/README.md, "Packed relocations"). GNU ld (2.38 and
/// later) and lld (15 and later) pack them only when the C library supports it (glibc 2.36 and
/// later); an older ld ignores the option with a warning.
fn pack_relative_relocations() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
