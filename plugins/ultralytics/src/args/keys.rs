//! The arguments Ultralytics knows, with the kind of value each takes; the keys user mode may
//! override and those the plugin owns; "did you mean" for unknown keys.

use kiln_plugin_sdk::StepError;

/// How a value of a key is checked (and coerced from strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Float,
    Str,
    /// Several types accepted, or `null` by default: only objects are refused.
    Any,
    /// Special cases checked by name (epochs, imgsz, batch, patience, device).
    Special,
}

/// Every argument Ultralytics 8.4.190 knows (the keys of its `args.yaml`), in its order,
/// with the type its default has.
pub const KNOWN_KEYS: &[(&str, Kind)] = {
    use Kind::*;
    &[
        ("task", Str),
        ("mode", Str),
        ("model", Str),
        ("data", Str),
        ("epochs", Special),
        ("time", Any),
        ("patience", Special),
        ("batch", Special),
        ("imgsz", Special),
        ("save", Bool),
        ("save_period", Int),
        ("cache", Any),
        ("device", Special),
        ("workers", Int),
        ("project", Str),
        ("name", Str),
        ("exist_ok", Bool),
        ("pretrained", Any),
        ("cls_remap", Bool),
        ("optimizer", Str),
        ("verbose", Bool),
        ("seed", Int),
        ("deterministic", Bool),
        ("single_cls", Bool),
        ("rect", Bool),
        ("cos_lr", Bool),
        ("close_mosaic", Int),
        ("resume", Any),
        ("amp", Bool),
        ("fraction", Float),
        ("profile", Bool),
        ("freeze", Any),
        ("multi_scale", Any),
        ("compile", Any),
        ("channels_last", Any),
        ("overlap_mask", Bool),
        ("mask_ratio", Int),
        ("dropout", Float),
        ("val", Bool),
        ("split", Str),
        ("save_json", Bool),
        ("conf", Any),
        ("iou", Float),
        ("max_det", Int),
        ("quantize", Any),
        ("dnn", Bool),
        ("plots", Bool),
        ("nms", Any),
        ("source", Any),
        ("vid_stride", Int),
        ("stream_buffer", Bool),
        ("visualize", Bool),
        ("augment", Bool),
        ("agnostic_nms", Bool),
        ("classes", Any),
        ("retina_masks", Bool),
        ("embed", Any),
        ("show", Bool),
        ("save_frames", Bool),
        ("save_txt", Bool),
        ("save_conf", Bool),
        ("save_crop", Bool),
        ("show_labels", Bool),
        ("show_conf", Bool),
        ("show_boxes", Bool),
        ("line_width", Any),
        ("format", Str),
        ("optimize", Bool),
        ("dynamic", Bool),
        ("simplify", Bool),
        ("opset", Any),
        ("workspace", Any),
        ("lr0", Float),
        ("lrf", Float),
        ("momentum", Float),
        ("weight_decay", Float),
        ("warmup_epochs", Float),
        ("warmup_momentum", Float),
        ("warmup_bias_lr", Float),
        ("distill_model", Any),
        ("dis", Float),
        ("box", Float),
        ("cls", Float),
        ("cls_pw", Float),
        ("dfl", Float),
        ("pose", Float),
        ("kobj", Float),
        ("rle", Float),
        ("angle", Float),
        ("dlog", Float),
        ("dgrad", Float),
        ("dlam", Float),
        ("nbs", Int),
        ("hsv_h", Float),
        ("hsv_s", Float),
        ("hsv_v", Float),
        ("degrees", Float),
        ("translate", Float),
        ("scale", Float),
        ("shear", Float),
        ("perspective", Float),
        ("flipud", Float),
        ("fliplr", Float),
        ("bgr", Float),
        ("mosaic", Float),
        ("mixup", Float),
        ("cutmix", Float),
        ("copy_paste", Float),
        ("copy_paste_mode", Str),
        ("auto_augment", Str),
        ("erasing", Float),
        ("cfg", Any),
        ("tracker", Str),
        ("save_dir", Str),
    ]
};

/// The keys user mode may override.
pub const USER_KEYS: &[&str] = &[
    "epochs", "imgsz", "batch", "amp", "patience", "save", "device",
];

/// Keys the plugin sets itself (or that the `train` action controls); never overridable.
pub const RESERVED_KEYS: &[(&str, &str)] = &[
    ("data", "it comes from the 'data' input"),
    (
        "project",
        "the plugin points it at the training-output directory",
    ),
    ("name", "it comes from the 'training_name' input"),
    (
        "exist_ok",
        "the plugin always sets exist_ok=True so weights land in the training-output directory",
    ),
    ("task", "it comes from the 'task' input"),
    ("mode", "the plugin always runs mode 'train'"),
    ("resume", "use the train action's 'resume' input"),
    ("save_dir", "Ultralytics derives it from project and name"),
];

pub const TASKS: &[&str] = &["detect", "segment"];

/// Ultralytics' own defaults for the two values resolve-config reports, when the config lacks them.
pub const DEFAULT_EPOCHS: i64 = 100;
pub const DEFAULT_IMGSZ: i64 = 640;

pub fn kind_of(key: &str) -> Option<Kind> {
    KNOWN_KEYS.iter().find(|(k, _)| *k == key).map(|(_, t)| *t)
}

pub(super) fn reserved_reason(key: &str) -> Option<&'static str> {
    RESERVED_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, why)| *why)
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest known key, when it is close enough to be a likely typo.
pub fn closest_key(key: &str) -> Option<&'static str> {
    let key_lower = key.to_ascii_lowercase().replace('-', "_");
    KNOWN_KEYS
        .iter()
        .map(|(k, _)| (*k, distance(&key_lower, k)))
        .filter(|(k, d)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

pub(super) fn unknown_key_error(origin: &str, key: &str) -> StepError {
    let hint = match closest_key(key) {
        Some(k) => format!(" (did you mean '{k}'?)"),
        None => String::new(),
    };
    StepError::invalid_input(format!(
        "{origin}: '{key}' is not an Ultralytics argument{hint}"
    ))
}
