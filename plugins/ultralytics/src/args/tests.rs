use super::*;
use kiln_plugin_sdk::{ErrorKind, StepError};
use serde_json::{Map, Value, json};

const BASE: &str =
    "model: yolo11n.yaml\nepochs: 50\nimgsz: 640\nbatch: 16\nplots: false\nworkers: 0\n";
const OUT: &str = "/ws/projects/demo/model/training/run1";

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn resolve_with(mode: Mode, overrides: Value) -> Result<Map<String, Value>, StepError> {
    let overrides = obj(overrides);
    resolve(&ResolveRequest {
        mode,
        data: "/ws/projects/demo/training_data/data.yaml",
        overrides: &overrides,
        base: parse_base_config("base", BASE).unwrap(),
        output_host: OUT,
        report_rejected: false,
    })
}

#[test]
fn user_mode_can_report_rejected_keys_instead_of_failing() {
    let overrides = obj(json!({"epochs": 2, "lr0": 0.02, "mosaic": 0}));
    let req = ResolveRequest {
        mode: Mode::User,
        data: "/d/data.yaml",
        overrides: &overrides,
        base: parse_base_config("base", BASE).unwrap(),
        output_host: OUT,
        report_rejected: true,
    };
    let r = resolve_reporting(&req).unwrap();
    assert_eq!(r.config["epochs"], json!(2));
    assert!(!r.config.contains_key("lr0") && !r.config.contains_key("mosaic"));
    let keys: Vec<&str> = r.rejected.iter().map(|x| x.key.as_str()).collect();
    assert_eq!(keys, ["lr0", "mosaic"]);
    assert!(
        r.rejected[0].reason.contains("developer mode"),
        "{:?}",
        r.rejected
    );
    // Unknown, reserved and mistyped keys still fail.
    for bad in [
        json!({"epoch": 3}),
        json!({"data": "x"}),
        json!({"epochs": 0}),
    ] {
        let overrides = obj(bad.clone());
        let e = resolve_reporting(&ResolveRequest {
            overrides: &overrides,
            ..req.clone()
        })
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
    }
    // Developer mode rejects nothing; without the flag user mode still fails.
    let dev = resolve_reporting(&ResolveRequest {
        mode: Mode::Developer,
        ..req.clone()
    })
    .unwrap();
    assert!(dev.rejected.is_empty());
    assert_eq!(dev.config["lr0"], json!(0.02));
    assert!(
        resolve_reporting(&ResolveRequest {
            report_rejected: false,
            ..req
        })
        .is_err()
    );
}

#[test]
fn known_keys_match_the_real_args_yaml() {
    let yaml = include_str!("../../tests/data/ultralytics-8.4.190-args.yaml");
    let keys: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .collect();
    let ours: Vec<&str> = KNOWN_KEYS.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, ours);
    // Every value of the real args.yaml passes our checks.
    let all: Map<String, Value> = serde_norway::from_str(yaml).unwrap();
    for (k, v) in &all {
        if !v.is_null() {
            check_value("args.yaml", k, v).unwrap();
        }
    }
}

#[test]
fn user_mode_merges_allowed_keys() {
    let c = resolve_with(
        Mode::User,
        json!({"epochs": 2, "imgsz": "64", "batch": 4, "device": "cpu", "amp": false}),
    )
    .unwrap();
    assert_eq!(c["epochs"], json!(2));
    assert_eq!(c["imgsz"], json!(64));
    assert_eq!(c["batch"], json!(4));
    assert_eq!(c["device"], json!("cpu"));
    assert_eq!(c["amp"], json!(false));
    assert_eq!(c["model"], json!("yolo11n.yaml"));
    assert_eq!(
        c["data"],
        json!("/ws/projects/demo/training_data/data.yaml")
    );
    assert_eq!(c["project"], json!("/ws/projects/demo/model/training"));
    assert_eq!(c["name"], json!("run1"));
    assert_eq!(c["exist_ok"], json!(true));
}

#[test]
fn user_mode_rejects_developer_keys() {
    let e = resolve_with(Mode::User, json!({"lr0": 0.02})).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message.contains("'lr0'"), "{}", e.message);
    assert!(e.message.contains("epochs, imgsz, batch"), "{}", e.message);
    assert!(e.message.contains("mode: developer"), "{}", e.message);
    // Developer mode allows it.
    let c = resolve_with(Mode::Developer, json!({"lr0": 0.02, "mosaic": 0})).unwrap();
    assert_eq!(c["lr0"], json!(0.02));
    assert_eq!(c["mosaic"], json!(0.0));
}

#[test]
fn unknown_keys_are_rejected_in_both_modes() {
    for mode in [Mode::User, Mode::Developer] {
        let e = resolve_with(mode, json!({"epoch": 3})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains("'epoch' is not an Ultralytics argument"));
        assert!(e.message.contains("did you mean 'epochs'"), "{}", e.message);
    }
    let e = resolve_with(Mode::Developer, json!({"zzzzzzzzzz": 1})).unwrap_err();
    assert!(!e.message.contains("did you mean"), "{}", e.message);
}

#[test]
fn plugin_keys_cannot_be_overridden() {
    for key in [
        "data", "project", "name", "exist_ok", "task", "mode", "resume",
    ] {
        let e = resolve_with(Mode::Developer, json!({ key: "x" })).unwrap_err();
        assert!(
            e.message.contains("cannot be overridden"),
            "{key}: {}",
            e.message
        );
    }
    let e = parse_base_config("detect/default.yaml", "data: x.yaml\n").unwrap_err();
    assert!(e.message.contains("'data'"));
}

#[test]
fn types_are_checked() {
    for bad in [
        json!({"epochs": 0}),
        json!({"epochs": "many"}),
        json!({"epochs": 2.5}),
        json!({"imgsz": -1}),
        json!({"batch": 0}),
        json!({"batch": 1.5}),
        json!({"amp": "yes"}),
        json!({"patience": -3}),
        json!({"device": {"gpu": 0}}),
        json!({"save": 1}),
    ] {
        let e = resolve_with(Mode::User, bad.clone()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
        let key = bad.as_object().unwrap().keys().next().unwrap().clone();
        assert!(e.message.contains(&format!("'{key}'")), "{}", e.message);
    }
    let c = resolve_with(
        Mode::User,
        json!({"batch": -1, "epochs": 3.0, "amp": "True", "device": 0}),
    )
    .unwrap();
    assert_eq!(c["batch"], json!(-1));
    assert_eq!(c["epochs"], json!(3));
    assert_eq!(c["amp"], json!(true));
    let c = resolve_with(Mode::User, json!({"batch": 0.7, "device": [0, 1]})).unwrap();
    assert_eq!(c["batch"], json!(0.7));
    assert!(resolve_with(Mode::Developer, json!({"workers": "two"})).is_err());
    assert!(resolve_with(Mode::Developer, json!({"optimizer": true})).is_err());
}

#[test]
fn renders_the_cli_like_ultralytics_expects() {
    let mut c = resolve_with(
        Mode::Developer,
        json!({"epochs": 2, "imgsz": 64, "batch": 4, "device": "cpu", "amp": false,
               "freeze": null, "classes": [0, 1], "lr0": 0.01, "fraction": 1.0}),
    )
    .unwrap();
    c.insert("optimizer".into(), json!("auto"));
    let args = train_args("detect", &c);
    assert_eq!(
        args,
        vec![
            "detect",
            "train",
            "model=yolo11n.yaml",
            "data=/ws/projects/demo/training_data/data.yaml",
            "amp=False",
            "batch=4",
            "classes=[0,1]",
            "device=cpu",
            "epochs=2",
            "fraction=1.0",
            "freeze=None",
            "imgsz=64",
            "lr0=0.01",
            "optimizer=auto",
            "plots=False",
            "workers=0",
            "project=/ws/projects/demo/model/training",
            "name=run1",
            "exist_ok=True",
        ]
    );
    let p = preview("yolo", &args);
    assert!(p.starts_with("yolo detect train model=yolo11n.yaml data=/ws/"));
    assert!(p.ends_with("project=/ws/projects/demo/model/training name=run1 exist_ok=True"));
    assert!(p.contains(" 'classes=[0,1]' "), "{p}");
    assert_eq!(render_value(&json!([["a", true]])), "[['a',True]]");
}

#[test]
fn config_round_trips_through_train() {
    let c = resolve_with(Mode::User, json!({"epochs": 2})).unwrap();
    // What train receives is the JSON object; the arguments stay identical.
    let again = check_config(&obj(Value::Object(c.clone()))).unwrap();
    assert_eq!(train_args("segment", &c), train_args("segment", &again));
    assert!(check_config(&obj(json!({"task": "detect"}))).is_err());
    assert!(check_config(&obj(json!({"bogus": 1}))).is_err());
    assert!(check_config(&obj(json!({"epochs": null}))).is_err());
}

#[test]
fn yaml_and_ints() {
    let c = resolve_with(Mode::User, json!({"epochs": 2, "imgsz": 64})).unwrap();
    let y = to_yaml("detect", &c).unwrap();
    assert!(
        y.starts_with("task: detect\nmode: train\nmodel: yolo11n.yaml\n"),
        "{y}"
    );
    assert!(y.contains("exist_ok: true"));
    let back: Map<String, Value> = serde_norway::from_str(&y).unwrap();
    assert_eq!(back["epochs"], json!(2));
    assert_eq!(int_of(&c, "epochs", DEFAULT_EPOCHS), 2);
    assert_eq!(int_of(&c, "imgsz", DEFAULT_IMGSZ), 64);
    assert_eq!(int_of(&Map::new(), "imgsz", DEFAULT_IMGSZ), 640);
}

#[test]
fn output_dir_split() {
    assert_eq!(
        split_output_dir("/a/b/run1/"),
        ("/a/b".to_string(), "run1".to_string())
    );
    assert_eq!(
        split_output_dir("/run1"),
        ("/".to_string(), "run1".to_string())
    );
    assert_eq!(resume_args("detect", "/o/weights/last.pt")[2], "resume");
}

#[test]
fn options_offer_every_overridable_key_with_the_resolved_value() {
    let c = resolve_with(Mode::User, json!({"epochs": 2})).unwrap();
    let opts = options(&c);
    let keys: Vec<&str> = opts.iter().map(|o| o["key"].as_str().unwrap()).collect();
    // The user-mode keys first, in their order, then the rest by name.
    assert_eq!(keys[..USER_KEYS.len()], *USER_KEYS);
    let rest = &keys[USER_KEYS.len()..];
    assert!(rest.windows(2).all(|w| w[0] < w[1]), "{rest:?}");
    // Every known key but the plugin's own, once.
    assert_eq!(keys.len(), KNOWN_KEYS.len() - RESERVED_KEYS.len());
    for (reserved, _) in RESERVED_KEYS {
        assert!(!keys.contains(reserved), "{reserved}");
    }
    let find = |key: &str| opts.iter().find(|o| o["key"] == key).unwrap();
    // The override, the base config's value, nothing for what neither sets.
    assert_eq!(
        *find("epochs"),
        json!({"key": "epochs", "type": "int", "default": 2, "user": true,
               "description": "passes over the training set"})
    );
    assert_eq!(find("imgsz")["default"], json!(640));
    assert_eq!(find("device")["default"], Value::Null);
    assert_eq!(find("device")["type"], "str");
    assert_eq!(find("amp")["type"], "bool");
    let lr0 = find("lr0");
    assert_eq!(lr0["user"], json!(false));
    assert_eq!(lr0["type"], "float");
    assert_eq!(lr0["default"], Value::Null);
    assert_eq!(find("workers")["default"], json!(0));
    assert_eq!(find("workers")["type"], "int");
    assert_eq!(find("optimizer")["type"], "str");
    assert_eq!(find("freeze")["type"], "any");
    for o in &opts {
        let user = o["user"].as_bool().unwrap();
        assert_eq!(user, USER_KEYS.contains(&o["key"].as_str().unwrap()));
        if user {
            assert!(o["description"].is_string(), "{o}");
        }
        assert!(
            ["int", "float", "bool", "str", "list", "any"].contains(&o["type"].as_str().unwrap()),
            "{o}"
        );
    }
}

#[test]
fn every_option_is_accepted_with_its_default() {
    // A form sends back what it offered: in developer mode each key is accepted, with the value
    // the base config gave it.
    let c = resolve_with(Mode::Developer, json!({})).unwrap();
    for o in options(&c) {
        let key = o["key"].as_str().unwrap();
        assert!(kind_of(key).is_some(), "{key}");
        if !o["default"].is_null() {
            let overrides = json!({ key: o["default"].clone() });
            resolve_with(Mode::Developer, overrides.clone())
                .unwrap_or_else(|e| panic!("{overrides}: {}", e.message));
        }
    }
    // Descriptions name known keys that a workflow may set.
    for (key, _) in super::options::DESCRIPTIONS {
        assert!(kind_of(key).is_some(), "{key}");
        assert!(!RESERVED_KEYS.iter().any(|(r, _)| r == key), "{key}");
        let times = super::options::DESCRIPTIONS
            .iter()
            .filter(|(k, _)| k == key)
            .count();
        assert_eq!(times, 1, "{key}");
    }
}
