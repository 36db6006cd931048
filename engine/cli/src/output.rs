//! Output that a closed pipe cannot crash.
//!
//! Commands that only read (`runs list`, `logs`, `schema`, …) behave like other Unix tools:
//! the first write to a closed pipe ends them with SIGPIPE (`kiln runs list | head`), quietly,
//! with the status a shell reports for it (141). Commands that change state (`run`, `resume`,
//! `runs retry|cancel|delete`, `serve`, `token create|revoke`) must finish their work whatever
//! happens to their output, so for them SIGPIPE stays ignored and what cannot be written is
//! dropped. Everything is printed through [`outln!`] and [`errln!`], never `println!`, which
//! panics on a closed pipe and would abort an engine in the middle of a run.

/// `println!` that drops what cannot be written, and remembers that it could not (a full disk,
/// an I/O error: a reading command then fails; see [`write_failed`]).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::output::note_failure(e);
        }
    }};
}

/// The first error writing stdout, other than a closed pipe (which ends a reading command by
/// SIGPIPE and is no error for the others).
static WRITE_FAILED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn note_failure(e: std::io::Error) {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        let _ = WRITE_FAILED.set(e.to_string());
    }
}

/// Why the output could not be written, if it could not.
pub fn write_failed() -> Option<&'static str> {
    WRITE_FAILED.get().map(String::as_str)
}

/// `eprintln!` that drops what cannot be written. The line is written with one `write`:
/// stderr is unbuffered, and `writeln!` would write each piece of the format on its own.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

pub(crate) use {errln, outln};

/// A writer that drops what cannot be written (for the log lines tracing writes to stderr:
/// its own fallback panics on a closed pipe).
pub struct Lossy<W>(pub W);

impl<W: std::io::Write> std::io::Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Lets SIGPIPE end the process, as it does other tools (Rust ignores it by default).
pub fn die_on_sigpipe() {
    // SAFETY: called at start-up, before any thread exists; setting a signal's disposition to
    // its default has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An error and its causes on one line, each said once: `a: b: c`, where anyhow's `{:#}`
/// repeats a cause that an error's own message already includes (sqlx's and the store's
/// errors put their source in their message), which read as
/// `x: error with configuration: y: error with configuration: y: y`.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    /// An error whose message includes its source, as sqlx's and the store's do.
    #[derive(Debug)]
    struct Outer(&'static str, std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot open {}: {}", self.0, self.1)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Outer("kiln.db", io)).context("opening the store");
        assert_eq!(
            super::error_chain(&e),
            "opening the store: cannot open kiln.db: disk on fire"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_chain(&plain), "outer: inner");
    }
}
