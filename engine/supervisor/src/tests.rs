use super::*;

#[test]
fn identity_of_self_is_running_and_survives_recycled_pid_check() {
    let me = ProcessIdentity::of(std::process::id() as i32).expect("own /proc entry");
    assert!(me.is_running());
    let impostor = ProcessIdentity {
        start_ticks: me.start_ticks + 1,
        ..me
    };
    assert!(
        !impostor.is_running(),
        "a different start time is another process"
    );
}

#[test]
fn exit_records_describe_themselves() {
    let mut r = ExitRecord {
        code: Some(1),
        signal: None,
        start_error: None,
        finished_at: String::new(),
        forwarded_signal: None,
    };
    assert_eq!(r.describe(), "exit code 1");
    assert!(!r.success());
    r.code = None;
    r.signal = Some(15);
    assert_eq!(r.describe(), "killed by signal 15 (SIGTERM)");
    r.start_error = Some("No such file".into());
    assert_eq!(r.describe(), "could not start: No such file");
}

#[test]
fn records_are_written_whole_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    assert!(records::read_exit(dir.path()).unwrap().is_none());
    let r = ExitRecord {
        code: Some(0),
        signal: None,
        start_error: None,
        finished_at: "now".into(),
        forwarded_signal: None,
    };
    records::write_json_atomic(
        &dir.path().join(records::EXIT_FILE),
        &r,
        records::Durability::Machine,
    )
    .unwrap();
    assert_eq!(records::read_exit(dir.path()).unwrap(), Some(r));
    assert!(!dir.path().join("exit.json.tmp").exists());
}

/// A record left unreadable by a machine crash (written before this boot) is absent; one
/// unreadable since this boot is an error, never guessed at.
#[test]
fn unreadable_records_are_absent_only_from_before_the_last_boot() {
    let dir = tempfile::tempdir().unwrap();
    let child = dir.path().join(records::CHILD_FILE);
    std::fs::write(&child, b"").unwrap();
    assert!(records::read_child(dir.path()).is_err());
    let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
    std::fs::File::options()
        .write(true)
        .open(&child)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    assert_eq!(records::read_child(dir.path()).unwrap(), None);
}

#[test]
fn a_missing_group_is_not_alive() {
    assert!(!group_alive(i32::MAX - 7));
}
