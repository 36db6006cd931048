//! `kiln-supervise supervise STATE_DIR`: the process supervisor alone (see kiln-supervisor), a
//! small executable that the engine starts for every launched program instead of the whole
//! `kiln` binary: it starts in a fraction of the time. `kiln supervise STATE_DIR` does the same
//! and is used when this executable is not beside `kiln`.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let dir = match args.as_slice() {
        [sub, dir] if sub == "supervise" => dir,
        _ => {
            eprintln!("usage: kiln-supervise supervise STATE_DIR (started by the kiln engine)");
            return ExitCode::from(2);
        }
    };
    ExitCode::from(kiln_supervisor::supervise_main(Path::new(dir)) as u8)
}
