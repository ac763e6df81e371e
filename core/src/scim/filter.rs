//! SCIM filters (RFC 7644 §3.4.2.2) and PATCH paths (§3.5.2): parsed into
//! a tree once, then either translated to SQL by the store or evaluated on
//! a resource's JSON (a PATCH's value filter).
//!
//! Bounded: a filter is at most [`MAX_LEN`] bytes and [`MAX_DEPTH`] levels
//! deep, so no query string makes the parser (or the SQL it becomes)
//! expensive.

use serde_json::Value;

use super::ScimError;

/// The longest filter or path accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// The deepest nesting of `and`, `or`, `not`, parentheses and brackets.
pub const MAX_DEPTH: usize = 32;

/// An attribute path: `[schema:]attr[.sub]`, names as written (they compare
/// case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    /// The schema URN, when the path names one.
    pub schema: Option<String>,
    pub attr: String,
    pub sub: Option<String>,
}

impl AttrPath {
    /// Parses `[urn:...:]attr[.sub]`.
    pub fn parse(text: &str) -> Result<Self, ScimError> {
        let bad = || ScimError::invalid_filter(format!("{text:?} is not an attribute path"));
        let (schema, rest) = match text.rfind(':') {
            Some(i) => (Some(text[..i].to_owned()), &text[i + 1..]),
            None => (None, text),
        };
        let (attr, sub) = match rest.split_once('.') {
            Some((a, s)) => (a, Some(s)),
            None => (rest, None),
        };
        let name_ok = |n: &str| {
            let mut chars = n.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
        };
        if !name_ok(attr) || sub.is_some_and(|s| !name_ok(s)) {
            return Err(bad());
        }
        if schema
            .as_deref()
            .is_some_and(|s| !s.to_ascii_lowercase().starts_with("urn:"))
        {
            return Err(bad());
        }
        Ok(Self {
            schema,
            attr: attr.to_owned(),
            sub: sub.map(str::to_owned),
        })
    }

    /// `attr` is `name` (case-insensitively).
    pub fn is(&self, name: &str) -> bool {
        self.attr.eq_ignore_ascii_case(name)
    }

    /// `attr.sub` is `name.sub` (case-insensitively); `sub` None matches a
    /// path without a sub-attribute.
    pub fn is_sub(&self, name: &str, sub: Option<&str>) -> bool {
        self.is(name)
            && match (&self.sub, sub) {
                (None, None) => true,
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                _ => false,
            }
    }
}

impl std::fmt::Display for AttrPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{schema}:")?;
        }
        f.write_str(&self.attr)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "co" => Self::Co,
            "sw" => Self::Sw,
            "ew" => Self::Ew,
            "gt" => Self::Gt,
            "ge" => Self::Ge,
            "lt" => Self::Lt,
            "le" => Self::Le,
            _ => return None,
        })
    }
}

/// A comparison's literal.
#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Present(AttrPath),
    Compare {
        path: AttrPath,
        op: CompareOp,
        value: CompValue,
    },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `attr[filter]`: an element of the multi-valued `attr` matches
    /// `filter`, whose paths are relative to the element.
    ValuePath {
        path: AttrPath,
        filter: Box<Filter>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Str(String),
    Word(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, ScimError> {
    if text.len() > MAX_LEN {
        return Err(ScimError::invalid_filter(format!(
            "a filter is at most {MAX_LEN} bytes"
        )));
    }
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            b')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            b'[' => {
                tokens.push(Token::OpenBracket);
                i += 1;
            }
            b']' => {
                tokens.push(Token::CloseBracket);
                i += 1;
            }
            b'"' => {
                // A JSON string: find its end, honouring escapes, and let
                // serde_json decode it.
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(ScimError::invalid_filter(
                                "a string in the filter is not closed".to_owned(),
                            ));
                        }
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                let decoded: String = serde_json::from_str(&text[start..i]).map_err(|_| {
                    ScimError::invalid_filter("a string in the filter is not valid JSON".to_owned())
                })?;
                tokens.push(Token::Str(decoded));
            }
            _ => {
                let start = i;
                while i < bytes.len() && !b" \t\n\r()[]\"".contains(&bytes[i]) {
                    i += 1;
                }
                tokens.push(Token::Word(text[start..i].to_owned()));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn deeper(&mut self) -> Result<(), ScimError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ScimError::invalid_filter(format!(
                "a filter nests at most {MAX_DEPTH} levels"
            )));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Filter, ScimError> {
        self.deeper()?;
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, ScimError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.at += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, ScimError> {
        if self.keyword("not") {
            self.at += 1;
            if self.peek() != Some(&Token::Open) {
                return Err(ScimError::invalid_filter(
                    "\"not\" must be followed by a parenthesised filter".to_owned(),
                ));
            }
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            if self.next() != Some(Token::Close) {
                return Err(ScimError::invalid_filter(
                    "a \"(\" is not closed".to_owned(),
                ));
            }
            return Ok(inner);
        }
        self.attribute_expression()
    }

    fn attribute_expression(&mut self) -> Result<Filter, ScimError> {
        let Some(Token::Word(word)) = self.next() else {
            return Err(ScimError::invalid_filter(
                "expected an attribute path".to_owned(),
            ));
        };
        let path = AttrPath::parse(&word)?;
        if self.peek() == Some(&Token::OpenBracket) {
            self.at += 1;
            self.deeper()?;
            let inner = self.or()?;
            self.depth -= 1;
            if self.next() != Some(Token::CloseBracket) {
                return Err(ScimError::invalid_filter(
                    "a \"[\" is not closed".to_owned(),
                ));
            }
            // `emails[type eq "work"].value eq "…"`, as Entra ID filters: a
            // term on a sub-attribute of the same matching value.
            if let Some(Token::Word(word)) = self.peek().cloned()
                && let Some(sub) = word.strip_prefix('.')
            {
                let sub = AttrPath::parse(sub)?;
                self.at += 1;
                let term = self.comparison(sub, word.clone())?;
                return Ok(Filter::ValuePath {
                    path,
                    filter: Box::new(Filter::And(Box::new(inner), Box::new(term))),
                });
            }
            return Ok(Filter::ValuePath {
                path,
                filter: Box::new(inner),
            });
        }
        self.comparison(path, word)
    }

    /// The operator and value after an attribute path.
    fn comparison(&mut self, path: AttrPath, word: String) -> Result<Filter, ScimError> {
        let Some(Token::Word(op)) = self.next() else {
            return Err(ScimError::invalid_filter(format!(
                "expected an operator after {word}"
            )));
        };
        if op.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let op = CompareOp::parse(&op)
            .ok_or_else(|| ScimError::invalid_filter(format!("{op:?} is not a filter operator")))?;
        let value =
            match self.next() {
                Some(Token::Str(s)) => CompValue::Str(s),
                Some(Token::Word(w)) if w == "true" => CompValue::Bool(true),
                Some(Token::Word(w)) if w == "false" => CompValue::Bool(false),
                Some(Token::Word(w)) if w == "null" => CompValue::Null,
                Some(Token::Word(w)) => CompValue::Num(w.parse::<f64>().map_err(|_| {
                    ScimError::invalid_filter(format!("{w:?} is not a filter value"))
                })?),
                _ => {
                    return Err(ScimError::invalid_filter(format!(
                        "expected a value after {word}"
                    )));
                }
            };
        Ok(Filter::Compare { path, op, value })
    }
}

impl Filter {
    /// Parses a whole filter.
    pub fn parse(text: &str) -> Result<Self, ScimError> {
        let mut parser = Parser {
            tokens: tokenize(text)?,
            at: 0,
            depth: 0,
        };
        if parser.tokens.is_empty() {
            return Err(ScimError::invalid_filter("the filter is empty".to_owned()));
        }
        let filter = parser.or()?;
        if parser.at != parser.tokens.len() {
            return Err(ScimError::invalid_filter(
                "the filter has text after its end".to_owned(),
            ));
        }
        Ok(filter)
    }

    /// Whether `element` (a JSON object: a resource, or one value of a
    /// multi-valued attribute) matches. Attribute names compare
    /// case-insensitively, strings too unless `case_exact` says the
    /// attribute is case-exact.
    pub fn matches(&self, element: &Value, case_exact: &dyn Fn(&AttrPath) -> bool) -> bool {
        match self {
            Filter::And(a, b) => a.matches(element, case_exact) && b.matches(element, case_exact),
            Filter::Or(a, b) => a.matches(element, case_exact) || b.matches(element, case_exact),
            Filter::Not(a) => !a.matches(element, case_exact),
            Filter::Present(path) => values_at(element, path)
                .iter()
                .any(|v| !v.is_null() && v != &&Value::String(String::new())),
            Filter::ValuePath { path, filter } => get_ci(element, &path.attr)
                .map(|v| match v {
                    Value::Array(items) => items.iter().any(|i| filter.matches(i, case_exact)),
                    other => filter.matches(other, case_exact),
                })
                .unwrap_or(false),
            Filter::Compare { path, op, value } => {
                let exact = case_exact(path);
                values_at(element, path)
                    .iter()
                    .any(|v| compare(v, *op, value, exact))
            }
        }
    }
}

/// The member of a JSON object named `name`, case-insensitively.
pub fn get_ci<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The values `path` names in `element`: for a multi-valued attribute, the
/// sub-attribute of each of its values (or each value, with no
/// sub-attribute; a value of a multi-valued complex attribute stands for
/// its `value`).
fn values_at<'a>(element: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let mut holder = element;
    if let Some(schema) = &path.schema
        && let Some(extension) = get_ci(element, schema)
    {
        holder = extension;
    }
    let Some(value) = get_ci(holder, &path.attr) else {
        return Vec::new();
    };
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    items
        .into_iter()
        .filter_map(|item| match (&path.sub, item) {
            (Some(sub), _) => get_ci(item, sub),
            (None, Value::Object(_)) => get_ci(item, "value"),
            (None, other) => Some(other),
        })
        .collect()
}

fn compare(actual: &Value, op: CompareOp, expected: &CompValue, case_exact: bool) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match (actual, expected) {
        (Value::String(a), CompValue::Str(e)) => {
            let (a, e) = if case_exact {
                (a.clone(), e.clone())
            } else {
                (a.to_lowercase(), e.to_lowercase())
            };
            match op {
                CompareOp::Co => return a.contains(&e),
                CompareOp::Sw => return a.starts_with(&e),
                CompareOp::Ew => return a.ends_with(&e),
                _ => Some(a.cmp(&e)),
            }
        }
        (Value::Bool(a), CompValue::Bool(e)) => Some(a.cmp(e)),
        (Value::Number(a), CompValue::Num(e)) => a.as_f64().and_then(|a| a.partial_cmp(e)),
        (Value::Null, CompValue::Null) => Some(Ordering::Equal),
        _ => None,
    };
    match (op, ordering) {
        (CompareOp::Eq, Some(o)) => o == Ordering::Equal,
        (CompareOp::Ne, Some(o)) => o != Ordering::Equal,
        (CompareOp::Ne, None) => true,
        (CompareOp::Gt, Some(o)) => o == Ordering::Greater,
        (CompareOp::Ge, Some(o)) => o != Ordering::Less,
        (CompareOp::Lt, Some(o)) => o == Ordering::Less,
        (CompareOp::Le, Some(o)) => o != Ordering::Greater,
        _ => false,
    }
}

/// A PATCH operation's path: an attribute, optionally narrowed to the
/// values of a multi-valued one that match a filter, optionally then a
/// sub-attribute of those (`emails[type eq "work"].value`).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    /// The sub-attribute after a value filter.
    pub sub: Option<String>,
}

impl PatchPath {
    pub fn parse(text: &str) -> Result<Self, ScimError> {
        let bad = |why: String| ScimError::invalid_path(why);
        if text.len() > MAX_LEN {
            return Err(bad(format!("a path is at most {MAX_LEN} bytes")));
        }
        let text = text.trim();
        let Some(open) = text.find('[') else {
            return Ok(Self {
                attr: AttrPath::parse(text).map_err(|_| bad(format!("{text:?} is not a path")))?,
                filter: None,
                sub: None,
            });
        };
        let close = text
            .rfind(']')
            .ok_or_else(|| bad(format!("{text:?}: a \"[\" is not closed")))?;
        let attr =
            AttrPath::parse(&text[..open]).map_err(|_| bad(format!("{text:?} is not a path")))?;
        if attr.sub.is_some() {
            return Err(bad(format!(
                "{text:?}: a value filter follows an attribute, not a sub-attribute"
            )));
        }
        let filter = Filter::parse(&text[open + 1..close])
            .map_err(|e| bad(format!("{text:?}: {}", e.detail)))?;
        let rest = &text[close + 1..];
        let sub = match rest.strip_prefix('.') {
            Some(sub)
                if !sub.is_empty()
                    && sub
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') =>
            {
                Some(sub.to_owned())
            }
            None if rest.is_empty() => None,
            _ => return Err(bad(format!("{text:?} is not a path"))),
        };
        Ok(Self {
            attr,
            filter: Some(filter),
            sub,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn insensitive(_: &AttrPath) -> bool {
        false
    }

    #[test]
    fn precedence_and_grouping() {
        let f = Filter::parse(r#"userName eq "a" or userName eq "b" and active eq true"#).unwrap();
        assert!(matches!(f, Filter::Or(_, _)), "and binds tighter: {f:?}");
        let f = Filter::parse(r#"(userName eq "a" or userName eq "b") and not (active eq false)"#)
            .unwrap();
        assert!(matches!(f, Filter::And(_, _)), "{f:?}");
        let user = json!({"userName": "B", "active": true});
        assert!(f.matches(&user, &insensitive));
        assert!(!f.matches(&json!({"userName": "c", "active": true}), &insensitive));
    }

    #[test]
    fn every_operator_and_value_paths() {
        let user = json!({
            "userName": "Alice@Corp.example",
            "emails": [{"type": "work", "value": "alice@corp.example", "primary": true},
                       {"type": "home", "value": "a@home.example"}],
            "meta": {"created": "2026-01-01T00:00:00Z"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"}
        });
        for (filter, want) in [
            (r#"userName eq "alice@corp.example""#, true),
            (r#"userName ne "alice@corp.example""#, false),
            (r#"userName co "CORP""#, true),
            (r#"userName sw "alice""#, true),
            (r#"userName ew ".example""#, true),
            (r#"meta.created gt "2025-12-31T00:00:00Z""#, true),
            (r#"meta.created lt "2025-12-31T00:00:00Z""#, false),
            (r#"meta.created ge "2026-01-01T00:00:00Z""#, true),
            (r#"meta.created le "2026-01-01T00:00:00Z""#, true),
            ("title pr", false),
            ("emails pr", true),
            (r#"emails co "@home""#, true),
            (r#"emails[type eq "work" and value co "@corp"]"#, true),
            (r#"emails[type eq "home" and value co "@corp"]"#, false),
            (r#"emails.primary eq true"#, true),
            (
                r#"emails[type eq "work"].value eq "ALICE@corp.example""#,
                true,
            ),
            (
                r#"emails[type eq "home"].value eq "alice@corp.example""#,
                false,
            ),
            (
                r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "r&d""#,
                true,
            ),
            (r#"NOT (userName EQ "x") AND emails.type Eq "home""#, true),
        ] {
            let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e:?}"));
            assert_eq!(f.matches(&user, &insensitive), want, "{filter}");
        }
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "userName",
            r#"userName zz "a""#,
            r#"userName eq "a"#,
            r#"(userName eq "a""#,
            r#"userName eq "a" extra"#,
            r#"emails[type eq "work""#,
            "not userName pr",
            r#"user name eq "a""#,
            r#"userName eq bare"#,
        ] {
            let e = Filter::parse(bad).unwrap_err();
            assert_eq!(e.scim_type, Some("invalidFilter"), "{bad}");
        }
        let deep = format!("{}userName pr{}", "(".repeat(40), ")".repeat(40));
        assert!(Filter::parse(&deep).is_err());
        assert!(Filter::parse(&"a".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn patch_paths() {
        let p = PatchPath::parse(r#"emails[type eq "work"].value"#).unwrap();
        assert!(p.attr.is("emails"));
        assert_eq!(p.sub.as_deref(), Some("value"));
        let p = PatchPath::parse(r#"members[value eq "2819c223"]"#).unwrap();
        assert!(p.filter.is_some() && p.sub.is_none());
        let p = PatchPath::parse(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
        )
        .unwrap();
        assert_eq!(
            p.attr.schema.as_deref(),
            Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
        );
        assert!(p.attr.is_sub("manager", Some("value")));
        assert!(
            PatchPath::parse("name.givenName")
                .unwrap()
                .attr
                .is_sub("name", Some("givenName"))
        );
        for bad in ["", "emails[type eq", "emails[type eq \"x\"]value", "a b"] {
            assert_eq!(
                PatchPath::parse(bad).unwrap_err().scim_type,
                Some("invalidPath"),
                "{bad}"
            );
        }
    }
}
