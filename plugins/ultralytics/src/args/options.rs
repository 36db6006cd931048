//! The options a training form offers (resolve-config's `options` output): every Ultralytics
//! argument a workflow may override, with the type of its value, the value the resolved config
//! gives it and whether user mode may set it.

use serde_json::{Map, Value, json};

use super::keys::{KNOWN_KEYS, Kind, RESERVED_KEYS, USER_KEYS};

/// One line about an argument: every user-mode key has one, and the training arguments most
/// often tuned in developer mode.
pub(super) const DESCRIPTIONS: &[(&str, &str)] = &[
    ("epochs", "passes over the training set"),
    (
        "imgsz",
        "image size in pixels the images are scaled to (a multiple of 32)",
    ),
    (
        "batch",
        "images per batch (-1: auto-size to 60% of GPU memory; 0.0-1.0: that fraction)",
    ),
    ("amp", "mixed precision training (GPU)"),
    (
        "patience",
        "epochs without improvement before training stops early",
    ),
    (
        "save",
        "save checkpoints (weights/last.pt, weights/best.pt)",
    ),
    (
        "device",
        "device to train on: cpu, a GPU index such as 0, or several (\"0,1\"); unset: the first GPU, else the CPU",
    ),
    (
        "model",
        "network: a .yaml builds from scratch, a .pt fine-tunes those weights",
    ),
    ("time", "hours to train for; overrides epochs when set"),
    (
        "save_period",
        "save a checkpoint every N epochs (-1: only last and best)",
    ),
    (
        "cache",
        "cache images in ram or on disk to load them faster (false: off)",
    ),
    (
        "workers",
        "dataloader worker processes per rank (0: load in the main process)",
    ),
    (
        "pretrained",
        "start from pretrained weights (true, or a path to weights)",
    ),
    (
        "optimizer",
        "optimizer: SGD, Adam, AdamW, NAdam, RAdam, RMSProp or auto",
    ),
    ("verbose", "print detailed output"),
    ("seed", "random seed"),
    (
        "deterministic",
        "use deterministic algorithms (reproducible runs)",
    ),
    ("single_cls", "train every class as one class"),
    ("rect", "rectangular batches (less padding)"),
    ("cos_lr", "cosine learning-rate schedule"),
    (
        "close_mosaic",
        "turn mosaic augmentation off for the last N epochs (0: never)",
    ),
    ("fraction", "fraction of the training set to train on"),
    (
        "freeze",
        "freeze the first N layers, or the listed layer indices",
    ),
    ("multi_scale", "vary the image size during training"),
    (
        "overlap_mask",
        "merge object masks into one image mask (segment)",
    ),
    ("mask_ratio", "mask downsample ratio (segment)"),
    ("dropout", "dropout rate (classify)"),
    ("val", "validate after every epoch"),
    ("plots", "save training and validation plots"),
    ("lr0", "initial learning rate"),
    ("lrf", "final learning rate, as a fraction of lr0"),
    ("momentum", "SGD momentum, or Adam beta1"),
    ("weight_decay", "optimizer weight decay"),
    ("warmup_epochs", "warm-up epochs (fractions allowed)"),
    ("warmup_momentum", "momentum at the start of warm-up"),
    (
        "warmup_bias_lr",
        "bias learning rate at the start of warm-up",
    ),
    ("box", "box loss gain"),
    ("cls", "classification loss gain"),
    ("dfl", "distribution focal loss gain"),
    ("nbs", "nominal batch size the loss is normalised to"),
    ("hsv_h", "hue augmentation (fraction)"),
    ("hsv_s", "saturation augmentation (fraction)"),
    ("hsv_v", "brightness augmentation (fraction)"),
    ("degrees", "rotation augmentation (+/- degrees)"),
    ("translate", "translation augmentation (+/- fraction)"),
    ("scale", "scale augmentation (+/- gain)"),
    ("shear", "shear augmentation (+/- degrees)"),
    (
        "perspective",
        "perspective augmentation (fraction, 0-0.001)",
    ),
    ("flipud", "probability of an up-down flip"),
    ("fliplr", "probability of a left-right flip"),
    ("mosaic", "probability of mosaic augmentation"),
    ("mixup", "probability of mixup augmentation"),
    ("cutmix", "probability of cutmix augmentation"),
    (
        "copy_paste",
        "probability of copy-paste augmentation (segment)",
    ),
    ("erasing", "probability of random erasing (classify)"),
];

/// The type a form shows for a key: the kind of its value, the special keys by what they
/// usually hold (imgsz and batch take more than whole numbers: `any`).
pub fn option_type(key: &str, kind: Kind) -> &'static str {
    match kind {
        Kind::Bool => "bool",
        Kind::Int => "int",
        Kind::Float => "float",
        Kind::Str => "str",
        Kind::Any => "any",
        Kind::Special => match key {
            "device" => "str",
            // A number of pixels or [w, h]; a batch size, -1 (auto) or a fraction of memory.
            "imgsz" | "batch" => "any",
            _ => "int",
        },
    }
}

pub fn description(key: &str) -> Option<&'static str> {
    DESCRIPTIONS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, d)| *d)
}

/// The options of a resolved config: the user-mode keys first (in [`USER_KEYS`]' order), then
/// every other known key by name; the keys the plugin sets itself ([`RESERVED_KEYS`]) are left
/// out. `default` is the config's value, null when it does not set the key.
pub fn options(config: &Map<String, Value>) -> Vec<Value> {
    let reserved = |k: &str| RESERVED_KEYS.iter().any(|(r, _)| *r == k);
    let mut rest: Vec<&(&str, Kind)> = KNOWN_KEYS
        .iter()
        .filter(|(k, _)| !reserved(k) && !USER_KEYS.contains(k))
        .collect();
    rest.sort_by_key(|(k, _)| *k);
    let user = USER_KEYS
        .iter()
        .filter_map(|u| KNOWN_KEYS.iter().find(|(k, _)| k == u));
    user.chain(rest)
        .map(|(key, kind)| {
            json!({
                "key": key,
                "type": option_type(key, *kind),
                "default": config.get(*key).cloned().unwrap_or(Value::Null),
                "user": USER_KEYS.contains(key),
                "description": description(key),
            })
        })
        .collect()
}
