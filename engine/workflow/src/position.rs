//! Positions of YAML nodes, looked up by path (`steps[2].needs[0]`).
//!
//! `serde_norway` has no spanned values, so the source is read a second time with
//! `saphyr-parser`'s event API and the start of every node (and of every mapping key)
//! is recorded under its path.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, Span};

use crate::limits::{MAX_YAML_DEPTH, MAX_YAML_NODES};

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
struct Node {
    /// Start of the node.
    value: Pos,
    /// Start of the key, for nodes that are mapping values.
    key: Option<Pos>,
}

/// Every node of a YAML document with its position, as a tree: memory is linear in the
/// number of nodes whatever their depth (a node stores its segment, not its whole path).
#[derive(Debug, Clone, Default)]
pub(crate) struct PositionIndex {
    /// Node 0 is the document's root, when there is one.
    nodes: Vec<Node>,
    /// (parent, segment) → child.
    children: HashMap<(usize, Seg), usize>,
    /// Keys repeated in a mapping (the second occurrence).
    duplicate_keys: Vec<Pos>,
}

/// A document beyond [`MAX_YAML_DEPTH`] levels of nesting or [`MAX_YAML_NODES`] nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooLarge {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

#[derive(Clone, Copy)]
enum Kind {
    Mapping,
    Sequence,
}

enum Frame {
    Mapping {
        node: usize,
        /// The key read, waiting for its value; `None` while expecting a key.
        pending_key: Option<(Option<String>, Pos)>,
    },
    Sequence {
        node: usize,
        next: usize,
    },
    /// A complex mapping key (a mapping or sequence used as key), or the value of a
    /// repeated key: not indexed.
    Skip {
        depth: usize,
    },
}

fn too_deep() -> String {
    format!("mappings and lists nest more than {MAX_YAML_DEPTH} levels deep")
}

impl PositionIndex {
    /// Indexes the first document of `source`. On a YAML error the index holds what was
    /// read before it (callers report YAML errors from `serde_norway`). Fails, before any
    /// deep structure is built, when the document nests deeper than [`MAX_YAML_DEPTH`] or has
    /// more than [`MAX_YAML_NODES`] nodes.
    pub(crate) fn build(source: &str) -> Result<Self, TooLarge> {
        let mut index = PositionIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut seen_document = false;
        let mut nesting = 0usize;
        let mut count = 0usize;
        for event in Parser::new_from_str(source) {
            let (event, span) = match event {
                Ok(event) => event,
                // The scanner's own bound on flow nesting, met while it looks ahead: report
                // it here, since the YAML library reads such nesting in quadratic time.
                Err(err) if err.info().contains("recursion limit") => {
                    return Err(TooLarge {
                        pos: Pos {
                            line: err.marker().line(),
                            column: err.marker().col() + 1,
                        },
                        message: too_deep(),
                    });
                }
                Err(_) => break,
            };
            let pos = Pos::from_span(span);
            match event {
                Event::DocumentStart(_) => {
                    if seen_document {
                        break;
                    }
                    seen_document = true;
                }
                Event::Scalar(..)
                | Event::Alias(_)
                | Event::MappingStart(..)
                | Event::SequenceStart(..) => {
                    count += 1;
                    if count > MAX_YAML_NODES {
                        return Err(TooLarge {
                            pos,
                            message: format!("more than {MAX_YAML_NODES} YAML nodes"),
                        });
                    }
                    match event {
                        Event::Scalar(value, ..) => {
                            index.node(&mut stack, pos, Some(value.into_owned()), None);
                        }
                        Event::Alias(_) => index.node(&mut stack, pos, None, None),
                        Event::MappingStart(..) | Event::SequenceStart(..) => {
                            nesting += 1;
                            if nesting > MAX_YAML_DEPTH {
                                return Err(TooLarge {
                                    pos,
                                    message: too_deep(),
                                });
                            }
                            let kind = if matches!(event, Event::MappingStart(..)) {
                                Kind::Mapping
                            } else {
                                Kind::Sequence
                            };
                            index.node(&mut stack, pos, None, Some(kind));
                        }
                        _ => unreachable!("matched above"),
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    nesting = nesting.saturating_sub(1);
                    match stack.last_mut() {
                        Some(Frame::Skip { depth }) if *depth > 1 => *depth -= 1,
                        _ => {
                            stack.pop();
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(index)
    }

    fn add(&mut self, parent: Option<(usize, Seg)>, value: Pos, key: Option<Pos>) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node { value, key });
        if let Some(edge) = parent {
            self.children.insert(edge, id);
        }
        id
    }

    /// Records a node starting at `pos`; containers push a frame.
    fn node(
        &mut self,
        stack: &mut Vec<Frame>,
        pos: Pos,
        scalar: Option<String>,
        container: Option<Kind>,
    ) {
        let push = |stack: &mut Vec<Frame>, node: Option<usize>| match (container, node) {
            (None, _) => {}
            (Some(_), None) => stack.push(Frame::Skip { depth: 1 }),
            (Some(Kind::Sequence), Some(node)) => stack.push(Frame::Sequence { node, next: 0 }),
            (Some(Kind::Mapping), Some(node)) => stack.push(Frame::Mapping {
                node,
                pending_key: None,
            }),
        };
        match stack.last_mut() {
            None => {
                let node = self.add(None, pos, None);
                push(stack, Some(node));
            }
            Some(Frame::Skip { depth }) => {
                if container.is_some() {
                    *depth += 1;
                }
            }
            Some(Frame::Sequence { node, next }) => {
                let edge = (*node, Seg::Index(*next));
                *next += 1;
                let node = self.add(Some(edge), pos, None);
                push(stack, Some(node));
            }
            Some(Frame::Mapping { node, pending_key }) => match pending_key.take() {
                None => {
                    // A key. Complex keys are skipped, and so is their value.
                    *pending_key = Some((scalar, pos));
                    if container.is_some() {
                        stack.push(Frame::Skip { depth: 1 });
                    }
                }
                Some((key, key_pos)) => {
                    let parent = *node;
                    let child = match key {
                        Some(key) => {
                            let edge = (parent, Seg::Key(key));
                            if self.children.contains_key(&edge) {
                                self.duplicate_keys.push(key_pos);
                                None
                            } else {
                                Some(self.add(Some(edge), pos, Some(key_pos)))
                            }
                        }
                        None => None,
                    };
                    push(stack, child);
                }
            },
        }
    }

    /// The node at `path`, or its nearest indexed ancestor, and whether it is exact.
    fn find(&self, path: &Path) -> Option<(&Node, bool)> {
        let mut current = 0;
        self.nodes.first()?;
        for seg in &path.0 {
            match self.children.get(&(current, seg.clone())) {
                Some(&child) => current = child,
                None => return Some((&self.nodes[current], false)),
            }
        }
        Some((&self.nodes[current], true))
    }

    /// Start of the node at `path`, or of its nearest indexed ancestor.
    pub(crate) fn value(&self, path: &Path) -> Pos {
        self.find(path).map_or(Pos::START, |(node, _)| node.value)
    }

    /// The first key repeated in a mapping, if any.
    pub(crate) fn first_duplicate_key(&self) -> Option<Pos> {
        self.duplicate_keys.first().copied()
    }

    /// Start of the key of the mapping entry at `path` (falls back like [`Self::value`]).
    pub(crate) fn key(&self, path: &Path) -> Pos {
        match self.find(path) {
            Some((node, true)) => node.key.unwrap_or(node.value),
            Some((node, false)) => node.value,
            None => Pos::START,
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
        let index = PositionIndex::build(source).unwrap();
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
        let index = PositionIndex::build(source).unwrap();
        assert_eq!(index.value(&Path::root().key("c")), pos(3, 4));
    }

    #[test]
    fn finds_duplicate_keys() {
        let index = PositionIndex::build("a: 1\nb:\n  c: 1\n  c: {d: 2}\n").unwrap();
        assert_eq!(index.first_duplicate_key(), Some(pos(4, 3)));
        assert_eq!(index.value(&Path::root().key("b").key("c")), pos(3, 6));
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let ok = format!(
            "{}1{}",
            "[".repeat(MAX_YAML_DEPTH),
            "]".repeat(MAX_YAML_DEPTH)
        );
        assert!(PositionIndex::build(&ok).is_ok());
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_YAML_DEPTH + 1),
            "]".repeat(MAX_YAML_DEPTH + 1)
        );
        let err = PositionIndex::build(&deep).unwrap_err();
        assert_eq!(err.pos, pos(1, MAX_YAML_DEPTH + 1));
        let block: String = (0..=MAX_YAML_DEPTH)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let err = PositionIndex::build(&block).unwrap_err();
        assert_eq!(err.pos.line, MAX_YAML_DEPTH + 1);
        let wide = format!("[{}]", "1,".repeat(MAX_YAML_NODES));
        assert!(
            PositionIndex::build(&wide)
                .unwrap_err()
                .message
                .contains("YAML nodes")
        );
    }

    #[test]
    fn malformed_yaml_does_not_panic() {
        let index = PositionIndex::build("a: [1, 2\nb: {").unwrap();
        assert_eq!(index.value(&Path::root().key("zzz")), pos(1, 1));
    }
}
