//! Turning a program's output chunks into clean text lines.
//!
//! Progress bars (tqdm and friends) redraw a line with `\r` + `ESC[K`; this
//! splitter treats `\r`, `\n` and `\r\n` as line ends, strips ANSI escape
//! sequences and drops the empty pieces, so every redraw comes out as one line.
//! Bytes are buffered until a line end, so multi-byte UTF-8 characters split
//! across chunks stay whole.

/// Splits output chunks into lines on `\n` and `\r`, stripping ANSI escapes.
#[derive(Debug, Default, Clone)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Cap on an unterminated line; longer ones are cut into pieces.
    max_line: usize,
}

impl LineSplitter {
    pub fn new() -> Self {
        LineSplitter {
            buf: Vec::new(),
            max_line: 64 * 1024,
        }
    }

    /// Feed a chunk; returns the lines it completed (stripped, empty ones dropped).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' || b == b'\r' {
                self.flush_into(&mut out);
            } else {
                self.buf.push(b);
                if self.max_line > 0 && self.buf.len() >= self.max_line {
                    self.flush_into(&mut out);
                }
            }
        }
        out
    }

    /// The unterminated rest, if any (e.g. a progress bar not yet redrawn), without consuming it.
    pub fn partial(&self) -> Option<String> {
        clean(&self.buf)
    }

    /// End of output: return the unterminated rest as a last line.
    pub fn finish(&mut self) -> Option<String> {
        let line = clean(&self.buf);
        self.buf.clear();
        line
    }

    fn flush_into(&mut self, out: &mut Vec<String>) {
        if let Some(line) = clean(&self.buf) {
            out.push(line);
        }
        self.buf.clear();
    }
}

fn clean(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let text = strip_ansi(&String::from_utf8_lossy(bytes));
    let text = text.trim_end();
    if text.trim().is_empty() {
        None
    } else {
        Some(text.to_string())
    }
}

/// Remove ANSI escape sequences (CSI, OSC, and the rest of ECMA-48) and other control
/// characters except tab.
pub fn strip_ansi(s: &str) -> String {
    // strip-ansi-escapes drops tabs too: strip between them.
    s.split('\t')
        .map(|piece| {
            strip_ansi_escapes::strip_str(piece)
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ansi() {
        assert_eq!(
            strip_ansi("\u{1b}[34m\u{1b}[1mengine/trainer: \u{1b}[0mepochs=2"),
            "engine/trainer: epochs=2"
        );
        assert_eq!(strip_ansi("\u{1b}[Kabc"), "abc");
        assert_eq!(strip_ansi("\u{1b}]0;title\u{7}x"), "x");
        assert_eq!(strip_ansi("a\tb ✅"), "a\tb ✅");
    }

    #[test]
    fn splits_on_cr_and_lf() {
        let mut s = LineSplitter::new();
        let mut lines = s.push(b"one\ntwo\r\n\r\x1b[K  1/2 50%\r\x1b[K  1/2 100%\n");
        lines.extend(s.push(b"tail"));
        assert_eq!(lines, vec!["one", "two", "  1/2 50%", "  1/2 100%"]);
        assert_eq!(s.partial().as_deref(), Some("tail"));
        assert_eq!(s.finish().as_deref(), Some("tail"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn keeps_utf8_split_across_chunks() {
        let bytes = "ok ✅\n".as_bytes();
        let mut s = LineSplitter::new();
        let mut lines = Vec::new();
        for b in bytes {
            lines.extend(s.push(std::slice::from_ref(b)));
        }
        assert_eq!(lines, vec!["ok ✅"]);
    }
}
