# Kiln's MMDetection config resolver: run by the mmdetection plugin as `python -c <this> REQUEST`
# in the Python that has MMEngine and MMDetection. MMEngine itself reads the base config (with its
# `_base_` inheritance), applies the overrides and writes the resolved config: nothing of
# Python's config semantics is re-implemented in Kiln. Needs neither torch nor mmcv.
#
# REQUEST (JSON): base_config (path), mode ("user" | "developer"), overrides (object),
# report_rejected (bool), dataset ({data_root, annotations: {split: path}, images: {split: dir},
# class_names}), output_dir (the training folder, or null for a preview).
# The result's `options` are what a training form offers: the user-mode options, then the keys
# developer mode takes (the resolved config's leaves, dotted), each with its type and its value in
# the resolved config.
# On success prints the result as JSON, hex-encoded on `KILN_RESULT_HEX <chunk>` lines (a resolved
# config is longer than one output line may be) ended by `KILN_RESULT_END`; when the request is
# wrong prints `KILN_ERROR <json>` ({kind, message}) and exits 2; anything else (a traceback) is an
# unexpected failure.
import difflib
import importlib.util
import json
import os
import sys

# User mode: the safe options, and where each goes in the config.
USER_KEYS = {
    "epochs": "number of training epochs (train_cfg.max_epochs)",
    "batch_size": "images per batch (train_dataloader.batch_size)",
    "lr": "learning rate (optim_wrapper.optimizer.lr)",
    "imgsz": "image scale: one side, or [width, height] (every Resize in the pipelines)",
    "device": "cpu or cuda (which GPUs the trainer sees is the step's lease, resources.gpus)",
    "checkpoint_interval": "epochs between checkpoints (default_hooks.checkpoint.interval)",
    "val_interval": "epochs between validations (train_cfg.val_interval)",
    "amp": "mixed precision (optim_wrapper.type AmpOptimWrapper)",
}
# The type of each user-mode option's value, as `options` gives it.
USER_TYPES = {
    "epochs": "int",
    "batch_size": "int",
    "lr": "float",
    "imgsz": "list",
    "device": "str",
    "checkpoint_interval": "int",
    "val_interval": "int",
    "amp": "bool",
}
# At most this many developer-mode options (the first by key); a config's leaves are rarely
# more than a few hundred.
MAX_OPTIONS = 2000


def fail(kind, message):
    print("KILN_ERROR " + json.dumps({"kind": kind, "message": message}), flush=True)
    sys.exit(2)


def number(key, value, kind, low, high=1_000_000):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail("invalid_input", f"override '{key}' must be a number, got {json.dumps(value)}")
    if value != value or value in (float("inf"), float("-inf")):
        fail("invalid_input", f"override '{key}' must be a finite number, got {value}")
    if kind is int and value != int(value):
        fail("invalid_input", f"override '{key}' must be a whole number, got {value}")
    if not (low <= value <= high):
        fail("invalid_input", f"override '{key}' must be between {low} and {high}, got {value}")
    return kind(value)


def path_exists(cfg, dotted):
    node = cfg.to_dict()
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            keys = list(node.keys()) if isinstance(node, dict) else []
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            return f"'{dotted}' is not a key of the resolved config ('{part}' not found{hint})"
    return None


# Transforms whose sizes are more than one image scale: `imgsz` cannot set them in user mode.
SIZED_OTHERWISE = ("RandomResize", "Mosaic", "CachedMosaic", "MixUp", "CachedMixUp", "RandomCrop",
                   "RandomChoiceResize", "Pad", "RandomAffine")


def leaf_datasets(node):
    """The datasets a dataloader reads, through wrappers (RepeatDataset's `dataset`,
    ConcatDataset's `datasets`)."""
    if not isinstance(node, dict):
        return []
    inner = []
    if isinstance(node.get("dataset"), dict):
        inner += leaf_datasets(node["dataset"])
    for d in node.get("datasets") or []:
        inner += leaf_datasets(d)
    return inner or [node]


def pipelines(cfg, split):
    loader = cfg.get(f"{split}_dataloader")
    dataset = loader.get("dataset") if isinstance(loader, dict) else None
    return [d.get("pipeline") or [] for d in leaf_datasets(dataset)]


def transforms(pipeline):
    for step in pipeline or []:
        if isinstance(step, dict):
            yield step
            yield from transforms(step.get("transforms"))


def set_scale(cfg, scale):
    """Sets every Resize of every dataloader's pipelines; refuses pipelines sized otherwise."""
    found, other = 0, set()
    for split in ("train", "val", "test"):
        for pipeline in pipelines(cfg, split):
            for step in transforms(pipeline):
                if step.get("type") in ("Resize", "FixShapeResize") and "scale" in step:
                    step["scale"] = scale
                    found += 1
                elif step.get("type") in SIZED_OTHERWISE:
                    other.add(step["type"])
    if other:
        fail("invalid_input", "override 'imgsz': this base config's pipelines size images with "
             f"{', '.join(sorted(other))} too, which one scale cannot set; use developer mode "
             "and set their keys")
    if not found:
        fail("invalid_input", "override 'imgsz': the base config's pipelines have no Resize "
             "with a scale to set")


def input_size(cfg):
    """The longer side of the validation pipeline's Resize: what a deployed model is fed."""
    for pipeline in pipelines(cfg, "val"):
        for step in transforms(pipeline):
            if step.get("type") in ("Resize", "FixShapeResize") and "scale" in step:
                return list(step["scale"])
    return None


def set_by_kiln(key):
    """Keys Kiln sets from the dataset: an override of them would be silently replaced."""
    parts = key.split(".")
    if parts[-1] == "num_classes" or key == "data_root":
        return True
    if parts[0].endswith("_evaluator") and parts[-1] == "ann_file":
        return True
    return parts[0].endswith("_dataloader") and any(
        p in ("data_root", "ann_file", "data_prefix", "metainfo") for p in parts[1:])


def not_an_option(key):
    """Why developer mode refuses a key of the resolved config whatever its value (None when it
    takes it): what Kiln sets itself, and MMEngine's own markers (`_scope_`, ...)."""
    if set_by_kiln(key):
        return ("Kiln sets it from the dataset (paths, classes, num_classes); give the release "
                "instead")
    if key == "work_dir":
        return "Kiln sets it to the training's folder"
    internal = [p for p in key.split(".") if p.startswith("_")]
    if internal:
        return f"'{internal[0]}' is internal to MMEngine's config, not an option"
    return None


def addressable(name):
    """Whether a dotted key can name this dict key (MMEngine splits overrides at the dots)."""
    return isinstance(name, str) and name != "" and "." not in name


def jsonable(value):
    return json.loads(json.dumps(value, default=str))


def value_type(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    return "any"


def developer_options(tree):
    """The keys developer mode takes, by key: the resolved config's leaves, dicts flattened with
    '.', a list (or an empty dict, or one with keys a dotted key cannot name) as one value.
    Returns (options, how many were left out beyond MAX_OPTIONS)."""
    leaves = []
    stack = [(k, v) for k, v in tree.items() if addressable(k)]
    while stack:
        key, value = stack.pop()
        if not_an_option(key):
            continue
        if isinstance(value, dict) and value and all(addressable(k) for k in value):
            stack.extend((f"{key}.{k}", v) for k, v in value.items())
        else:
            leaves.append((key, value))
    leaves.sort(key=lambda kv: kv[0])
    options = [{"key": key, "type": value_type(value), "default": jsonable(value), "user": False,
                "description": None} for key, value in leaves[:MAX_OPTIONS]]
    return options, max(0, len(leaves) - MAX_OPTIONS)


def user_options(cfg, device):
    """The user-mode options, with the value each has in the resolved config."""
    def get(*path):
        node = cfg
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    current = {
        "epochs": get("train_cfg", "max_epochs"),
        "batch_size": get("train_dataloader", "batch_size"),
        "lr": get("optim_wrapper", "optimizer", "lr"),
        "imgsz": input_size(cfg),
        "device": device,
        "checkpoint_interval": get("default_hooks", "checkpoint", "interval"),
        "val_interval": get("train_cfg", "val_interval"),
        "amp": get("optim_wrapper", "type") == "AmpOptimWrapper",
    }
    return [{"key": key, "type": USER_TYPES[key], "default": jsonable(current[key]), "user": True,
             "description": description} for key, description in USER_KEYS.items()]


def pick_split(names, wanted):
    for name in names:
        if name == wanted:
            return name
    for name in names:
        if name.startswith(wanted):
            return name
    return None


def set_dataset(cfg, dataset, chosen):
    root = dataset["data_root"].rstrip("/") + "/"
    annotations, images = dataset["annotations"], dataset["images"]
    names = list(annotations)
    classes = tuple(dataset["class_names"])
    for split in ("train", "val", "test"):
        name = pick_split(names, split) or (pick_split(names, "val") if split == "test" else None)
        if name is None:
            fail("invalid_input", f"the dataset has no {split} split (it has: {', '.join(names)}); "
                 "MMDetection trains on `train` and validates on `val` (or `valid`): add that "
                 "split to the release")
        chosen[split] = name
        loader = cfg.get(f"{split}_dataloader")
        targets = leaf_datasets(loader.get("dataset") if isinstance(loader, dict) else None)
        if not targets:
            fail("invalid_input", f"the base config has no {split}_dataloader.dataset to point at the data")
        for target in targets:
            target["data_root"] = root
            target["ann_file"] = os.path.relpath(annotations[name], root)
            target["data_prefix"] = dict(img=os.path.relpath(images[name], root) + "/")
            target["metainfo"] = dict(classes=classes)
        if split in ("val", "test"):
            evaluator = cfg.get(f"{split}_evaluator")
            for ev in evaluator if isinstance(evaluator, list) else [evaluator]:
                if isinstance(ev, dict) and "ann_file" in ev:
                    ev["ann_file"] = annotations[name]

    def set_num_classes(node):
        count = 0
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "num_classes":
                    node[k] = len(classes)
                    count += 1
                else:
                    count += set_num_classes(v)
        elif isinstance(node, list):
            for v in node:
                count += set_num_classes(v)
        return count

    set_num_classes(cfg.get("model"))
    cfg.data_root = root  # only for whoever reads the dump: the leaves above are what counts


def main():
    req = json.loads(sys.argv[1])
    try:
        from mmengine.config import Config
    except ImportError as e:
        fail("program_failed", f"MMEngine is not installed in {sys.executable} ({e}); install "
             "mmengine and mmdet there (see docs)")
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        fail("program_failed", f"MMDetection (mmdet) is not installed in {sys.executable}")
    train_script = os.path.join(list(spec.submodule_search_locations)[0], ".mim", "tools",
                                "train.py")

    try:
        cfg = Config.fromfile(req["base_config"])
    except Exception as e:  # MMEngine reports syntax errors, missing bases, ... as exceptions
        fail("invalid_input", f"base config {req['base_config']}: {type(e).__name__}: {e}")

    mode = req.get("mode", "user")
    overrides = req.get("overrides") or {}
    rejected = []
    device = None
    imgsz = None
    dotted = {}
    for key, value in overrides.items():
        refused = None if key in USER_KEYS else not_an_option(key)
        if refused:
            fail("invalid_input", f"override '{key}': {refused}")
        if mode == "user" and key not in USER_KEYS:
            why = ("only developer mode may set it" if path_exists(cfg, key) is None
                   else "unknown option")
            if req.get("report_rejected") and why.startswith("only"):
                rejected.append({"key": key, "reason": why})
                continue
            allowed = ", ".join(sorted(USER_KEYS))
            fail("invalid_input", f"override '{key}': {why} (user mode allows: {allowed})")
        # The safe options mean the same in developer mode.
        if key in USER_KEYS:
            if key == "epochs":
                dotted["train_cfg.max_epochs"] = number(key, value, int, 1)
            elif key == "batch_size":
                dotted["train_dataloader.batch_size"] = number(key, value, int, 1, 65536)
            elif key == "lr":
                lr = number(key, value, float, 0, 1000)
                if lr <= 0:
                    fail("invalid_input", f"override 'lr' must be above 0, got {value}")
                dotted["optim_wrapper.optimizer.lr"] = lr
            elif key == "checkpoint_interval":
                dotted["default_hooks.checkpoint.interval"] = number(key, value, int, 1)
            elif key == "val_interval":
                dotted["train_cfg.val_interval"] = number(key, value, int, 1)
            elif key == "imgsz":
                if isinstance(value, list) and len(value) == 2:
                    scale = tuple(number(key, v, int, 32, 16384) for v in value)
                else:
                    side = number(key, value, int, 32, 16384)
                    scale = (side, side)
                imgsz = scale
            elif key == "amp":
                if not isinstance(value, bool):
                    fail("invalid_input", f"override 'amp' must be true or false, got {json.dumps(value)}")
                if value:
                    dotted["optim_wrapper.type"] = "AmpOptimWrapper"
                    dotted["optim_wrapper.loss_scale"] = "dynamic"
            elif key == "device":
                if value not in ("cpu", "cuda"):
                    fail("invalid_input", f"override 'device' must be cpu or cuda, got "
                         f"{json.dumps(value)}; which GPUs a step gets is its lease "
                         "(`resources: {gpus: N}` in the workflow)")
                device = value
        else:
            problem = path_exists(cfg, key)
            if problem:
                fail("invalid_input", f"override {problem}")
            dotted[key] = value
    if dotted:
        cfg.merge_from_dict(dotted, allow_list_keys=True)
    if imgsz:
        set_scale(cfg, imgsz)
    if device == "cpu" and cfg.get("optim_wrapper", {}).get("type") == "AmpOptimWrapper":
        fail("invalid_input", "override 'amp': mixed precision needs a GPU (MMEngine's "
             "AmpOptimWrapper refuses to train on the CPU); drop amp or the cpu device")

    # The dataset, leaf by leaf: a top-level `data_root` in the config was resolved when the file
    # was read, so setting it would change nothing. A preview may have none: the base config's
    # dataset paths stay.
    dataset = req.get("dataset")
    chosen = {}
    if dataset:
        set_dataset(cfg, dataset, chosen)

    output_dir = req.get("output_dir")
    config_path = None
    if output_dir:
        cfg.work_dir = output_dir
        artifacts = os.path.join(output_dir, "artifacts")
        os.makedirs(artifacts, exist_ok=True)
        config_path = os.path.join(artifacts, "config.py")
        cfg.dump(config_path)
    command = [sys.executable, train_script, config_path or "<resolved config>", "--work-dir",
               output_dir or "<training-output>"]
    if output_dir:
        with open(os.path.join(output_dir, "artifacts", "command.txt"), "w") as f:
            f.write(" ".join(command) + "\n")
    scale = input_size(cfg)
    config = cfg.to_dict()
    developer, left_out = developer_options(config)
    result = {
        "config_path": config_path,
        "resolved_text": cfg.pretty_text,
        "command": command,
        "train_script": train_script,
        "epochs": cfg.get("train_cfg", {}).get("max_epochs"),
        "imgsz": scale,
        # One number for the registry: the longer side the images are resized to.
        "input_size": max(scale) if scale else None,
        "device": device,
        "splits": chosen,
        "rejected": rejected,
        # The resolved config as JSON (tuples become lists), and the format it is written in.
        "config": jsonable(config),
        "format": "python",
        # What a training form offers: the user-mode options, then developer mode's keys.
        "options": user_options(config, device) + developer,
        # Developer-mode keys beyond MAX_OPTIONS (the plugin logs it and drops the field).
        "options_left_out": left_out,
    }
    data = json.dumps(result).encode().hex()
    for at in range(0, len(data), 32768):
        print("KILN_RESULT_HEX " + data[at:at + 32768])
    print("KILN_RESULT_END", flush=True)


main()
