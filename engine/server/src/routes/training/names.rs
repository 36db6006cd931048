//! The names and release paths a training request gives, checked to be plain before they touch
//! the file system.

use axum::http::StatusCode;

use kiln_runner::workspace::check_name;

use crate::problem::{ApiError, ApiResult};

/// `name` must be a plain name (see `kiln_runner::workspace::check_name`).
pub(super) fn plain_name(what: &str, name: &str, status: StatusCode) -> ApiResult<()> {
    check_name(what, name).map_err(|e| ApiError::new(status, "invalid_name", e.to_string()))
}

/// The project and file of `projects/<project>/releases/<file>.zip`.
pub(super) fn parse_zip_path(zip_path: &str) -> ApiResult<(String, String)> {
    let bad = || {
        ApiError::bad_request(
            "invalid_zip_path",
            format!(
                "zip_path must be exactly `projects/<project>/releases/<file>.zip`, relative to \
                 the workspace, with plain names (letters, digits, `.`, `_`, `-`); got `{zip_path}`"
            ),
        )
    };
    let parts: Vec<&str> = zip_path.split('/').collect();
    let ["projects", project, "releases", file] = parts.as_slice() else {
        return Err(bad());
    };
    let stem = file.strip_suffix(".zip").ok_or_else(bad)?;
    for (what, name) in [("project", *project), ("release", *file), ("release", stem)] {
        check_name(what, name).map_err(|_| bad())?;
    }
    Ok(((*project).to_owned(), (*file).to_owned()))
}

/// The release file name of `release`: a file name, or `projects/<project>/releases/<file>.zip`.
pub(super) fn release_file(project: &str, release: &str) -> ApiResult<String> {
    if release.contains('/') {
        let (p, file) = parse_zip_path(release).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_release",
                e.detail,
            )
        })?;
        if p != project {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_release",
                format!("release `{release}` belongs to project `{p}`, not `{project}`"),
            ));
        }
        return Ok(file);
    }
    plain_name("release", release, StatusCode::UNPROCESSABLE_ENTITY)?;
    Ok(release.to_owned())
}

/// The task as a folder under `configs/<framework>/`: the training plan's `detection` and
/// `segmentation` are `detect` and `segment`.
pub(super) fn task_folder(task: &str) -> &str {
    match task {
        "detection" => "detect",
        "segmentation" => "segment",
        other => other,
    }
}

/// A base config relative to `configs/<framework>/`, also when given as the workspace path
/// `configs/<framework>/<file>` (as the training plan names it).
pub(super) fn base_config_rel(framework: &str, base: &str) -> String {
    base.strip_prefix(&format!("configs/{framework}/"))
        .unwrap_or(base)
        .to_owned()
}

/// Every string in `value` that is a path under `root` becomes relative to it: responses name
/// workspace files relative to the workspace.
pub(super) fn relative_paths(value: &mut serde_json::Value, root: &std::path::Path) {
    let prefix = format!("{}/", root.display());
    match value {
        serde_json::Value::String(s) => {
            if s.as_str() == prefix.trim_end_matches('/') {
                *s = ".".into();
            } else if s.contains(&prefix) {
                // Also inside a longer text (a command line, a message).
                *s = s.replace(&prefix, "");
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| relative_paths(v, root)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| relative_paths(v, root)),
        _ => {}
    }
}

/// The release of `dataset_path`: a release ZIP (`projects/<p>/releases/<file>.zip`) or a
/// dataset folder Kiln extracted (`projects/<p>/training_data/<slug>/`, whose marker names it).
pub(super) fn release_of_dataset_path(
    service: &kiln_runner::RunService,
    project: &str,
    dataset_path: &str,
) -> ApiResult<String> {
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    if dataset_path.ends_with(".zip") {
        return release_file(project, dataset_path);
    }
    let parts: Vec<&str> = dataset_path.trim_end_matches('/').split('/').collect();
    let ["projects", p, "training_data", slug] = parts.as_slice() else {
        return Err(ApiError::new(
            invalid,
            "invalid_dataset_path",
            format!(
                "dataset_path must be `projects/<project>/training_data/<dataset>/` or \
                 `projects/<project>/releases/<file>.zip`, relative to the workspace; got \
                 `{dataset_path}`"
            ),
        ));
    };
    if *p != project {
        return Err(ApiError::new(
            invalid,
            "invalid_dataset_path",
            format!("dataset `{dataset_path}` belongs to project `{p}`, not `{project}`"),
        ));
    }
    plain_name("dataset", slug, invalid)?;
    match service.release_of_dataset(project, slug) {
        Ok(Some(release)) => Ok(release),
        Ok(None) => {
            let exists = service
                .workspace()
                .training_data_dir(project)
                .is_ok_and(|d| d.join(slug).is_dir());
            let why = if exists {
                "was not extracted by Kiln from a release (no marker)"
            } else {
                "does not exist"
            };
            Err(ApiError::new(
                invalid,
                "invalid_dataset_path",
                format!(
                    "{dataset_path} {why}; give the release ZIP as `release` or `dataset_path`"
                ),
            ))
        }
        Err(e) => Err(ApiError::from(e).with_status(invalid)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plans_names_are_understood() {
        assert_eq!(task_folder("detection"), "detect");
        assert_eq!(task_folder("segmentation"), "segment");
        assert_eq!(task_folder("detect"), "detect");
        assert_eq!(
            base_config_rel("ultralytics", "configs/ultralytics/detect/default.yaml"),
            "detect/default.yaml"
        );
        assert_eq!(
            base_config_rel("ultralytics", "detect/x.yaml"),
            "detect/x.yaml"
        );
        let mut v = serde_json::json!({"a": "/ws/projects/p/x", "b": ["/ws", "/wsx/y", 3]});
        relative_paths(&mut v, std::path::Path::new("/ws"));
        assert_eq!(
            v,
            serde_json::json!({"a": "projects/p/x", "b": [".", "/wsx/y", 3]})
        );
    }

    #[test]
    fn zip_paths_must_have_the_exact_form() {
        assert_eq!(
            parse_zip_path("projects/demo/releases/r1.zip").unwrap(),
            ("demo".to_owned(), "r1.zip".to_owned())
        );
        for bad in [
            "projects/demo/releases/r1.tar",
            "/projects/demo/releases/r1.zip",
            "projects/../releases/r1.zip",
            "projects/demo/releases/../r1.zip",
            "projects/demo/releases/sub/r1.zip",
            "projects/demo/other/r1.zip",
            "projects/demo/releases/.zip",
            "projects/.demo/releases/r1.zip",
            "projects//releases/r1.zip",
        ] {
            let e = parse_zip_path(bad).unwrap_err();
            assert_eq!(e.code, "invalid_zip_path", "{bad}");
            assert!(e.detail.contains("projects/<project>/releases/<file>.zip"));
        }
    }
}
