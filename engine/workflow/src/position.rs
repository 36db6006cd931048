//! Positions of YAML nodes, looked up by path (`steps[2].needs[0]`).
//!
//! `serde_norway` has no spanned values, so the source is read a second time with
//! `saphyr-parser`'s event API and the start of every node (and of every mapping key)
//! is recorded under its path.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, Span};

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the document, from the root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Path(pub(crate) Vec<Seg>);

impl Path {
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    fn parent(&self) -> Option<Self> {
        let mut segs = self.0.clone();
        segs.pop().map(|_| Self(segs))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => write!(f, "{key}")?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Pos {
    const START: Pos = Pos { line: 1, column: 1 };

    fn from_span(span: Span) -> Self {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Start of the node.
    value: Pos,
    /// Start of the key, for nodes that are mapping values.
    key: Option<Pos>,
}

/// Path → position of every node of a YAML document.
#[derive(Debug, Clone, Default)]
pub(crate) struct PositionIndex {
    entries: HashMap<Path, Entry>,
    /// Keys repeated in a mapping (the second occurrence).
    duplicate_keys: Vec<Pos>,
}

#[derive(Clone, Copy)]
enum Kind {
    Mapping,
    Sequence,
}

enum Frame {
    Mapping {
        path: Path,
        /// The key read, waiting for its value; `None` while expecting a key.
        pending_key: Option<(Option<String>, Pos)>,
    },
    Sequence {
        path: Path,
        next: usize,
    },
    /// A complex mapping key (a mapping or sequence used as key): not indexed.
    Skip {
        depth: usize,
    },
}

impl PositionIndex {
    /// Indexes the first document of `source`. On a YAML error the index holds what was
    /// read before it (callers report YAML errors from `serde_norway`).
    pub(crate) fn build(source: &str) -> Self {
        let mut index = PositionIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut seen_document = false;
        for event in Parser::new_from_str(source) {
            let Ok((event, span)) = event else { break };
            let pos = Pos::from_span(span);
            match event {
                Event::DocumentStart(_) => {
                    if seen_document {
                        break;
                    }
                    seen_document = true;
                }
                Event::Scalar(value, ..) => {
                    index.node(&mut stack, pos, Some(value.into_owned()), None);
                }
                Event::Alias(_) => index.node(&mut stack, pos, None, None),
                Event::MappingStart(..) => index.node(&mut stack, pos, None, Some(Kind::Mapping)),
                Event::SequenceStart(..) => {
                    index.node(&mut stack, pos, None, Some(Kind::Sequence));
                }
                Event::MappingEnd | Event::SequenceEnd => match stack.last_mut() {
                    Some(Frame::Skip { depth }) if *depth > 1 => *depth -= 1,
                    _ => {
                        stack.pop();
                    }
                },
                _ => {}
            }
        }
        index
    }

    /// Records a node starting at `pos`; containers push a frame.
    fn node(
        &mut self,
        stack: &mut Vec<Frame>,
        pos: Pos,
        scalar: Option<String>,
        container: Option<Kind>,
    ) {
        let push = |stack: &mut Vec<Frame>, path: Option<Path>| match (container, path) {
            (None, _) => {}
            (Some(_), None) => stack.push(Frame::Skip { depth: 1 }),
            (Some(Kind::Sequence), Some(path)) => stack.push(Frame::Sequence { path, next: 0 }),
            (Some(Kind::Mapping), Some(path)) => stack.push(Frame::Mapping {
                path,
                pending_key: None,
            }),
        };
        match stack.last_mut() {
            None => {
                self.entries.insert(
                    Path::root(),
                    Entry {
                        value: pos,
                        key: None,
                    },
                );
                push(stack, Some(Path::root()));
            }
            Some(Frame::Skip { depth }) => {
                if container.is_some() {
                    *depth += 1;
                }
            }
            Some(Frame::Sequence { path, next }) => {
                let path = path.index(*next);
                *next += 1;
                self.entries.insert(
                    path.clone(),
                    Entry {
                        value: pos,
                        key: None,
                    },
                );
                push(stack, Some(path));
            }
            Some(Frame::Mapping { path, pending_key }) => match pending_key.take() {
                None => {
                    // A key. Complex keys are skipped, and so is their value.
                    *pending_key = Some((scalar, pos));
                    if container.is_some() {
                        stack.push(Frame::Skip { depth: 1 });
                    }
                }
                Some((key, key_pos)) => {
                    let path = key.map(|key| path.key(&key));
                    if let Some(path) = &path {
                        if self.entries.contains_key(path) {
                            self.duplicate_keys.push(key_pos);
                            push(stack, None);
                            return;
                        }
                        self.entries.insert(
                            path.clone(),
                            Entry {
                                value: pos,
                                key: Some(key_pos),
                            },
                        );
                    }
                    push(stack, path);
                }
            },
        }
    }

    /// Start of the node at `path`, or of its nearest indexed ancestor.
    pub(crate) fn value(&self, path: &Path) -> Pos {
        let mut path = path.clone();
        loop {
            if let Some(entry) = self.entries.get(&path) {
                return entry.value;
            }
            match path.parent() {
                Some(parent) => path = parent,
                None => return Pos::START,
            }
        }
    }

    /// The first key repeated in a mapping, if any.
    pub(crate) fn first_duplicate_key(&self) -> Option<Pos> {
        self.duplicate_keys.first().copied()
    }

    /// Start of the key of the mapping entry at `path` (falls back like [`Self::value`]).
    pub(crate) fn key(&self, path: &Path) -> Pos {
        match self.entries.get(path) {
            Some(Entry { key: Some(key), .. }) => *key,
            _ => self.value(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn indexes_nested_nodes() {
        let source = "name: x\nsteps:\n  - id: a\n    needs: [b, c]\n    with:\n      k: {x: 1}\n  - id: b\n";
        let index = PositionIndex::build(source);
        let root = Path::root();
        assert_eq!(index.value(&root.key("name")), pos(1, 7));
        assert_eq!(index.key(&root.key("name")), pos(1, 1));
        let step0 = root.key("steps").index(0);
        assert_eq!(index.value(&step0.key("id")), pos(3, 9));
        assert_eq!(index.value(&step0.key("needs").index(1)), pos(4, 16));
        assert_eq!(index.key(&step0.key("with").key("k")), pos(6, 7));
        assert_eq!(
            index.value(&step0.key("with").key("k").key("x")),
            pos(6, 14)
        );
        assert_eq!(index.key(&root.key("steps").index(1).key("id")), pos(7, 5));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(index.value(&step0.key("id").index(3)), pos(3, 9));
    }

    #[test]
    fn skips_complex_keys() {
        let source = "? [a, b]\n: {x: 1}\nc: 2\n";
        let index = PositionIndex::build(source);
        assert_eq!(index.value(&Path::root().key("c")), pos(3, 4));
    }

    #[test]
    fn finds_duplicate_keys() {
        let index = PositionIndex::build("a: 1\nb:\n  c: 1\n  c: {d: 2}\n");
        assert_eq!(index.first_duplicate_key(), Some(pos(4, 3)));
        assert_eq!(index.value(&Path::root().key("b").key("c")), pos(3, 6));
    }

    #[test]
    fn malformed_yaml_does_not_panic() {
        let index = PositionIndex::build("a: [1, 2\nb: {");
        assert_eq!(index.value(&Path::root().key("zzz")), pos(1, 1));
    }
}
