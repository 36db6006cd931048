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

#[cfg(test)]
mod tests {
    use super::*;

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
