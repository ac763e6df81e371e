//! PATCH (RFC 7644 §3.5.2) applied to a resource's rendered JSON, as real
//! directories send it: `add`, `replace` and `remove` in any case
//! (Entra ID writes `Replace`), with and without a path, value-filtered
//! paths (`emails[type eq "work"].value`, `members[value eq "…"]`), a
//! path-less value whose keys are paths themselves (Entra ID's
//! `{"name.givenName": "…"}` and extension URNs), and `remove` of members
//! by value list (Okta, Entra ID). The result is then checked as a PUT body
//! is, so booleans sent as strings and the like are settled there.

use serde_json::{Map, Value};

use super::ScimError;
use super::filter::{AttrPath, PatchPath, get_ci};
use super::schema::{self, Attr};

/// The most operations one PATCH may carry.
pub const MAX_OPERATIONS: usize = 1000;

/// The attribute name that stands for a whole extension's object in a
/// remove (no attribute has it).
const WHOLE: &str = "$whole";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Replace,
    Remove,
}

/// Which resource a PATCH is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    User,
    Group,
}

impl Resource {
    fn attrs(self) -> &'static [Attr] {
        match self {
            Resource::User => schema::USER_ATTRS,
            Resource::Group => schema::GROUP_ATTRS,
        }
    }

    fn core(self) -> &'static str {
        match self {
            Resource::User => schema::USER,
            Resource::Group => schema::GROUP,
        }
    }
}

#[derive(Debug, Clone)]
struct Operation {
    op: Op,
    path: Option<PatchPath>,
    value: Option<Value>,
}

/// A PATCH request's operations, parsed.
#[derive(Debug, Clone)]
pub struct Operations(Vec<Operation>);

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

impl Operations {
    pub fn parse(body: &Value) -> Result<Self, ScimError> {
        let schemas = get_ci(body, "schemas").and_then(Value::as_array);
        if !schemas.is_some_and(|s| s.iter().any(|v| v.as_str() == Some(PATCH_OP))) {
            return Err(ScimError::invalid_syntax(format!(
                "a PATCH body's schemas must include {PATCH_OP}"
            )));
        }
        let Some(Value::Array(items)) = get_ci(body, "Operations") else {
            return Err(ScimError::invalid_syntax(
                "a PATCH body needs Operations, a list",
            ));
        };
        if items.len() > MAX_OPERATIONS {
            return Err(ScimError::invalid_syntax(format!(
                "a PATCH carries at most {MAX_OPERATIONS} operations"
            )));
        }
        let mut ops = Vec::with_capacity(items.len());
        for item in items {
            let op = match get_ci(item, "op")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
            {
                Some(o) if o == "add" => Op::Add,
                Some(o) if o == "replace" => Op::Replace,
                Some(o) if o == "remove" => Op::Remove,
                _ => {
                    return Err(ScimError::invalid_syntax(
                        "every operation's op is add, replace or remove",
                    ));
                }
            };
            let path = match get_ci(item, "path") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if p.is_empty() => None,
                // The whole extension: its object, as a value without a
                // path under that schema.
                Some(Value::String(p)) if p.trim().eq_ignore_ascii_case(schema::ENTERPRISE) => {
                    let value = get_ci(item, "value").cloned();
                    ops.push(match (op, value) {
                        (Op::Remove, _) => Operation {
                            op,
                            path: Some(PatchPath::parse(&format!(
                                "{}:{WHOLE}",
                                schema::ENTERPRISE
                            ))?),
                            value: None,
                        },
                        (_, Some(Value::Object(inner))) => Operation {
                            op,
                            path: None,
                            value: Some(Value::Object(
                                [(schema::ENTERPRISE.to_owned(), Value::Object(inner))]
                                    .into_iter()
                                    .collect(),
                            )),
                        },
                        _ => {
                            return Err(ScimError::invalid_value(format!(
                                "{} takes an object",
                                schema::ENTERPRISE
                            )));
                        }
                    });
                    continue;
                }
                Some(Value::String(p)) => Some(PatchPath::parse(p)?),
                Some(_) => return Err(ScimError::invalid_path("a path is a string".into())),
            };
            let value = get_ci(item, "value").cloned();
            if op != Op::Remove && value.is_none() {
                return Err(ScimError::invalid_syntax(format!(
                    "an {} needs a value",
                    if op == Op::Add { "add" } else { "replace" }
                )));
            }
            if op == Op::Remove && path.is_none() {
                return Err(ScimError::no_target("a remove needs a path".into()));
            }
            ops.push(Operation { op, path, value });
        }
        Ok(Self(ops))
    }

    /// Applies every operation, in order, to `doc`.
    pub fn apply(&self, doc: &mut Value, resource: Resource) -> Result<(), ScimError> {
        let Value::Object(map) = doc else {
            return Err(ScimError::invalid_syntax("not a resource"));
        };
        for operation in &self.0 {
            match &operation.path {
                Some(path) => {
                    apply_path(map, resource, operation.op, path, operation.value.as_ref())?
                }
                None => {
                    let Some(Value::Object(values)) = &operation.value else {
                        return Err(ScimError::invalid_value(
                            "an operation without a path needs an object value".into(),
                        ));
                    };
                    for (key, value) in values {
                        // Okta repeats what it cannot change: the id as it
                        // is (any other is refused below), schemas, meta.
                        if key.eq_ignore_ascii_case("schemas") || key.eq_ignore_ascii_case("meta") {
                            continue;
                        }
                        if key.eq_ignore_ascii_case("id") && map.get("id") == Some(value) {
                            continue;
                        }
                        // An extension's object: each of its members is a path
                        // under that schema.
                        if key.eq_ignore_ascii_case(schema::ENTERPRISE) && value.is_object() {
                            if let Value::Object(inner) = value {
                                for (k, v) in inner {
                                    if k.eq_ignore_ascii_case("schemas") {
                                        continue;
                                    }
                                    let path = PatchPath::parse(&format!("{key}:{k}"))?;
                                    apply_path(map, resource, operation.op, &path, Some(v))?;
                                }
                            }
                            continue;
                        }
                        let path = PatchPath::parse(key)?;
                        apply_path(map, resource, operation.op, &path, Some(value))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// An object attributes live in, and the schema table of its attributes.
type Holder<'a> = (&'a mut Map<String, Value>, &'static [Attr]);

/// The object an attribute path lives in (the resource, or its extension's
/// object), created for add and replace.
fn holder<'a>(
    map: &'a mut Map<String, Value>,
    resource: Resource,
    path: &AttrPath,
    create: bool,
) -> Result<Option<Holder<'a>>, ScimError> {
    match &path.schema {
        None => Ok(Some((map, resource.attrs()))),
        Some(s) if s.eq_ignore_ascii_case(resource.core()) => Ok(Some((map, resource.attrs()))),
        Some(s) if resource == Resource::User && s.eq_ignore_ascii_case(schema::ENTERPRISE) => {
            if !map.contains_key(schema::ENTERPRISE) {
                if !create {
                    return Ok(None);
                }
                map.insert(schema::ENTERPRISE.to_owned(), Value::Object(Map::new()));
            }
            match map.get_mut(schema::ENTERPRISE) {
                Some(Value::Object(ext)) => Ok(Some((ext, schema::ENTERPRISE_ATTRS))),
                _ => Err(ScimError::invalid_value(format!(
                    "{} is not an object",
                    schema::ENTERPRISE
                ))),
            }
        }
        Some(s) => Err(ScimError::invalid_path(format!("unknown schema {s}"))),
    }
}

/// Attributes the resource keeps outside its schema table, with their
/// names as rendered.
fn top_level(resource: Resource, name: &str) -> Option<&'static str> {
    let names: &[&str] = match resource {
        Resource::User => &["externalId", "userName", "active", "password"],
        Resource::Group => &["externalId", "displayName"],
    };
    names.iter().find(|n| n.eq_ignore_ascii_case(name)).copied()
}

fn apply_path(
    map: &mut Map<String, Value>,
    resource: Resource,
    op: Op,
    path: &PatchPath,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let attr_path = &path.attr;
    if attr_path.is("id") || attr_path.is("meta") || attr_path.is("schemas") {
        return Err(ScimError::mutability(format!(
            "{attr_path} cannot be changed"
        )));
    }
    if resource == Resource::User && attr_path.is("groups") {
        return Err(ScimError::mutability(
            "groups is read-only: change a group's members instead".into(),
        ));
    }
    if attr_path.attr == WHOLE && op == Op::Remove {
        map.remove(schema::ENTERPRISE);
        return Ok(());
    }
    let Some((object, attrs)) = holder(map, resource, attr_path, op != Op::Remove)? else {
        return Ok(());
    };
    let (name, def): (String, Option<&Attr>) = match schema::find(attrs, &attr_path.attr) {
        Some(def) => (def.name.to_owned(), Some(def)),
        None => match top_level(resource, &attr_path.attr) {
            Some(name)
                if attr_path
                    .schema
                    .as_deref()
                    .is_none_or(|s| !s.eq_ignore_ascii_case(schema::ENTERPRISE)) =>
            {
                (name.to_owned(), None)
            }
            _ => {
                return Err(ScimError::invalid_path(format!(
                    "unknown attribute {attr_path}"
                )));
            }
        },
    };
    let key = schema::key_of(object, &name).unwrap_or(name.clone());
    let multi = def.is_some_and(|d| d.multi);

    // A value filter: act on the matching values of a multi-valued attribute.
    if let Some(filter) = &path.filter {
        if !multi {
            return Err(ScimError::invalid_path(format!(
                "{name} is not multi-valued"
            )));
        }
        let case_exact = |_: &AttrPath| false;
        let Some(Value::Array(items)) = object.get_mut(&key) else {
            if op == Op::Add {
                // Entra ID adds `emails[type eq "work"].value` to a user
                // with no such email: make the value the filter describes.
                return add_described(object, &key, filter, path.sub.as_deref(), value);
            }
            return Err(ScimError::no_target(format!(
                "no {name} value matches the filter"
            )));
        };
        let matched: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| filter.matches(item, &case_exact))
            .map(|(i, _)| i)
            .collect();
        if matched.is_empty() {
            if op == Op::Add {
                return add_described(object, &key, filter, path.sub.as_deref(), value);
            }
            return Err(ScimError::no_target(format!(
                "no {name} value matches the filter"
            )));
        }
        match (op, &path.sub) {
            (Op::Remove, None) => {
                let mut i = 0;
                items.retain(|_| {
                    let keep = !matched.contains(&i);
                    i += 1;
                    keep
                });
            }
            (Op::Remove, Some(sub)) => {
                for i in matched {
                    if let Some(Value::Object(item)) = items.get_mut(i)
                        && let Some(k) = schema::key_of(item, sub)
                    {
                        item.remove(&k);
                    }
                }
            }
            (_, Some(sub)) => {
                for i in matched {
                    if let Some(Value::Object(item)) = items.get_mut(i) {
                        let k = schema::key_of(item, sub).unwrap_or(sub.clone());
                        item.insert(k, value.cloned().unwrap_or(Value::Null));
                    }
                }
            }
            (_, None) => {
                for i in matched {
                    if let (Some(Value::Object(item)), Some(Value::Object(new))) =
                        (items.get_mut(i), value)
                    {
                        for (k, v) in new {
                            item.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
        return Ok(());
    }

    match (op, &attr_path.sub) {
        (Op::Remove, None) => {
            match (value, object.get_mut(&key)) {
                // Remove the listed values (members by value, as Okta and
                // Entra ID send them).
                (Some(Value::Array(gone)), Some(Value::Array(items))) if multi => {
                    let ids: Vec<&str> = gone
                        .iter()
                        .filter_map(|g| g.get("value").and_then(Value::as_str))
                        .collect();
                    items.retain(|item| {
                        !item
                            .get("value")
                            .and_then(Value::as_str)
                            .is_some_and(|v| ids.iter().any(|id| id.eq_ignore_ascii_case(v)))
                    });
                }
                _ => {
                    object.remove(&key);
                }
            }
        }
        (Op::Remove, Some(sub)) => match object.get_mut(&key) {
            Some(Value::Object(inner)) => {
                if let Some(k) = schema::key_of(inner, sub) {
                    inner.remove(&k);
                }
            }
            Some(Value::Array(items)) => {
                for item in items {
                    if let Value::Object(inner) = item
                        && let Some(k) = schema::key_of(inner, sub)
                    {
                        inner.remove(&k);
                    }
                }
            }
            _ => {}
        },
        (_, Some(sub)) => {
            let entry = object
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(inner) => {
                    let k = schema::key_of(inner, sub).unwrap_or(sub.clone());
                    inner.insert(k, value.cloned().unwrap_or(Value::Null));
                }
                Value::Array(items) => {
                    // `emails.value` on a multi-valued attribute: the
                    // primary value (or the only one).
                    let target = items
                        .iter()
                        .position(|e| e.get("primary") == Some(&Value::Bool(true)))
                        .or(if items.len() == 1 { Some(0) } else { None })
                        .ok_or_else(|| {
                            ScimError::invalid_path(format!(
                                "{attr_path}: name one value with a filter"
                            ))
                        })?;
                    if let Some(Value::Object(inner)) = items.get_mut(target) {
                        let k = schema::key_of(inner, sub).unwrap_or(sub.clone());
                        inner.insert(k, value.cloned().unwrap_or(Value::Null));
                    }
                }
                _ => {
                    return Err(ScimError::invalid_path(format!(
                        "{name} has no sub-attributes"
                    )));
                }
            }
        }
        (Op::Add, None) if multi => {
            let new: Vec<Value> = match value {
                Some(Value::Array(v)) => v.clone(),
                Some(other) => vec![other.clone()],
                None => Vec::new(),
            };
            let entry = object
                .entry(key.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if !entry.is_array() {
                *entry = Value::Array(Vec::new());
            }
            if let Value::Array(items) = entry {
                // A new primary value takes the mark from the old one.
                if new
                    .iter()
                    .any(|n| n.get("primary") == Some(&Value::Bool(true)))
                {
                    for item in items.iter_mut() {
                        if let Value::Object(o) = item {
                            o.remove("primary");
                        }
                    }
                }
                for n in new {
                    let same = items
                        .iter()
                        .position(|i| i.get("value").is_some() && i.get("value") == n.get("value"));
                    match same {
                        Some(at) => items[at] = n,
                        None => items.push(n),
                    }
                }
            }
        }
        (Op::Add | Op::Replace, None) => {
            let complex = def.is_some_and(|d| d.ty == schema::Type::Complex && !d.multi);
            match (complex, object.get_mut(&key), value) {
                (true, Some(Value::Object(inner)), Some(Value::Object(new))) => {
                    for (k, v) in new {
                        let k2 = schema::key_of(inner, k).unwrap_or(k.clone());
                        inner.insert(k2, v.clone());
                    }
                }
                _ => {
                    object.insert(key, value.cloned().unwrap_or(Value::Null));
                }
            }
        }
    }
    Ok(())
}

/// For an add through a value filter that matched nothing: a new value
/// made of the filter's `eq` terms and the value given.
fn add_described(
    object: &mut Map<String, Value>,
    key: &str,
    filter: &super::Filter,
    sub: Option<&str>,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let mut item = Map::new();
    collect_eq(filter, &mut item)?;
    match (sub, value) {
        (Some(sub), Some(v)) => {
            item.insert(sub.to_owned(), v.clone());
        }
        (None, Some(Value::Object(v))) => {
            for (k, v) in v {
                item.insert(k.clone(), v.clone());
            }
        }
        _ => {}
    }
    let entry = object
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = entry {
        items.push(Value::Object(item));
    }
    Ok(())
}

fn collect_eq(filter: &super::Filter, into: &mut Map<String, Value>) -> Result<(), ScimError> {
    use super::filter::{CompValue, CompareOp, Filter};
    match filter {
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value,
        } if path.sub.is_none() => {
            let v = match value {
                CompValue::Str(s) => Value::from(s.clone()),
                CompValue::Bool(b) => Value::from(*b),
                CompValue::Num(n) => serde_json::Number::from_f64(*n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                CompValue::Null => Value::Null,
            };
            into.insert(path.attr.clone(), v);
            Ok(())
        }
        Filter::And(a, b) => {
            collect_eq(a, into)?;
            collect_eq(b, into)
        }
        _ => Err(ScimError::no_target(
            "no value matches the filter, and it does not describe a new one".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(doc: &mut Value, ops: Value, resource: Resource) -> Result<(), ScimError> {
        Operations::parse(&json!({
            "schemas": [PATCH_OP],
            "Operations": ops,
        }))?
        .apply(doc, resource)
    }

    #[test]
    fn entra_shapes() {
        let mut user = json!({
            "userName": "alice@corp.example", "active": true,
            "emails": [{"type": "work", "value": "alice@corp.example", "primary": true}]
        });
        patch(
            &mut user,
            json!([
                {"op": "Replace", "path": "active", "value": "False"},
                {"op": "Add", "path": "emails[type eq \"work\"].value", "value": "alice2@corp.example"},
                {"op": "Add", "value": {"name.givenName": "Alice", "title": "CTO"}},
                {"op": "Replace", "value": {
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department": "R&D"}},
                {"op": "replace", "value": {"displayName": "Alice A."}},
            ]),
            Resource::User,
        )
        .unwrap();
        assert_eq!(
            user["active"], "False",
            "settled as a boolean by the PUT rules"
        );
        assert_eq!(user["emails"][0]["value"], "alice2@corp.example");
        assert_eq!(user["name"]["givenName"], "Alice");
        assert_eq!(user["title"], "CTO");
        assert_eq!(user[schema::ENTERPRISE]["department"], "R&D");
        assert_eq!(user["displayName"], "Alice A.");
        patch(
            &mut user,
            json!([{"op": "remove", "path": "title"}]),
            Resource::User,
        )
        .unwrap();
        assert!(user.get("title").is_none());
    }

    #[test]
    fn members_by_filter_and_by_value() {
        let mut group = json!({"displayName": "g", "members": [
            {"value": "a"}, {"value": "b"}, {"value": "c"}]});
        patch(
            &mut group,
            json!([{"op": "Remove", "path": "members[value eq \"a\"]"}]),
            Resource::Group,
        )
        .unwrap();
        patch(
            &mut group,
            json!([{"op": "remove", "path": "members", "value": [{"value": "b"}]}]),
            Resource::Group,
        )
        .unwrap();
        patch(
            &mut group,
            json!([{"op": "add", "path": "members", "value": [{"value": "d"}]}]),
            Resource::Group,
        )
        .unwrap();
        assert_eq!(group["members"], json!([{"value": "c"}, {"value": "d"}]));
        let e = patch(
            &mut group,
            json!([{"op": "remove", "path": "members[value eq \"zz\"]"}]),
            Resource::Group,
        )
        .unwrap_err();
        assert_eq!(e.scim_type, Some("noTarget"));
    }

    #[test]
    fn refusals() {
        let mut user = json!({"userName": "a"});
        for (ops, kind) in [
            (
                json!([{"op": "move", "path": "title", "value": "x"}]),
                "invalidSyntax",
            ),
            (json!([{"op": "remove"}]), "noTarget"),
            (
                json!([{"op": "replace", "path": "id", "value": "x"}]),
                "mutability",
            ),
            (
                json!([{"op": "replace", "path": "nosuch", "value": "x"}]),
                "invalidPath",
            ),
            (json!([{"op": "add", "path": "title"}]), "invalidSyntax"),
        ] {
            let e = patch(&mut user, ops.clone(), Resource::User).unwrap_err();
            assert_eq!(e.scim_type, Some(kind), "{ops}");
        }
        let e = Operations::parse(&json!({"Operations": []})).unwrap_err();
        assert_eq!(e.scim_type, Some("invalidSyntax"));
    }
}
