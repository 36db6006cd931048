//! A one-line, shell-style preview of a command line.

/// A shell-style one-line preview of `program args...` (quoted only where a shell needs it).
pub fn preview(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `arg` for a POSIX shell, leaving `key=value` readable. (shell-words and shlex both
/// quote every `=`, which would quote every Ultralytics argument.)
fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}
