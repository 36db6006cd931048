//! `builtin/extract-release`: unpack `projects/<project>/releases/<zip>` into
//! `projects/<project>/training_data/<slug>/`.
//!
//! Safe against hostile archives: entries with absolute paths, `..`, symlinks, too many entries
//! or too many bytes (declared or actual) are rejected with the entry named. Extraction happens
//! in a temporary sibling directory that is renamed into place only when complete, so a failure
//! never leaves a half-written dataset. Idempotent: a marker records the archive's SHA-256, and
//! extracting the same archive again does no work.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::dataset::{self, Layout};
use super::{BuiltinCtx, input_str, opt_str};
use crate::workspace::check_name;
use crate::{Error, Result, ownership};

/// Most entries an archive may hold.
pub const MAX_ENTRIES: usize = 200_000;
/// Most bytes an archive may expand to.
pub const MAX_TOTAL_BYTES: u64 = 20 * 1024 * 1024 * 1024;

const MARKER: &str = ".kiln-release.json";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    release: String,
    sha256: String,
    files: usize,
    bytes: u64,
}

pub(crate) async fn run(ctx: &BuiltinCtx<'_>) -> Result<Value> {
    let project = input_str(ctx.inputs, "project")?;
    let release = input_str(ctx.inputs, "release")?;
    let releases = ctx.ws.releases_dir(project)?;
    let rel = Path::new(release);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Error::Input(format!(
            "input `release`: `{release}` must be a file name under {} (no absolute paths or `..`)",
            releases.display()
        )));
    }
    let zip_path = releases.join(rel);
    let default_slug = rel
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let slug = opt_str(ctx.inputs, "slug")?.map_or(default_slug, str::to_owned);
    check_name("slug", &slug)?;
    // Hashing and unzipping are long blocking work: they run on the blocking pool and stop
    // (cleaning up) when this step is cancelled or times out, which drops this future.
    let stop = Stop::default();
    let _stop_on_drop = stop.on_drop();
    let sha = {
        let (zip_path, stop) = (zip_path.clone(), stop.clone());
        blocking(move || sha256_file(&zip_path, &stop)).await?
    }
    .map_err(|e| {
        Error::Input(format!(
            "input `release`: cannot read {}: {e}; put the release ZIP there first",
            zip_path.display()
        ))
    })?;
    let data_root = ctx.ws.training_data_dir(project)?;
    let target = data_root.join(&slug);

    // One extraction of a slug at a time, across runs and processes: a second run waits, then
    // finds the marker and reuses the dataset instead of swapping it under the first run's feet.
    let lock = ownership::dataset_lock(ctx.ws, project, &slug).await?;
    let marker = read_marker(&target);
    // An extraction outside a run (the API's extract-release) records no user.
    let record_use = || async {
        match ctx.run_id {
            "" => Ok(()),
            run => ctx.store.use_dataset(run, project, &slug, &sha).await,
        }
    };
    if let Some(marker) = &marker
        && marker.sha256 == sha
    {
        record_use().await?;
        ctx.log(&format!(
            "release {release} already extracted in {}",
            ctx.ws.display(&target)
        ));
        return outputs(&target, &slug, &sha, marker.files, false, &stop).await;
    }
    // A different release (or files Kiln did not extract) is there: replace it only when no
    // other run used it.
    if target.exists() {
        let Some(marker) = &marker else {
            return Err(Error::Conflict(format!(
                "{} exists but was not extracted by Kiln; move it away, or give this release \
                 another `slug`",
                ctx.ws.display(&target)
            )));
        };
        let others: Vec<String> = ctx
            .store
            .dataset_users(project, &slug)
            .await?
            .into_iter()
            .filter(|u| u.run_id != ctx.run_id)
            .map(|u| u.run_id)
            .collect();
        if !others.is_empty() {
            return Err(Error::Conflict(format!(
                "{} holds release {} (SHA-256 {}), used by run(s) {}; give this release its own \
                 `slug` (e.g. `slug: {slug}-2`), or delete those runs first",
                ctx.ws.display(&target),
                marker.release,
                &marker.sha256[..12.min(marker.sha256.len())],
                others.join(", ")
            )));
        }
    }
    record_use().await?;
    let files = {
        let (release, slug, target, sha, stop) = (
            release.to_owned(),
            slug.clone(),
            target.clone(),
            sha.clone(),
            stop.clone(),
        );
        // The lock goes with the work: it is released only when the extraction has ended.
        blocking(move || {
            let _lock = lock;
            replace_with(&zip_path, &data_root, &target, &slug, &release, &sha, &stop)
        })
        .await??
    };
    ctx.log(&format!(
        "extracted {files} files of {release} into {}",
        ctx.ws.display(&target)
    ));
    outputs(&target, &slug, &sha, files, true, &stop).await
}

/// Extracts into a temporary sibling, then swaps it for `target` once complete.
fn replace_with(
    zip_path: &Path,
    data_root: &Path,
    target: &Path,
    slug: &str,
    release: &str,
    sha: &str,
    stop: &Stop,
) -> Result<usize> {
    std::fs::create_dir_all(data_root).map_err(|e| Error::io("creating", data_root, e))?;
    // Leftovers of an extraction whose engine was killed: under the slug's lock, nobody else
    // is writing them.
    let leftovers = [format!(".{slug}.extracting-"), format!(".{slug}.old-")];
    if let Ok(entries) = std::fs::read_dir(data_root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if leftovers
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()))
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let tmp = data_root.join(format!(".{slug}.extracting-{}", uuid::Uuid::new_v4()));
    let result = extract_into(zip_path, &tmp, stop).and_then(|(files, bytes)| {
        stop.check()?;
        let marker = Marker {
            release: release.to_owned(),
            sha256: sha.to_owned(),
            files,
            bytes,
        };
        let text = serde_json::to_vec_pretty(&marker).unwrap_or_default();
        std::fs::write(tmp.join(MARKER), text).map_err(|e| Error::io("writing", &tmp, e))?;
        Ok(files)
    });
    let files = match result {
        Ok(files) => files,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // Replace an older extraction (another archive under the same slug) only when complete.
    if target.exists() {
        let old = data_root.join(format!(".{slug}.old-{}", uuid::Uuid::new_v4()));
        std::fs::rename(target, &old).map_err(|e| Error::io("moving aside", target, e))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(&tmp, target).map_err(|e| Error::io("renaming into", target, e))?;
    Ok(files)
}

/// Whether `release` of `project` is extracted (its dataset folder records this very archive);
/// returns the dataset folder and, for a YOLO dataset, its data.yaml when it is.
pub fn extraction_status(
    ws: &crate::Workspace,
    project: &str,
    release: &str,
) -> Result<Option<(PathBuf, Option<PathBuf>)>> {
    let zip = ws.releases_dir(project)?.join(release);
    let stem = Path::new(release)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    check_name("slug", &stem)?;
    let target = ws.training_data_dir(project)?.join(stem);
    let Some(marker) = read_marker(&target) else {
        return Ok(None);
    };
    let sha = sha256_file(&zip, &Stop::default()).map_err(|e| Error::io("reading", &zip, e))?;
    if marker.sha256 != sha {
        return Ok(None);
    }
    let data_yaml = dataset::data_yaml_of(&target);
    Ok(Some((target, data_yaml)))
}

/// The step's outputs: the dataset's layout, splits and classes (read on the blocking pool,
/// stopped with the step), and what the extraction did.
async fn outputs(
    target: &Path,
    slug: &str,
    sha: &str,
    files: usize,
    extracted: bool,
    stop: &Stop,
) -> Result<Value> {
    let dataset = {
        let (target, stop) = (target.to_owned(), stop.clone());
        blocking(move || dataset::inspect(&target, |f| stop.reader(f))).await??
    };
    let path = |p: &Path| p.display().to_string();
    let mut out = json!({
        "layout": dataset.layout.as_str(),
        "dataset_dir": path(target),
        "class_names": dataset.class_names,
        "nc": dataset.class_names.len(),
        "splits": dataset.splits.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "slug": slug,
        "files": files,
        "release_sha256": sha,
        "extracted": extracted,
    });
    if let Some(data_yaml) = &dataset.data_yaml {
        out["data_yaml"] = json!(path(data_yaml));
    }
    if dataset.layout == Layout::Coco {
        let coco = || {
            dataset
                .splits
                .iter()
                .filter_map(|s| Some((s, s.coco.as_ref()?)))
        };
        out["data_root"] = json!(path(&dataset.root));
        out["annotations"] = coco()
            .map(|(s, c)| (s.name.clone(), json!(path(&c.annotations))))
            .collect();
        out["images"] = coco()
            .map(|(s, c)| (s.name.clone(), json!(path(&c.images_dir))))
            .collect();
        out["counts"] = coco()
            .map(|(s, c)| {
                (
                    s.name.clone(),
                    json!({"images": c.images, "boxes": c.boxes}),
                )
            })
            .collect();
    }
    Ok(out)
}

/// The release file that Kiln extracted into `projects/<project>/training_data/<slug>/`, if it
/// did (its marker names it).
pub fn release_of(ws: &crate::Workspace, project: &str, slug: &str) -> Result<Option<String>> {
    check_name("slug", slug)?;
    let target = ws.training_data_dir(project)?.join(slug);
    Ok(read_marker(&target).map(|m| m.release))
}

fn read_marker(target: &Path) -> Option<Marker> {
    let text = std::fs::read(target.join(MARKER)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn sha256_file(path: &Path, stop: &Stop) -> std::io::Result<String> {
    let mut f = stop.reader(File::open(path)?);
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Tells blocking work to stop: set when the step's future is dropped (cancel, timeout).
#[derive(Clone, Default)]
struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Stop {
    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn check(&self) -> Result<()> {
        if self.is_set() {
            Err(Error::Input(STOPPED.into()))
        } else {
            Ok(())
        }
    }

    /// A guard that sets the flag when dropped.
    fn on_drop(&self) -> impl Drop + use<> {
        struct SetOnDrop(Stop);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                (self.0).0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        SetOnDrop(self.clone())
    }

    /// `inner`, failing its next read once the flag is set.
    fn reader<R: Read>(&self, inner: R) -> impl Read {
        struct Stoppable<R>(R, Stop);
        impl<R: Read> Read for Stoppable<R> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.1.is_set() {
                    return Err(std::io::Error::other(STOPPED));
                }
                self.0.read(buf)
            }
        }
        Stoppable(inner, self.clone())
    }
}

const STOPPED: &str = "stopped: the step was cancelled or timed out";

/// Runs blocking work on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Input(format!("extraction failed: {e}")))
}

/// Extract every entry of `zip_path` below `dest`; returns (files, bytes).
fn extract_into(zip_path: &Path, dest: &Path, stop: &Stop) -> Result<(usize, u64)> {
    let bad = |msg: String| Error::Input(format!("release {}: {msg}", zip_path.display()));
    let file = File::open(zip_path).map_err(|e| Error::io("opening", zip_path, e))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a readable ZIP archive: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(bad(format!(
            "it has {} entries, more than the {MAX_ENTRIES} allowed",
            archive.len()
        )));
    }
    // Check every entry before writing anything.
    let mut declared: u64 = 0;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| bad(format!("entry {i} is unreadable: {e}")))?;
        let name = entry.name().to_owned();
        safe_relative(&name).ok_or_else(|| {
            bad(format!(
                "entry `{name}` has an absolute path or `..`; refusing to extract outside the dataset folder"
            ))
        })?;
        if entry.is_symlink() {
            return Err(bad(format!(
                "entry `{name}` is a symbolic link; links are not allowed"
            )));
        }
        declared = declared.saturating_add(entry.size());
    }
    if declared > MAX_TOTAL_BYTES {
        return Err(bad(format!(
            "it expands to {declared} bytes, more than the {MAX_TOTAL_BYTES} allowed"
        )));
    }
    std::fs::create_dir_all(dest).map_err(|e| Error::io("creating", dest, e))?;
    let (mut files, mut written) = (0usize, 0u64);
    for i in 0..archive.len() {
        stop.check()?;
        let mut entry = archive
            .by_index(i)
            .map_err(|e| bad(format!("entry {i} is unreadable: {e}")))?;
        let name = entry.name().to_owned();
        let rel = safe_relative(&name).ok_or_else(|| bad(format!("entry `{name}` is unsafe")))?;
        let out = dest.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(|e| Error::io("creating", &out, e))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        }
        let mut f = File::create(&out).map_err(|e| Error::io("creating", &out, e))?;
        // Never trust the declared size: stop at the remaining budget.
        let budget = MAX_TOTAL_BYTES - written;
        let n = std::io::copy(&mut stop.reader((&mut entry).take(budget + 1)), &mut f)
            .map_err(|e| bad(format!("entry `{name}` cannot be decompressed: {e}")))?;
        if n > budget {
            return Err(bad(format!(
                "it expands to more than the {MAX_TOTAL_BYTES} bytes allowed (at entry `{name}`)"
            )));
        }
        f.flush().map_err(|e| Error::io("writing", &out, e))?;
        written += n;
        files += 1;
    }
    Ok((files, written))
}

/// The entry name as a relative path of normal components, or None when unsafe.
fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.contains('\0') || name.contains('\\') {
        return None;
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_entry_names_are_refused() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a\\..\\x", "", "./"] {
            assert!(safe_relative(bad).is_none(), "{bad:?}");
        }
        assert_eq!(
            safe_relative("train/images/a.jpg"),
            Some(PathBuf::from("train/images/a.jpg"))
        );
        assert_eq!(
            safe_relative("./data.yaml"),
            Some(PathBuf::from("data.yaml"))
        );
    }
}
