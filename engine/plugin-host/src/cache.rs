//! On-disk cache of compiled components.
//!
//! `Component::deserialize` is unsafe: it trusts its input. We only ever load files this engine
//! wrote, named by the SHA-256 of the component bytes and the engine's precompile compatibility
//! hash (which covers wasmtime's version and the engine configuration); a mismatch simply misses the cache and recompiles.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

fn cache_path(engine: &wasmtime::Engine, cache_dir: &Path, digest: &str) -> PathBuf {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let compat = h.finish();
    cache_dir.join(format!("{digest}-{compat:016x}.cwasm"))
}

/// Load the compiled form of `bytes` from the cache, or compile and store it.
/// Returns the component and whether it came from the cache.
pub(crate) fn load_or_compile(
    engine: &wasmtime::Engine,
    cache_dir: &Path,
    digest: &str,
    bytes: &[u8],
) -> Result<(Component, bool), String> {
    let path = cache_path(engine, cache_dir, digest);
    if path.exists() {
        // SAFETY: the file is named by the content hash and engine compatibility hash and was
        // written by `Component::serialize` of this engine configuration (see module docs).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok((c, true)),
            Err(e) => tracing::warn!(
                "discarding unusable compiled plugin {}: {e}",
                path.display()
            ),
        }
    }
    let component = Component::from_binary(engine, bytes).map_err(|e| format!("{e:#}"))?;
    if let Err(e) = store(&component, &path) {
        tracing::warn!("cannot cache compiled plugin at {}: {e}", path.display());
    }
    Ok((component, false))
}

fn store(component: &Component, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = component
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
