//! The expression language: tokens, the syntax tree and its parser.
//!
//! ```text
//! expr    := or
//! or      := and ( "||" and )*
//! and     := compare ( "&&" compare )*
//! compare := unary ( ( "==" | "!=" | "<" | "<=" | ">" | ">=" ) unary )?
//! unary   := "!" unary | postfix
//! postfix := primary ( "." name | "[" expr "]" )*
//! primary := "null" | "true" | "false" | number | string
//!          | name "(" ( expr ( "," expr )* )? ")" | name | "(" expr ")"
//! name    := [A-Za-z_] [A-Za-z0-9_-]*
//! string  := '…' | "…"          (the quote doubled inside stands for itself)
//! number  := -? digits ( . digits )? ( [eE] [+-]? digits )?
//! ```
//!
//! There is nothing else: no statements, no loops, no assignments, no arithmetic. Every
//! expression is at most [`MAX_EXPRESSION_LEN`] bytes and [`MAX_DEPTH`] levels deep, so parsing
//! and evaluating it is bounded, and a deep expression cannot exhaust the stack.

use std::fmt;

use serde_json::{Number, Value};

/// Longest expression between `${{` and `}}`, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// Deepest nesting of an expression's syntax tree (operators, calls, brackets, members).
pub const MAX_DEPTH: usize = 64;

/// The functions an expression may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Contains,
    StartsWith,
    EndsWith,
    Format,
    Join,
    ToJson,
    FromJson,
}

impl Func {
    pub(crate) const ALL: [Func; 7] = [
        Func::Contains,
        Func::StartsWith,
        Func::EndsWith,
        Func::Format,
        Func::Join,
        Func::ToJson,
        Func::FromJson,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Func::Contains => "contains",
            Func::StartsWith => "startsWith",
            Func::EndsWith => "endsWith",
            Func::Format => "format",
            Func::Join => "join",
            Func::ToJson => "toJSON",
            Func::FromJson => "fromJSON",
        }
    }

    /// Least and most arguments.
    pub(crate) fn arity(self) -> (usize, usize) {
        match self {
            Func::Contains | Func::StartsWith | Func::EndsWith => (2, 2),
            Func::Format => (1, 32),
            Func::Join => (1, 2),
            Func::ToJson | Func::FromJson => (1, 1),
        }
    }

    fn parse(name: &str) -> Option<Func> {
        Func::ALL.into_iter().find(|f| f.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
        }
    }
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Literal(Value),
    /// A root variable: `params`, `steps`.
    Var(String),
    /// `base.name`
    Member(Box<Expr>, String),
    /// `base[index]`
    Index(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// A comparison.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `a || b || …` or `a && b && …`: one node for a whole chain, however long.
    Logic(BinOp, Vec<Expr>),
    Call(Func, Vec<Expr>),
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(Value::String(s)) => write!(f, "'{}'", s.replace('\'', "''")),
            Expr::Literal(value) => write!(f, "{value}"),
            Expr::Var(name) => f.write_str(name),
            Expr::Member(base, name) => write!(f, "{base}.{name}"),
            Expr::Index(base, index) => write!(f, "{base}[{index}]"),
            Expr::Not(inner) => write!(f, "!{inner}"),
            Expr::Binary(op, a, b) => write!(f, "{a} {} {b}", op.symbol()),
            Expr::Logic(op, items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, " {} ", op.symbol())?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
            Expr::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Str(String),
    Num(Number),
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Not,
    Op(BinOp),
    /// `}}`: the end of the expression.
    Close,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Name(name) => write!(f, "`{name}`"),
            Tok::Str(s) => write!(f, "the string '{s}'"),
            Tok::Num(n) => write!(f, "the number {n}"),
            Tok::Dot => f.write_str("`.`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::Not => f.write_str("`!`"),
            Tok::Op(op) => write!(f, "`{}`", op.symbol()),
            Tok::Close => f.write_str("`}}`"),
        }
    }
}

/// A syntax error, at a byte offset of the text being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) at: usize,
    pub(crate) message: String,
}

impl SyntaxError {
    fn new(at: usize, message: impl Into<String>) -> Self {
        Self {
            at,
            message: message.into(),
        }
    }
}

type Parsed<T> = Result<T, SyntaxError>;

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Splits `text[start..]` into tokens up to and including the `}}` that closes the
/// expression. Returns the tokens (with their offsets in `text`) and the offset just after
/// `}}`.
fn lex(text: &str, start: usize) -> Parsed<(Vec<(usize, Tok)>, usize)> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = start;
    let unclosed = || {
        SyntaxError::new(
            start.saturating_sub(3),
            "`${{` is not closed by `}}`".to_owned(),
        )
    };
    loop {
        if i - start > MAX_EXPRESSION_LEN {
            return Err(SyntaxError::new(
                start,
                format!("expression longer than {MAX_EXPRESSION_LEN} bytes"),
            ));
        }
        let Some(c) = text[i..].chars().next() else {
            return Err(unclosed());
        };
        let at = i;
        let two = bytes.get(i..i + 2).unwrap_or_default();
        let tok = match c {
            c if c.is_whitespace() => {
                i += c.len_utf8();
                continue;
            }
            '}' if two == b"}}" => {
                tokens.push((at, Tok::Close));
                return Ok((tokens, i + 2));
            }
            '.' => Tok::Dot,
            ',' => Tok::Comma,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            '!' if two == b"!=" => Tok::Op(BinOp::Ne),
            '!' => Tok::Not,
            '=' if two == b"==" => Tok::Op(BinOp::Eq),
            '<' if two == b"<=" => Tok::Op(BinOp::Le),
            '<' => Tok::Op(BinOp::Lt),
            '>' if two == b">=" => Tok::Op(BinOp::Ge),
            '>' => Tok::Op(BinOp::Gt),
            '&' if two == b"&&" => Tok::Op(BinOp::And),
            '|' if two == b"||" => Tok::Op(BinOp::Or),
            '\'' | '"' => {
                let (s, end) = lex_string(text, i, c).ok_or_else(|| {
                    SyntaxError::new(at, format!("string starting with {c} is not closed"))
                })?;
                tokens.push((at, Tok::Str(s)));
                i = end;
                continue;
            }
            c if c.is_ascii_digit() || c == '-' => {
                let end = i
                    + 1
                    + text[i + 1..]
                        .find(|c: char| {
                            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
                        })
                        .unwrap_or(text.len() - i - 1);
                let literal = &text[i..end];
                let digits = literal.strip_prefix('-').unwrap_or(literal);
                let integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
                let number = parse_number(literal)
                    .filter(|n| !integer || n.is_i64())
                    .ok_or_else(|| {
                        let why = match integer {
                            true => "is too large for an integer (at most 9223372036854775807)",
                            false => "is not a number",
                        };
                        SyntaxError::new(at, format!("`{literal}` {why}"))
                    })?;
                tokens.push((at, Tok::Num(number)));
                i = end;
                continue;
            }
            c if is_name_start(c) => {
                let end = text[i..]
                    .find(|c: char| !is_name_char(c))
                    .map_or(text.len(), |n| i + n);
                tokens.push((at, Tok::Name(text[i..end].to_owned())));
                i = end;
                continue;
            }
            other => {
                let hint = match other {
                    '+' | '*' | '/' | '%' => "; expressions have no arithmetic",
                    '{' => "; only `${{ … }}` expressions exist: no blocks, statements or comments",
                    '=' => "; compare with `==`",
                    '|' => "; use `||` (there are no filters)",
                    '&' => "; use `&&`",
                    _ => "",
                };
                return Err(SyntaxError::new(
                    at,
                    format!("unexpected character `{other}`{hint}"),
                ));
            }
        };
        i += match tok {
            Tok::Op(BinOp::Ne | BinOp::Eq | BinOp::Le | BinOp::Ge | BinOp::And | BinOp::Or) => 2,
            _ => 1,
        };
        tokens.push((at, tok));
    }
}

/// A quoted string starting at `start` (the quote); the quote doubled stands for itself.
fn lex_string(text: &str, start: usize, quote: char) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((n, c)) = chars.next() {
        if c == quote {
            let after = start + 1 + n + 1;
            if text[after..].starts_with(quote) {
                out.push(quote);
                chars.next();
                continue;
            }
            return Some((out, after));
        }
        out.push(c);
    }
    None
}

fn parse_number(literal: &str) -> Option<Number> {
    let digits = literal.strip_prefix('-').unwrap_or(literal);
    if !digits.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if let Ok(n) = literal.parse::<i64>() {
        return Some(n.into());
    }
    literal
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .and_then(Number::from_f64)
}

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        // The last token is always `Close`.
        &self.tokens[self.pos.min(self.tokens.len() - 1)].1
    }

    fn at(&self) -> usize {
        self.tokens[self.pos.min(self.tokens.len() - 1)].0
    }

    fn next(&mut self) -> Tok {
        let tok = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        tok
    }

    fn unexpected(&self, wanted: &str) -> SyntaxError {
        let found = match self.peek() {
            Tok::Close => "the end of the expression".to_owned(),
            tok => tok.to_string(),
        };
        SyntaxError::new(self.at(), format!("expected {wanted}, found {found}"))
    }

    fn expect(&mut self, tok: &Tok, wanted: &str) -> Parsed<()> {
        if self.peek() == tok {
            self.next();
            Ok(())
        } else {
            Err(self.unexpected(wanted))
        }
    }

    fn deeper(&self, depth: usize) -> Parsed<usize> {
        if depth >= MAX_DEPTH {
            Err(SyntaxError::new(
                self.at(),
                format!("expression nested more than {MAX_DEPTH} levels deep"),
            ))
        } else {
            Ok(depth + 1)
        }
    }

    /// Each function returns the expression and the depth of its tree.
    fn expr(&mut self, depth: usize) -> Parsed<(Expr, usize)> {
        self.binary(depth, 0)
    }

    /// Left-associative binary operators by precedence level: `||`, `&&`, comparisons.
    fn binary(&mut self, depth: usize, level: usize) -> Parsed<(Expr, usize)> {
        let ops: &[BinOp] = match level {
            0 => &[BinOp::Or],
            1 => &[BinOp::And],
            2 => &[
                BinOp::Eq,
                BinOp::Ne,
                BinOp::Lt,
                BinOp::Le,
                BinOp::Gt,
                BinOp::Ge,
            ],
            _ => return self.unary(depth),
        };
        let (mut left, mut height) = self.binary(depth, level + 1)?;
        if level < 2 {
            // A chain of `||` (or `&&`) is one node: its length costs no depth.
            let op = ops[0];
            let mut items = vec![left];
            while self.peek() == &Tok::Op(op) {
                self.next();
                let (item, item_height) = self.binary(depth, level + 1)?;
                height = height.max(item_height);
                items.push(item);
            }
            if items.len() == 1 {
                return Ok((items.remove(0), height));
            }
            return Ok((Expr::Logic(op, items), self.deeper(height)?));
        }
        while let Tok::Op(op) = self.peek().clone() {
            if !ops.contains(&op) {
                break;
            }
            self.next();
            let (right, right_height) = self.binary(depth, level + 1)?;
            height = self.deeper(height.max(right_height))?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
            if level == 2 {
                // `a < b < c` means nothing useful: one comparison at a time.
                if let Tok::Op(next) = self.peek()
                    && ops.contains(next)
                {
                    return Err(SyntaxError::new(
                        self.at(),
                        "comparisons cannot be chained; combine them with `&&`",
                    ));
                }
            }
        }
        Ok((left, height))
    }

    fn unary(&mut self, depth: usize) -> Parsed<(Expr, usize)> {
        if self.peek() == &Tok::Not {
            self.next();
            let depth = self.deeper(depth)?;
            let (inner, height) = self.unary(depth)?;
            return Ok((Expr::Not(Box::new(inner)), self.deeper(height)?));
        }
        self.postfix(depth)
    }

    fn postfix(&mut self, depth: usize) -> Parsed<(Expr, usize)> {
        let (mut expr, mut height) = self.primary(depth)?;
        loop {
            match self.peek() {
                Tok::Dot => {
                    self.next();
                    let Tok::Name(name) = self.peek().clone() else {
                        return Err(self.unexpected("a name after `.`"));
                    };
                    self.next();
                    height = self.deeper(height)?;
                    expr = Expr::Member(Box::new(expr), name);
                }
                Tok::LBracket => {
                    self.next();
                    let (index, index_height) = self.expr(self.deeper(depth)?)?;
                    self.expect(&Tok::RBracket, "`]`")?;
                    height = self.deeper(height.max(index_height))?;
                    expr = Expr::Index(Box::new(expr), Box::new(index));
                }
                _ => return Ok((expr, height)),
            }
        }
    }

    fn primary(&mut self, depth: usize) -> Parsed<(Expr, usize)> {
        let at = self.at();
        match self.next() {
            Tok::Num(n) => Ok((Expr::Literal(Value::Number(n)), 1)),
            Tok::Str(s) => Ok((Expr::Literal(Value::String(s)), 1)),
            Tok::LParen => {
                let inner = self.expr(self.deeper(depth)?)?;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(inner)
            }
            Tok::Name(name) => match name.as_str() {
                "null" => Ok((Expr::Literal(Value::Null), 1)),
                "true" => Ok((Expr::Literal(Value::Bool(true)), 1)),
                "false" => Ok((Expr::Literal(Value::Bool(false)), 1)),
                _ if self.peek() == &Tok::LParen => self.call(at, &name, depth),
                _ => Ok((Expr::Var(name), 1)),
            },
            _ => {
                self.pos = self.pos.saturating_sub(1);
                Err(self.unexpected("a value"))
            }
        }
    }

    fn call(&mut self, at: usize, name: &str, depth: usize) -> Parsed<(Expr, usize)> {
        let func = Func::parse(name).ok_or_else(|| {
            let names: Vec<&str> = Func::ALL.iter().map(|f| f.name()).collect();
            SyntaxError::new(
                at,
                format!("unknown function `{name}`; functions: {}", names.join(", ")),
            )
        })?;
        self.next(); // `(`
        let inner = self.deeper(depth)?;
        let mut args = Vec::new();
        let mut height = 1;
        if self.peek() != &Tok::RParen {
            loop {
                let (arg, arg_height) = self.expr(inner)?;
                height = height.max(arg_height);
                args.push(arg);
                match self.peek() {
                    Tok::Comma => {
                        self.next();
                    }
                    _ => break,
                }
            }
        }
        self.expect(&Tok::RParen, "`,` or `)`")?;
        let (least, most) = func.arity();
        if args.len() < least || args.len() > most {
            let expected = if least == most {
                format!("{least}")
            } else {
                format!("{least} to {most}")
            };
            return Err(SyntaxError::new(
                at,
                format!(
                    "`{}` takes {expected} argument(s), got {}",
                    func.name(),
                    args.len()
                ),
            ));
        }
        Ok((Expr::Call(func, args), self.deeper(height)?))
    }
}

/// Parses the expression that starts at `text[start..]` (just after `${{`). Returns it
/// with the offset just after its closing `}}`.
pub(crate) fn parse_at(text: &str, start: usize) -> Parsed<(Expr, usize)> {
    let (tokens, end) = lex(text, start)?;
    let mut parser = Parser { tokens, pos: 0 };
    if parser.peek() == &Tok::Close {
        return Err(SyntaxError::new(start, "empty expression"));
    }
    let (expr, _) = parser.expr(0)?;
    if parser.peek() != &Tok::Close {
        return Err(parser.unexpected("an operator or `}}`"));
    }
    Ok((expr, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<String, String> {
        let text = format!("${{{{{src}}}}}");
        parse_at(&text, 3)
            .map(|(expr, end)| {
                assert_eq!(end, text.len());
                expr.to_string()
            })
            .map_err(|e| e.message)
    }

    #[test]
    fn parses_the_grammar() {
        assert_eq!(
            parse(" steps.resolve-config.outputs['x'][0] ").unwrap(),
            "steps.resolve-config.outputs['x'][0]"
        );
        assert_eq!(
            parse("!a.b || c && d == 'x' ").unwrap(),
            "!a.b || c && d == 'x'"
        );
        assert_eq!(
            parse("format('{0}}}', -1.5e3)").unwrap(),
            "format('{0}}}', -1500.0)"
        );
        assert_eq!(parse("'it''s'").unwrap(), "'it''s'");
        assert_eq!(parse("\"say \"\"hi\"\"\"").unwrap(), "'say \"hi\"'");
        assert_eq!(parse("(null)").unwrap(), "null");
    }

    #[test]
    fn rejects_everything_else() {
        for (src, wanted) in [
            ("", "empty expression"),
            ("a +", "no arithmetic"),
            ("a | upper", "no filters"),
            ("{% for x in y %}", "no blocks"),
            ("a = b", "compare with `==`"),
            ("a.", "a name after `.`"),
            ("a[1", "`]`"),
            ("a b", "an operator or `}}`"),
            ("upper(a)", "unknown function `upper`"),
            ("join()", "takes 1 to 2 argument(s), got 0"),
            ("a < b < c", "cannot be chained"),
            ("'open", "not closed"),
            ("1.2.3", "not a number"),
            ("-", "not a number"),
            ("99999999999999999999999", "too large for an integer"),
            ("-99999999999999999999999", "too large for an integer"),
        ] {
            let err = parse(src).unwrap_err();
            assert!(err.contains(wanted), "{src}: {err}");
        }
    }

    #[test]
    fn depth_and_length_are_bounded() {
        let deep = format!("{}a{}", "(".repeat(200), ")".repeat(200));
        assert!(parse(&deep).unwrap_err().contains("nested more than"));
        let not = format!("{}a", "!".repeat(200));
        assert!(parse(&not).unwrap_err().contains("nested more than"));
        let chain = vec!["a"; 500].join(" || ");
        assert!(parse(&chain).is_ok(), "a flat chain is one level");
        let members = format!("a{}", ".b".repeat(100));
        assert!(parse(&members).unwrap_err().contains("nested more than"));
        let long = format!("'{}'", "x".repeat(MAX_EXPRESSION_LEN));
        assert!(parse(&long).unwrap_err().contains("longer than"));
        assert!(parse(&vec!["a"; 60].join(" || ")).is_ok());
    }

    #[test]
    fn unclosed_expressions_are_errors() {
        let err = parse_at("x ${{ a ", 5).unwrap_err();
        assert_eq!(err.at, 2);
        assert!(err.message.contains("not closed"));
        // `}}` inside a string does not close the expression.
        let (expr, end) = parse_at("${{ 'a}}b' }} tail", 3).unwrap();
        assert_eq!(expr, Expr::Literal(Value::String("a}}b".into())));
        assert_eq!(end, 13);
    }
}
