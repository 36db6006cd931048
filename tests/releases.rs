//! `builtin/extract-release` against hostile archives: nothing outside the dataset folder is
//! written and nothing half-extracted is left behind.

mod common;

use common::*;
use std::io::Write;

const EXTRACT: &str = "name: extract\nparams:\n  release: {type: string, required: true}\nsteps:\n  - id: extract\n    uses: builtin/extract-release\n    with: {project: demo, release: '${{ params.release }}'}\n";

fn zip_with(ws: &Workspace, name: &str, build: impl FnOnce(&mut zip::ZipWriter<std::fs::File>)) {
    let path = ws.root().join("projects/demo/releases").join(name);
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    z.start_file("data.yaml", opts).unwrap();
    z.write_all(b"names: [a]\n").unwrap();
    build(&mut z);
    z.finish().unwrap();
}

fn extract(ws: &Workspace, release: &str) -> (Option<i32>, serde_json::Value) {
    let wf = ws.workflow("extract.yaml", EXTRACT);
    let out = ws.kiln(&["run", &wf, "-p", &format!("release={release}")]);
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    (out.status.code(), show)
}

fn training_data_entries(ws: &Workspace) -> Vec<String> {
    match std::fs::read_dir(ws.root().join("projects/demo/training_data")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

#[test]
fn zip_slip_entries_are_refused_and_nothing_is_left_behind() {
    let ws = Workspace::new();
    zip_with(&ws, "slip.zip", |z| {
        z.start_file("train/ok.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"fine").unwrap();
        z.start_file("../../evil.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"evil").unwrap();
    });
    let (code, show) = extract(&ws, "slip.zip");
    assert_eq!(code, Some(1));
    let err = step(&show, "extract")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        err.contains("entry `../../evil.txt`") && err.contains("`..`"),
        "{err}"
    );
    assert!(!ws.root().join("projects/evil.txt").exists());
    assert!(!ws.root().join("evil.txt").exists());
    assert!(
        training_data_entries(&ws).is_empty(),
        "{:?}",
        training_data_entries(&ws)
    );
}

#[test]
fn absolute_paths_and_symlinks_are_refused() {
    let ws = Workspace::new();
    zip_with(&ws, "abs.zip", |z| {
        z.start_file(
            "/tmp/kiln-abs-evil.txt",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        z.write_all(b"evil").unwrap();
    });
    let (code, show) = extract(&ws, "abs.zip");
    assert_eq!(code, Some(1));
    let err = step(&show, "extract")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("absolute path"), "{err}");

    zip_with(&ws, "link.zip", |z| {
        z.add_symlink(
            "train/passwd",
            "/etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
    });
    let (code, show) = extract(&ws, "link.zip");
    assert_eq!(code, Some(1));
    let err = step(&show, "extract")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("symbolic link"), "{err}");
    assert!(training_data_entries(&ws).is_empty());
}

#[test]
fn a_release_path_outside_the_releases_folder_is_refused() {
    let ws = Workspace::new();
    let (code, show) = extract(&ws, "../../../etc/passwd");
    assert_eq!(code, Some(1));
    let err = step(&show, "extract")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        err.contains("input `release`") && err.contains("`..`"),
        "{err}"
    );
}

#[test]
fn extraction_is_idempotent() {
    let ws = Workspace::new();
    let (code, show) = extract(&ws, "demo-release.zip");
    assert_eq!(code, Some(0));
    let out = &step(&show, "extract")["outputs"];
    assert_eq!(out["extracted"], true);
    assert_eq!(out["layout"], "yolo");
    assert_eq!(out["splits"], serde_json::json!(["train", "val"]));
    assert_eq!(
        out["class_names"],
        serde_json::json!(["red_box", "blue_box"])
    );
    let marker = ws
        .root()
        .join("projects/demo/training_data/demo-release/.kiln-release.json");
    let before = std::fs::metadata(&marker).unwrap().modified().unwrap();
    let (code, show) = extract(&ws, "demo-release.zip");
    assert_eq!(code, Some(0));
    assert_eq!(step(&show, "extract")["outputs"]["extracted"], false);
    assert_eq!(
        std::fs::metadata(&marker).unwrap().modified().unwrap(),
        before
    );
}

/// The shipped COCO demo release (the layout the real MMDetection trainer was run with):
/// extracted by the same builtin, which reports its layout, splits, classes and files.
#[test]
fn a_coco_release_is_extracted_with_its_splits_and_classes() {
    let ws = Workspace::new();
    std::fs::copy(
        repo_root().join("workflows/data/demo-coco-release.zip"),
        ws.root()
            .join("projects/demo/releases/demo-coco-release.zip"),
    )
    .unwrap();
    let (code, show) = extract(&ws, "demo-coco-release.zip");
    assert_eq!(code, Some(0), "{show}");
    let out = &step(&show, "extract")["outputs"];
    let dir = ws
        .root()
        .join("projects/demo/training_data/demo-coco-release");
    let at = |p: &str| dir.join(p).display().to_string();
    assert_eq!(out["layout"], "coco");
    assert_eq!(
        out["class_names"],
        serde_json::json!(["red_rect", "blue_rect"])
    );
    assert_eq!(out["nc"], 2);
    assert_eq!(out["splits"], serde_json::json!(["train", "val"]));
    assert_eq!(out["data_root"], dir.display().to_string());
    assert_eq!(
        out["annotations"],
        serde_json::json!({"train": at("annotations/train.json"), "val": at("annotations/val.json")})
    );
    assert_eq!(
        out["images"],
        serde_json::json!({"train": at("train"), "val": at("val")})
    );
    // The counts of the real run's dataset (../shared/realclient/mmdetection/REPORT.md).
    assert_eq!(
        out["counts"],
        serde_json::json!({"train": {"images": 16, "boxes": 26}, "val": {"images": 4, "boxes": 10}})
    );
    assert!(out.get("data_yaml").is_none(), "{out}");
    assert_eq!(out["files"], 22);
}

#[test]
fn concurrent_runs_extract_a_release_once_and_share_it() {
    let ws = Workspace::new();
    let wf = ws.workflow("extract.yaml", EXTRACT);
    let children: Vec<_> = (0..4)
        .map(|_| {
            ws.command(&["run", &wf, "-p", "release=demo-release.zip"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut extracted = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
        if step(&show, "extract")["outputs"]["extracted"] == true {
            extracted += 1;
        }
    }
    assert_eq!(
        extracted, 1,
        "exactly one run extracts; the others reuse its dataset"
    );
    assert_eq!(training_data_entries(&ws), ["demo-release"]);
}

#[test]
fn a_step_timeout_stops_a_long_extraction_and_leaves_nothing_behind() {
    // A small archive that expands to 2 GiB: one deflated 16 MiB entry copied 128 times.
    let ws = Workspace::new();
    let seed = ws.root().join("seed.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&seed).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("zeros.bin", opts).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..16 {
            z.write_all(&chunk).unwrap();
        }
        z.finish().unwrap();
    }
    zip_with(&ws, "big.zip", |z| {
        let mut source = zip::ZipArchive::new(std::fs::File::open(&seed).unwrap()).unwrap();
        for i in 0..128 {
            let entry = source.by_index_raw(0).unwrap();
            z.raw_copy_file_rename(entry, format!("train/zeros-{i}.bin"))
                .unwrap();
        }
    });
    let wf = ws.workflow(
        "slow.yaml",
        &EXTRACT.replace(
            "    uses: builtin/extract-release\n",
            "    uses: builtin/extract-release\n    timeout: 1s\n",
        ),
    );
    let out = ws.kiln(&["run", &wf, "-p", "release=big.zip"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = ws.json(&["runs", "show", &run_id(&out), "--json"]);
    let err = step(&show, "extract")["error_message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("timed out after 1s"), "{err}");
    // The extraction stops on its own thread and removes its temporary folder.
    wait_for(30, "the temporary folder to be removed", || {
        training_data_entries(&ws).is_empty()
    });
}

#[test]
fn leftovers_of_a_killed_extraction_are_removed_by_the_next_one() {
    let ws = Workspace::new();
    let data = ws.root().join("projects/demo/training_data");
    for leftover in [".demo-release.extracting-1234", ".demo-release.old-5678"] {
        std::fs::create_dir_all(data.join(leftover).join("train")).unwrap();
        std::fs::write(
            data.join(leftover).join("train/big.bin"),
            vec![0u8; 1 << 16],
        )
        .unwrap();
    }
    // Another slug's work in progress is not ours to touch.
    std::fs::create_dir_all(data.join(".other.extracting-1")).unwrap();
    let (code, _) = extract(&ws, "demo-release.zip");
    assert_eq!(code, Some(0));
    let mut left = training_data_entries(&ws);
    left.sort();
    assert_eq!(left, vec![".other.extracting-1", "demo-release"]);
}
