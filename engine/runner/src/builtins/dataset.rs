//! What an extracted release holds: its layout, splits and class names.
//!
//! Two layouts, found at the top of the release or inside its single top-level folder:
//! - **YOLO**: `data.yaml` with `names:` (a list, or a map of index to name) and the split
//!   keys `train` / `val` / `test`, as Ultralytics reads it.
//! - **COCO**: `annotations/*.json` (COCO instances: `images`, `annotations`, `categories`),
//!   one file per split named for it (`train.json`, or `instances_train2017.json` for the split
//!   `train2017`; `captions_*` and `person_keypoints_*` files are not splits), and the split's
//!   images in `<split>/` or `images/<split>/`; or, as labeling tools such as Roboflow export
//!   it, `<split>/_annotations.coco.json` beside the split's images. Every split has the same
//!   categories; class names are in the order of the file's `categories` list, which is the
//!   order of MMDetection's labels (pycocotools lists category ids in file order).
//!
//! Annotation files are read as a stream: only the categories are kept and the images and
//! boxes counted, so a file of hundreds of megabytes costs its reading time, not its size in
//! memory.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{Error, Result};

/// Largest `data.yaml` read from a release.
pub const MAX_DATA_YAML_BYTES: u64 = 1024 * 1024;
/// Most annotation files (splits) a COCO release may have.
pub const MAX_COCO_SPLITS: usize = 64;
/// Most categories (classes) an annotation file may name: memory read from it stays bounded.
pub const MAX_CATEGORIES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Yolo,
    Coco,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Yolo => "yolo",
            Layout::Coco => "coco",
        }
    }
}

/// An extracted dataset, as a training step needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub layout: Layout,
    /// The folder holding `data.yaml` or `annotations/`.
    pub root: PathBuf,
    /// YOLO only.
    pub data_yaml: Option<PathBuf>,
    pub class_names: Vec<String>,
    pub splits: Vec<Split>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub name: String,
    /// COCO: the split's annotation file and image folder, and what the file holds.
    pub coco: Option<CocoSplit>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CocoSplit {
    pub annotations: PathBuf,
    pub images_dir: PathBuf,
    pub images: u64,
    pub boxes: u64,
}

/// Reads the layout of the dataset extracted into `target`. `wrap` is applied to every file
/// read (to stop a long read when the step is cancelled).
pub fn inspect<R: Read>(target: &Path, wrap: impl Fn(std::fs::File) -> R) -> Result<Dataset> {
    let root = dataset_root(target)?;
    let data_yaml = root.join("data.yaml");
    if data_yaml.is_file() {
        let doc = read_data_yaml(&data_yaml)?;
        let class_names = yolo_class_names(&doc, &data_yaml)?;
        let splits = ["train", "val", "test"]
            .into_iter()
            .filter(|key| doc.get(key).is_some_and(|v| !v.is_null()))
            .map(|key| Split {
                name: key.to_owned(),
                coco: None,
            })
            .collect();
        return Ok(Dataset {
            layout: Layout::Yolo,
            root,
            data_yaml: Some(data_yaml),
            class_names,
            splits,
        });
    }
    if let Some(sources) = coco_sources(&root)? {
        return inspect_coco(root, sources, wrap);
    }
    Err(Error::Input(format!(
        "the release is neither a YOLO dataset (data.yaml) nor a COCO one (annotations/*.json, \
         or <split>/_annotations.coco.json) at its top level (looked in {}); export the dataset \
         in one of these formats",
        root.display()
    )))
}

/// A YOLO dataset's `data.yaml` in `target` (at its top or in its single top-level folder),
/// found without reading any annotation file.
pub fn data_yaml_of(target: &Path) -> Option<PathBuf> {
    let yaml = dataset_root(target).ok()?.join("data.yaml");
    yaml.is_file().then_some(yaml)
}

/// `target`, or its single top-level folder when that is where the dataset is.
fn dataset_root(target: &Path) -> Result<PathBuf> {
    let holds_dataset = |dir: &Path| {
        dir.join("data.yaml").is_file()
            || dir.join("annotations").is_dir()
            || !split_annotation_dirs(dir).is_empty()
    };
    if holds_dataset(target) {
        return Ok(target.to_owned());
    }
    let subdirs: Vec<PathBuf> = std::fs::read_dir(target)
        .map_err(|e| Error::io("listing", target, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match subdirs.as_slice() {
        [only] if holds_dataset(only) => Ok(only.clone()),
        _ => Ok(target.to_owned()),
    }
}

fn read_data_yaml(data_yaml: &Path) -> Result<serde_norway::Value> {
    let size = std::fs::metadata(data_yaml)
        .map_err(|e| Error::io("reading", data_yaml, e))?
        .len();
    if size > MAX_DATA_YAML_BYTES {
        return Err(Error::Input(format!(
            "{} is {size} bytes; a data.yaml may have at most {MAX_DATA_YAML_BYTES}",
            data_yaml.display()
        )));
    }
    let text =
        std::fs::read_to_string(data_yaml).map_err(|e| Error::io("reading", data_yaml, e))?;
    kiln_workflow::limits::check_yaml(&text)
        .map_err(|e| Error::Input(format!("{}: {e}", data_yaml.display())))?;
    serde_norway::from_str(&text)
        .map_err(|e| Error::Input(format!("{}: not valid YAML: {e}", data_yaml.display())))
}

/// Class names from `names:` (a list, or a map of index to name).
fn yolo_class_names(doc: &serde_norway::Value, data_yaml: &Path) -> Result<Vec<String>> {
    let names = doc.get("names").ok_or_else(|| {
        Error::Input(format!(
            "{} has no `names:` list of classes",
            data_yaml.display()
        ))
    })?;
    let scalar = |v: &serde_norway::Value| match v {
        serde_norway::Value::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    match names {
        serde_norway::Value::Sequence(seq) => Ok(seq.iter().map(scalar).collect()),
        serde_norway::Value::Mapping(map) => {
            let mut pairs: Vec<(i64, String)> = map
                .iter()
                .map(|(k, v)| (k.as_i64().unwrap_or(i64::MAX), scalar(v)))
                .collect();
            pairs.sort();
            Ok(pairs.into_iter().map(|(_, v)| v).collect())
        }
        _ => Err(Error::Input(format!(
            "{}: `names` must be a list or a map of class names",
            data_yaml.display()
        ))),
    }
}

/// The `<split>/` folders of `root` that hold a `_annotations.coco.json` (a Roboflow export).
fn split_annotation_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(ROBOFLOW_FILE).is_file())
        .collect();
    dirs.sort();
    dirs
}

const ROBOFLOW_FILE: &str = "_annotations.coco.json";

/// A COCO split: its name, annotation file, and the folders its images may be in.
type Source = (String, PathBuf, Vec<PathBuf>);

/// The splits of a COCO release at `root`, if it is one.
fn coco_sources(root: &Path) -> Result<Option<Vec<Source>>> {
    let annotations = root.join("annotations");
    if annotations.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&annotations)
            .map_err(|e| Error::io("listing", &annotations, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
            // COCO's other annotation kinds are no detection splits.
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    !n.starts_with("captions_") && !n.starts_with("person_keypoints_")
                })
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Input(format!(
                "{} holds no annotation file (*.json, one per split: train.json, val.json, …)",
                annotations.display()
            )));
        }
        let sources = files
            .into_iter()
            .map(|file| {
                let stem = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = stem.strip_prefix("instances_").unwrap_or(&stem).to_owned();
                let images = vec![root.join(&name), root.join("images").join(&name)];
                (name, file, images)
            })
            .collect();
        return Ok(Some(sources));
    }
    let dirs = split_annotation_dirs(root);
    if dirs.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        dirs.into_iter()
            .map(|dir| {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, dir.join(ROBOFLOW_FILE), vec![dir])
            })
            .collect(),
    ))
}

fn inspect_coco<R: Read>(
    root: PathBuf,
    sources: Vec<Source>,
    wrap: impl Fn(std::fs::File) -> R,
) -> Result<Dataset> {
    if sources.len() > MAX_COCO_SPLITS {
        return Err(Error::Input(format!(
            "{} holds {} annotation files; a COCO release may have at most {MAX_COCO_SPLITS} \
             splits",
            root.display(),
            sources.len()
        )));
    }
    let mut splits = Vec::with_capacity(sources.len());
    // The first split's categories, and the file they came from.
    let mut categories: Option<(Vec<(i64, String)>, PathBuf)> = None;
    for (name, file, candidates) in sources {
        let reader = std::fs::File::open(&file).map_err(|e| Error::io("reading", &file, e))?;
        let summary: Summary = serde_json::from_reader(std::io::BufReader::new(wrap(reader)))
            .map_err(|e| {
                Error::Input(format!(
                    "{}: not a COCO annotation file: {e}; each file in annotations/ must be a \
                     JSON object with `images`, `annotations` and `categories`",
                    file.display()
                ))
            })?;
        // A test split may hold images without boxes (no `annotations` list).
        let (images, boxes) = (summary.images.unwrap_or(0), summary.boxes.unwrap_or(0));
        let found = summary.into_categories(&file)?;
        match &categories {
            None => categories = Some((found, file.clone())),
            Some((first, first_file)) if *first != found => {
                return Err(Error::Input(format!(
                    "{} and {} name different categories ({} against {}); every split of a \
                     release must have the same classes",
                    first_file.display(),
                    file.display(),
                    describe(first),
                    describe(&found)
                )));
            }
            Some(_) => {}
        }
        let Some(images_dir) = candidates.iter().find(|d| d.is_dir()).cloned() else {
            let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
            return Err(Error::Input(format!(
                "COCO split `{name}` ({}) has no image folder: looked for {}",
                file.display(),
                looked.join(" and ")
            )));
        };
        splits.push(Split {
            name,
            coco: Some(CocoSplit {
                annotations: file,
                images_dir,
                images,
                boxes,
            }),
        });
    }
    let (categories, _) = categories.expect("one annotation file at least");
    Ok(Dataset {
        layout: Layout::Coco,
        root,
        data_yaml: None,
        class_names: categories.into_iter().map(|(_, name)| name).collect(),
        splits,
    })
}

fn describe(categories: &[(i64, String)]) -> String {
    categories
        .iter()
        .map(|(id, name)| format!("{id}: {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Deserialize)]
struct Category {
    id: i64,
    name: String,
}

/// The parts of a COCO instances file a dataset summary needs.
#[derive(Debug, Default)]
struct Summary {
    images: Option<u64>,
    boxes: Option<u64>,
    categories: Option<Vec<Category>>,
}

impl Summary {
    /// The categories in file order, checked: present, ids unique, names not empty.
    fn into_categories(self, file: &Path) -> Result<Vec<(i64, String)>> {
        let bad = |what: String| Error::Input(format!("{}: {what}", file.display()));
        if self.images.is_none() {
            return Err(bad(
                "no `images` list; this is not a COCO instances file".into()
            ));
        }
        let categories = self
            .categories
            .ok_or_else(|| bad("no `categories` list: the classes are unknown".into()))?;
        if categories.is_empty() {
            return Err(bad(
                "`categories` is empty: a detection dataset needs a class".into(),
            ));
        }
        let mut in_order: Vec<(i64, String)> = Vec::with_capacity(categories.len());
        let mut seen = std::collections::HashMap::new();
        for c in categories {
            if c.name.trim().is_empty() {
                return Err(bad(format!("category {} has an empty name", c.id)));
            }
            if let Some(previous) = seen.insert(c.id, c.name.clone()) {
                return Err(bad(format!(
                    "category id {} is used twice (`{previous}` and `{}`)",
                    c.id, c.name
                )));
            }
            in_order.push((c.id, c.name));
        }
        Ok(in_order)
    }
}

impl<'de> Deserialize<'de> for Summary {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct SummaryVisitor;
        impl<'de> Visitor<'de> for SummaryVisitor {
            type Value = Summary;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a COCO annotation object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Summary, A::Error> {
                let mut summary = Summary::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "images" => summary.images = Some(map.next_value::<Count>()?.0),
                        "annotations" => summary.boxes = Some(map.next_value::<Count>()?.0),
                        "categories" => {
                            summary.categories = Some(map.next_value::<Categories>()?.0);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(summary)
            }
        }
        d.deserialize_map(SummaryVisitor)
    }
}

/// The `categories` list, refused past [`MAX_CATEGORIES`] while it is read.
struct Categories(Vec<Category>);

impl<'de> Deserialize<'de> for Categories {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct CategoriesVisitor;
        impl<'de> Visitor<'de> for CategoriesVisitor {
            type Value = Categories;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of categories ({\"id\": …, \"name\": …})")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Categories, A::Error> {
                let mut all = Vec::new();
                while let Some(c) = seq.next_element::<Category>()? {
                    if all.len() == MAX_CATEGORIES {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_CATEGORIES} categories"
                        )));
                    }
                    all.push(c);
                }
                Ok(Categories(all))
            }
        }
        d.deserialize_seq(CategoriesVisitor)
    }
}

/// The length of a JSON list, read without keeping its elements.
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(CountVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATEGORIES: &str = r#"[{"id": 2, "name": "blue"}, {"id": 1, "name": "red"}]"#;

    fn coco(images: usize, boxes: usize, categories: &str) -> String {
        let images: Vec<String> = (0..images)
            .map(|i| format!(r#"{{"id": {i}, "file_name": "{i}.png", "width": 8, "height": 8}}"#))
            .collect();
        let boxes: Vec<String> = (0..boxes)
            .map(|i| {
                format!(r#"{{"id": {i}, "image_id": 0, "category_id": 1, "bbox": [0, 0, 1, 1]}}"#)
            })
            .collect();
        format!(
            r#"{{"info": {{"year": 2026}}, "images": [{}], "annotations": [{}], "categories": {categories}}}"#,
            images.join(","),
            boxes.join(",")
        )
    }

    fn write(root: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    fn error(root: &Path) -> String {
        inspect(root, |f| f).unwrap_err().to_string()
    }

    #[test]
    fn a_coco_release_reports_its_splits_classes_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("shapes");
        write(
            &root,
            &[
                (
                    "annotations/instances_train2017.json",
                    &coco(3, 5, CATEGORIES),
                ),
                ("annotations/val.json", &coco(1, 0, CATEGORIES)),
                // Not a split: COCO's captions.
                (
                    "annotations/captions_val2017.json",
                    r#"{"annotations": []}"#,
                ),
                ("images/train2017/0.png", ""),
                ("val/0.png", ""),
            ],
        );
        // Inside a single top-level folder, as many exports are zipped.
        let d = inspect(dir.path(), |f| f).unwrap();
        assert_eq!(d.layout, Layout::Coco);
        assert_eq!(d.root, root);
        // In the file's order (ids 2, 1): MMDetection's label 0 is the first category listed.
        assert_eq!(d.class_names, ["blue", "red"]);
        let splits: Vec<_> = d
            .splits
            .iter()
            .map(|s| {
                let c = s.coco.as_ref().unwrap();
                (s.name.as_str(), c.images, c.boxes, c.images_dir.clone())
            })
            .collect();
        assert_eq!(
            splits,
            [
                ("train2017", 3, 5, root.join("images/train2017")),
                ("val", 1, 0, root.join("val")),
            ]
        );
    }

    #[test]
    fn a_roboflow_coco_export_is_a_coco_release() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("train/_annotations.coco.json", &coco(2, 3, CATEGORIES)),
                ("train/0.jpg", ""),
                ("valid/_annotations.coco.json", &coco(1, 1, CATEGORIES)),
                ("valid/0.jpg", ""),
                ("README.roboflow.txt", ""),
            ],
        );
        let d = inspect(dir.path(), |f| f).unwrap();
        assert_eq!(d.layout, Layout::Coco);
        let splits: Vec<_> = d
            .splits
            .iter()
            .map(|s| {
                let c = s.coco.as_ref().unwrap();
                (
                    s.name.as_str(),
                    c.images,
                    c.annotations.clone(),
                    c.images_dir.clone(),
                )
            })
            .collect();
        assert_eq!(
            splits,
            [
                (
                    "train",
                    2,
                    dir.path().join("train/_annotations.coco.json"),
                    dir.path().join("train")
                ),
                (
                    "valid",
                    1,
                    dir.path().join("valid/_annotations.coco.json"),
                    dir.path().join("valid")
                ),
            ]
        );
    }

    #[test]
    fn a_yolo_release_reports_its_splits_and_classes() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[(
                "data.yaml",
                "train: a\nval: b\ntest: null\nnames: {1: y, 0: x}\n",
            )],
        );
        let d = inspect(dir.path(), |f| f).unwrap();
        assert_eq!(d.layout, Layout::Yolo);
        assert_eq!(d.class_names, ["x", "y"]);
        let names: Vec<_> = d.splits.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["train", "val"]);
        assert_eq!(d.data_yaml, Some(dir.path().join("data.yaml")));
    }

    #[test]
    fn broken_coco_releases_are_refused_with_the_file_and_the_fix() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("readme.txt", "")], "neither a YOLO dataset"),
            (&[("annotations/notes.txt", "")], "holds no annotation file"),
            (
                &[
                    ("annotations/train.json", "{\"images\": [}"),
                    ("train/0.png", ""),
                ],
                "train.json: not a COCO annotation file",
            ),
            (
                &[("annotations/train.json", "[1, 2]"), ("train/0.png", "")],
                "not a COCO annotation file",
            ),
            (
                &[
                    ("annotations/train.json", r#"{"categories": []}"#),
                    ("train/0.png", ""),
                ],
                "no `images` list",
            ),
            (
                &[
                    ("annotations/train.json", r#"{"images": []}"#),
                    ("train/0.png", ""),
                ],
                "no `categories` list",
            ),
            (
                &[
                    (
                        "annotations/train.json",
                        r#"{"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}"#,
                    ),
                    ("train/0.png", ""),
                ],
                "category id 1 is used twice",
            ),
            (
                &[("annotations/train.json", &coco(1, 1, CATEGORIES))],
                "COCO split `train`",
            ),
        ];
        for (files, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), files);
            let e = error(dir.path());
            assert!(e.contains(expected), "{files:?}: {e}");
        }
    }

    #[test]
    fn splits_with_different_classes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("annotations/train.json", &coco(1, 1, CATEGORIES)),
                (
                    "annotations/val.json",
                    &coco(1, 1, r#"[{"id": 1, "name": "red"}]"#),
                ),
                ("train/0.png", ""),
                ("val/0.png", ""),
            ],
        );
        let e = error(dir.path());
        assert!(
            e.contains("name different categories (2: blue, 1: red against 1: red)")
                && e.contains("same classes"),
            "{e}"
        );
    }
}
