//! The subset of SOQL the emulator understands:
//! `SELECT f, g.h FROM Obj [WHERE cond] [ORDER BY f [ASC|DESC]] [LIMIT n]`
//! and `SELECT COUNT() FROM Obj [WHERE cond]`,
//! with `=`, `!=`, `<`, `>`, `<=`, `>=`, `LIKE`, `IN (...)`, `NOT IN (...)`,
//! `AND`, `OR`, `NOT` and parentheses. Text comparisons are case-insensitive
//! as in Salesforce; string literals take `\'` and `\\` escapes.

use serde_json::Value;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Empty for `SELECT COUNT()`.
    pub fields: Vec<String>,
    /// `SELECT COUNT()`: the answer is `totalSize` with no records.
    pub count: bool,
    pub object: String,
    pub filter: Option<Cond>,
    pub order_by: Option<(String, bool)>,
    pub limit: Option<usize>,
}

/// A WHERE condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Cmp(String, Op, Literal),
    /// Field, values, NOT IN?, and the text values lower-cased (so a
    /// 100k-row table against a 300-value list is not 30M comparisons).
    In(
        String,
        Vec<Literal>,
        bool,
        std::collections::HashSet<String>,
    ),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Like,
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Number(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Comma,
    LParen,
    RParen,
    Op(Op),
}

/// Parses SOQL; the error is the message Salesforce would put in a
/// `MALFORMED_QUERY` body.
pub fn parse(q: &str) -> Result<Query, String> {
    let toks = lex(q)?;
    let mut p = Parser { toks, pos: 0 };
    p.keyword("SELECT")?;
    let count = matches!(p.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("COUNT"))
        && p.toks.get(p.pos + 1) == Some(&Tok::LParen);
    let mut fields = Vec::new();
    if count {
        p.pos += 2;
        if !p.eat(&Tok::RParen) {
            return Err(format!(
                "unexpected token: {} (expected ')')",
                show(p.peek())
            ));
        }
    } else {
        fields.push(p.ident()?);
        while p.eat(&Tok::Comma) {
            fields.push(p.ident()?);
        }
    }
    p.keyword("FROM")?;
    let object = p.ident()?;
    let filter = if p.eat_keyword("WHERE") {
        Some(p.or()?)
    } else {
        None
    };
    let order_by = if p.eat_keyword("ORDER") {
        p.keyword("BY")?;
        let f = p.ident()?;
        let desc = if p.eat_keyword("DESC") {
            true
        } else {
            p.eat_keyword("ASC");
            false
        };
        Some((f, desc))
    } else {
        None
    };
    let limit = if p.eat_keyword("LIMIT") {
        match p.next() {
            Some(Tok::Num(n)) if n >= 0.0 => Some(n as usize),
            other => return Err(format!("unexpected token: {}", show(other.as_ref()))),
        }
    } else {
        None
    };
    if let Some(t) = p.next() {
        return Err(format!("unexpected token: {}", show(Some(&t))));
    }
    if count && order_by.is_some() {
        return Err("ORDER BY is not allowed with COUNT()".into());
    }
    Ok(Query {
        fields,
        count,
        object,
        filter,
        order_by,
        limit,
    })
}

fn show(t: Option<&Tok>) -> String {
    match t {
        None => "<EOF>".into(),
        Some(Tok::Ident(s)) => s.clone(),
        Some(Tok::Str(s)) => format!("'{s}'"),
        Some(Tok::Num(n)) => n.to_string(),
        Some(Tok::Comma) => ",".into(),
        Some(Tok::LParen) => "(".into(),
        Some(Tok::RParen) => ")".into(),
        Some(Tok::Op(o)) => format!("{o:?}"),
    }
}

fn lex(q: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '=' => {
                out.push(Tok::Op(Op::Eq));
                i += 1
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Op(Op::Ne));
                i += 2
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                let ne = c == '<' && chars.get(i + 1) == Some(&'>');
                out.push(Tok::Op(match (c, eq, ne) {
                    (_, _, true) => Op::Ne,
                    ('<', true, _) => Op::Le,
                    ('>', true, _) => Op::Ge,
                    ('<', false, _) => Op::Lt,
                    _ => Op::Gt,
                }));
                i += if eq || ne { 2 } else { 1 };
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\\') => {
                            let e = chars.get(i + 1).ok_or("unterminated string literal")?;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => *other,
                            });
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let s: String = chars[start..i].iter().collect();
                out.push(Tok::Num(s.parse().map_err(|_| format!("bad number {s}"))?));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected character '{other}'")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn eat_keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(k)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn keyword(&mut self, k: &str) -> Result<(), String> {
        if self.eat_keyword(k) {
            Ok(())
        } else {
            Err(format!(
                "unexpected token: {} (expected {k})",
                show(self.peek())
            ))
        }
    }
    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Ident(s)) => Ok(s),
            other => Err(format!("unexpected token: {}", show(other.as_ref()))),
        }
    }
    fn or(&mut self) -> Result<Cond, String> {
        let mut left = self.and()?;
        while self.eat_keyword("OR") {
            left = Cond::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Cond, String> {
        let mut left = self.unary()?;
        while self.eat_keyword("AND") {
            left = Cond::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Cond, String> {
        if self.eat_keyword("NOT") {
            return Ok(Cond::Not(Box::new(self.unary()?)));
        }
        if self.eat(&Tok::LParen) {
            let c = self.or()?;
            if !self.eat(&Tok::RParen) {
                return Err(format!(
                    "unexpected token: {} (expected ')')",
                    show(self.peek())
                ));
            }
            return Ok(c);
        }
        let field = self.ident()?;
        let negated_in = self.eat_keyword("NOT");
        if self.eat_keyword("IN") {
            if !self.eat(&Tok::LParen) {
                return Err("expected ( after IN".into());
            }
            let mut vals = vec![self.literal()?];
            while self.eat(&Tok::Comma) {
                vals.push(self.literal()?);
            }
            if !self.eat(&Tok::RParen) {
                return Err("expected ) to close IN list".into());
            }
            let texts = vals
                .iter()
                .filter_map(|v| match v {
                    Literal::Text(t) => Some(t.to_lowercase()),
                    _ => None,
                })
                .collect();
            return Ok(Cond::In(field, vals, negated_in, texts));
        }
        if negated_in {
            return Err("expected IN after NOT".into());
        }
        let op = if self.eat_keyword("LIKE") {
            Op::Like
        } else {
            match self.next() {
                Some(Tok::Op(o)) => o,
                other => return Err(format!("unexpected token: {}", show(other.as_ref()))),
            }
        };
        Ok(Cond::Cmp(field, op, self.literal()?))
    }
    fn literal(&mut self) -> Result<Literal, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Literal::Text(s)),
            Some(Tok::Num(n)) => Ok(Literal::Number(n)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Ok(Literal::Bool(true)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Ok(Literal::Bool(false)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Ok(Literal::Null),
            other => Err(format!("unexpected token: {}", show(other.as_ref()))),
        }
    }
}

impl Cond {
    /// Evaluates against a record; `get` resolves field paths.
    pub fn eval(&self, get: &dyn Fn(&str) -> Value) -> bool {
        match self {
            Self::And(a, b) => a.eval(get) && b.eval(get),
            Self::Or(a, b) => a.eval(get) || b.eval(get),
            Self::Not(a) => !a.eval(get),
            Self::Cmp(f, op, lit) => compare(&get(f), *op, lit),
            Self::In(f, vals, negated, texts) => {
                let v = get(f);
                let hit = match &v {
                    Value::String(s) => texts.contains(&s.to_lowercase()),
                    _ => vals.iter().any(|l| compare(&v, Op::Eq, l)),
                };
                hit != *negated
            }
        }
    }

    /// Every field path the condition reads.
    pub fn fields(&self, out: &mut Vec<String>) {
        match self {
            Self::And(a, b) | Self::Or(a, b) => {
                a.fields(out);
                b.fields(out)
            }
            Self::Not(a) => a.fields(out),
            Self::Cmp(f, _, _) | Self::In(f, _, _, _) => out.push(f.clone()),
        }
    }
}

fn compare(v: &Value, op: Op, lit: &Literal) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (v, lit) {
        (Value::Null, Literal::Null) => Some(Ordering::Equal),
        (Value::Null, _) | (_, Literal::Null) => None,
        (Value::String(a), Literal::Text(b)) => {
            if op == Op::Like {
                return like(&a.to_lowercase(), &b.to_lowercase());
            }
            Some(a.to_lowercase().cmp(&b.to_lowercase()))
        }
        (Value::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        (Value::Number(a), Literal::Number(b)) => a.as_f64().and_then(|a| a.partial_cmp(b)),
        _ => None,
    };
    match (op, ord) {
        (Op::Eq, o) => o == Some(Ordering::Equal),
        (Op::Ne, o) => o != Some(Ordering::Equal),
        (Op::Lt, Some(o)) => o == Ordering::Less,
        (Op::Gt, Some(o)) => o == Ordering::Greater,
        (Op::Le, Some(o)) => o != Ordering::Greater,
        (Op::Ge, Some(o)) => o != Ordering::Less,
        _ => false,
    }
}

/// SOQL LIKE: `%` any run, `_` one character.
fn like(s: &str, pat: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = pat.chars().collect();
    fn go(s: &[char], p: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('%') => (0..=s.len()).any(|i| go(&s[i..], &p[1..])),
            Some('_') => !s.is_empty() && go(&s[1..], &p[1..]),
            Some(c) => s.first() == Some(c) && go(&s[1..], &p[1..]),
        }
    }
    go(&s, &p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_select_with_in_and_escapes() {
        let q = parse(r"SELECT Id, Profile.Name FROM User WHERE Username IN ('o\'brien@x.com', 'b@x.com') AND IsActive = true ORDER BY Id LIMIT 5").expect("parses");
        assert_eq!(q.fields, vec!["Id", "Profile.Name"]);
        assert_eq!(q.object, "User");
        assert_eq!(q.limit, Some(5));
        let rec = json!({"Username": "O'Brien@x.com", "IsActive": true});
        let get = |f: &str| rec.get(f).cloned().unwrap_or(Value::Null);
        assert!(q.filter.expect("has filter").eval(&get));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("SELECT FROM User").is_err());
        assert!(parse("SELECT Id FROM User WHERE Name = 'x").is_err());
        assert!(parse("SELECT Id FROM User LIMIT 3 extra").is_err());
    }

    #[test]
    fn count_has_no_fields() {
        let q = parse("SELECT COUNT() FROM Lead WHERE IsConverted = false").expect("parses");
        assert!(q.count);
        assert!(q.fields.is_empty());
        assert!(q.filter.is_some());
        assert!(!parse("SELECT Id FROM Lead").expect("parses").count);
        assert!(parse("SELECT COUNT( FROM Lead").is_err());
    }

    #[test]
    fn like_and_not_in() {
        let q = parse("SELECT Id FROM User WHERE (Name LIKE 'ad%') AND Alias NOT IN ('x')")
            .expect("parses");
        let rec = json!({"Name": "Adele", "Alias": "adele"});
        let get = |f: &str| rec.get(f).cloned().unwrap_or(Value::Null);
        assert!(q.filter.expect("filter").eval(&get));
    }
}
