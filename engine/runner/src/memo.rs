//! Memoization keys: a step that opts in (`cache: true`) reuses the outputs of an earlier step
//! with the same key. The key covers what could change the result: the plugin's digest (or the
//! builtin and the engine version), the action, the resolved inputs, and the SHA-256 of every
//! input that names an existing file.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

pub fn cache_key(
    implementation: &str,
    action: Option<&str>,
    inputs: &Value,
    root: &Path,
) -> String {
    let mut files = BTreeMap::new();
    collect_files(inputs, root, &mut files);
    let material = serde_json::json!({
        "implementation": implementation,
        "action": action,
        "inputs": inputs,
        "files": files,
    });
    hex::encode(Sha256::digest(material.to_string().as_bytes()))
}

fn collect_files(v: &Value, root: &Path, out: &mut BTreeMap<String, String>) {
    match v {
        Value::String(s) if s.len() < 4096 => {
            let p = Path::new(s);
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                root.join(p)
            };
            if p.is_file()
                && let Ok(mut f) = std::fs::File::open(&p)
            {
                let mut h = Sha256::new();
                if std::io::copy(&mut f, &mut h).is_ok() {
                    out.insert(s.clone(), hex::encode(h.finalize()));
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_files(i, root, out)),
        Value::Object(map) => map.values().for_each(|i| collect_files(i, root, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_contents_are_part_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one").unwrap();
        let inputs = serde_json::json!({"f": "a.txt", "n": 1});
        let k1 = cache_key("p@sha256:x", Some("act"), &inputs, dir.path());
        assert_eq!(
            k1,
            cache_key("p@sha256:x", Some("act"), &inputs, dir.path())
        );
        std::fs::write(dir.path().join("a.txt"), "two").unwrap();
        assert_ne!(
            k1,
            cache_key("p@sha256:x", Some("act"), &inputs, dir.path())
        );
        assert_ne!(
            cache_key("p@sha256:x", Some("act"), &inputs, dir.path()),
            cache_key("p@sha256:y", Some("act"), &inputs, dir.path())
        );
    }
}
