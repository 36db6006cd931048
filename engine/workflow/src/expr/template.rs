//! A `with` string: literal text and `${{ … }}` expressions.
//!
//! Only `${{` starts something; every other character, `{%`, `{#` and `}}` included, is
//! literal text.

use super::syntax::{Expr, SyntaxError, parse_at};

pub(crate) const START: &str = "${{";

/// A piece of a string.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part<'t> {
    Text(&'t str),
    Expr(Expr),
}

/// A parsed string.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template<'t> {
    pub(crate) parts: Vec<Part<'t>>,
}

impl<'t> Template<'t> {
    /// Splits `text` into literal text and expressions. A syntax error carries the byte
    /// offset in `text` where it was found.
    pub(crate) fn parse(text: &'t str) -> Result<Self, SyntaxError> {
        let mut parts = Vec::new();
        let mut rest = 0;
        while let Some(found) = text[rest..].find(START) {
            let start = rest + found;
            if start > rest {
                parts.push(Part::Text(&text[rest..start]));
            }
            let (expr, end) = parse_at(text, start + START.len())?;
            parts.push(Part::Expr(expr));
            rest = end;
        }
        if rest < text.len() {
            parts.push(Part::Text(&text[rest..]));
        }
        Ok(Self { parts })
    }

    /// The expression when the string is exactly one (whitespace around it ignored): its
    /// value keeps its type.
    pub(crate) fn single(&self) -> Option<&Expr> {
        let mut exprs = self.parts.iter().filter(|part| match part {
            Part::Text(text) => !text.trim().is_empty(),
            Part::Expr(_) => true,
        });
        match (exprs.next(), exprs.next()) {
            (Some(Part::Expr(expr)), None) => Some(expr),
            _ => None,
        }
    }

    pub(crate) fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|part| match part {
            Part::Expr(expr) => Some(expr),
            Part::Text(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_text_and_expressions() {
        let t = Template::parse("a ${{ x }} b ${{ y }}").unwrap();
        assert_eq!(t.parts.len(), 4);
        assert!(t.single().is_none());
        let t = Template::parse("  ${{ x }}\n").unwrap();
        assert_eq!(t.single(), Some(&Expr::Var("x".into())));
        let t = Template::parse("{% if x %}{{ y }}{# c #}}}").unwrap();
        assert_eq!(t.parts, vec![Part::Text("{% if x %}{{ y }}{# c #}}}")]);
    }

    #[test]
    fn errors_carry_their_offset() {
        let err = Template::parse("abc ${{ x }} ${{ y +").unwrap_err();
        assert_eq!(err.at, 19);
        let err = Template::parse("abc ${{ x").unwrap_err();
        assert_eq!(err.at, 4);
    }
}
