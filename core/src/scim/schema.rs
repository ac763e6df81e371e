//! The SCIM schemas polyhub serves (RFC 7643 §4.1, §4.2, §4.3): one table
//! drives input checking, filters, sorting and the `/Schemas` document, so
//! what the discovery says is what the server does.

use serde_json::{Map, Value, json};

use super::ScimError;
use super::filter::AttrPath;

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    String,
    Boolean,
    Complex,
    Reference,
    DateTime,
    Binary,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Boolean => "boolean",
            Type::Complex => "complex",
            Type::Reference => "reference",
            Type::DateTime => "dateTime",
            Type::Binary => "binary",
        }
    }
}

/// One attribute of a schema.
#[derive(Debug)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Type,
    pub multi: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: &'static str,
    pub returned: &'static str,
    pub uniqueness: &'static str,
    pub sub: &'static [Attr],
    pub canonical: &'static [&'static str],
    pub references: &'static [&'static str],
}

const fn s(name: &'static str) -> Attr {
    Attr {
        name,
        ty: Type::String,
        multi: false,
        required: false,
        case_exact: false,
        mutability: "readWrite",
        returned: "default",
        uniqueness: "none",
        sub: &[],
        canonical: &[],
        references: &[],
    }
}

const fn typed(name: &'static str, ty: Type) -> Attr {
    Attr { ty, ..s(name) }
}

const fn complex(name: &'static str, sub: &'static [Attr]) -> Attr {
    Attr {
        ty: Type::Complex,
        sub,
        ..s(name)
    }
}

const fn multi(name: &'static str, sub: &'static [Attr]) -> Attr {
    Attr {
        ty: Type::Complex,
        multi: true,
        sub,
        ..s(name)
    }
}

const fn canonical(name: &'static str, values: &'static [&'static str]) -> Attr {
    Attr {
        canonical: values,
        ..s(name)
    }
}

const EMAILS: &[Attr] = &[
    Attr {
        required: true,
        ..s("value")
    },
    s("display"),
    canonical("type", &["work", "home", "other"]),
    typed("primary", Type::Boolean),
];
const PHONES: &[Attr] = &[
    s("value"),
    s("display"),
    canonical("type", &["work", "home", "mobile", "fax", "pager", "other"]),
    typed("primary", Type::Boolean),
];
const SIMPLE_PLURAL: &[Attr] = &[
    s("value"),
    s("display"),
    s("type"),
    typed("primary", Type::Boolean),
];
const ADDRESS: &[Attr] = &[
    s("formatted"),
    s("streetAddress"),
    s("locality"),
    s("region"),
    s("postalCode"),
    s("country"),
    canonical("type", &["work", "home", "other"]),
    typed("primary", Type::Boolean),
];
const NAME: &[Attr] = &[
    s("formatted"),
    s("familyName"),
    s("givenName"),
    s("middleName"),
    s("honorificPrefix"),
    s("honorificSuffix"),
];
const USER_GROUPS: &[Attr] = &[
    Attr {
        mutability: "readOnly",
        ..s("value")
    },
    Attr {
        ty: Type::Reference,
        mutability: "readOnly",
        references: &["Group"],
        ..s("$ref")
    },
    Attr {
        mutability: "readOnly",
        ..s("display")
    },
    Attr {
        mutability: "readOnly",
        canonical: &["direct"],
        ..s("type")
    },
];

/// The User schema's attributes. `userName`, `active` and `password` are
/// columns of their own; `groups` is read from memberships; the rest is
/// kept as sent, after [`normalize`].
pub static USER_ATTRS: &[Attr] = &[
    Attr {
        required: true,
        uniqueness: "server",
        ..s("userName")
    },
    complex("name", NAME),
    s("displayName"),
    s("nickName"),
    typed("profileUrl", Type::Reference),
    s("title"),
    s("userType"),
    s("preferredLanguage"),
    s("locale"),
    s("timezone"),
    typed("active", Type::Boolean),
    Attr {
        mutability: "writeOnly",
        returned: "never",
        case_exact: true,
        ..s("password")
    },
    // Required: polyhub needs an email for every user (the primary one
    // is the account's).
    Attr {
        required: true,
        ..multi("emails", EMAILS)
    },
    multi("phoneNumbers", PHONES),
    multi("ims", SIMPLE_PLURAL),
    multi("photos", SIMPLE_PLURAL),
    multi("addresses", ADDRESS),
    Attr {
        mutability: "readOnly",
        ..multi("groups", USER_GROUPS)
    },
    multi("entitlements", SIMPLE_PLURAL),
    multi("roles", SIMPLE_PLURAL),
    multi("x509Certificates", SIMPLE_PLURAL),
];

const MANAGER: &[Attr] = &[
    s("value"),
    Attr {
        ty: Type::Reference,
        references: &["User"],
        ..s("$ref")
    },
    Attr {
        mutability: "readOnly",
        ..s("displayName")
    },
];

pub static ENTERPRISE_ATTRS: &[Attr] = &[
    s("employeeNumber"),
    s("costCenter"),
    s("organization"),
    s("division"),
    s("department"),
    complex("manager", MANAGER),
];

const MEMBERS: &[Attr] = &[
    Attr {
        mutability: "immutable",
        ..s("value")
    },
    Attr {
        ty: Type::Reference,
        mutability: "immutable",
        references: &["User", "Group"],
        ..s("$ref")
    },
    Attr {
        mutability: "immutable",
        canonical: &["User"],
        ..s("type")
    },
];

pub static GROUP_ATTRS: &[Attr] = &[
    Attr {
        required: true,
        ..s("displayName")
    },
    multi("members", MEMBERS),
];

/// The definition `name` names among `attrs`, case-insensitively.
pub fn find<'a>(attrs: &'a [Attr], name: &str) -> Option<&'a Attr> {
    attrs.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// What a path names in the User schema (or the enterprise extension):
/// the attribute, and its sub-attribute if the path names one. None for
/// an unknown attribute.
pub fn user_path(path: &AttrPath) -> Option<(&'static Attr, Option<&'static Attr>, bool)> {
    let enterprise = match &path.schema {
        None => false,
        Some(s) if s.eq_ignore_ascii_case(USER) => false,
        Some(s) if s.eq_ignore_ascii_case(ENTERPRISE) => true,
        Some(_) => return None,
    };
    let attrs = if enterprise {
        ENTERPRISE_ATTRS
    } else {
        USER_ATTRS
    };
    let attr = find(attrs, &path.attr)?;
    let sub = match &path.sub {
        None => None,
        Some(sub) => Some(find(attr.sub, sub)?),
    };
    Some((attr, sub, enterprise))
}

/// Checks and reshapes one attribute's value as `attr` defines it: names
/// in their canonical case, booleans sent as `"True"`/`"false"` strings
/// (as Entra ID sends them) made booleans, a single value of a
/// multi-valued attribute made a list, nulls and unknown sub-attributes
/// dropped. A value of the wrong type is `invalidValue`.
pub fn normalize_value(attr: &Attr, value: &Value) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    if attr.multi {
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(v) = normalize_single(attr, item)? {
                out.push(v);
            }
        }
        if attr.sub.iter().any(|s| s.name == "primary")
            && out
                .iter()
                .filter(|v| v.get("primary") == Some(&Value::Bool(true)))
                .count()
                > 1
        {
            return Err(ScimError::invalid_value(format!(
                "at most one of {} may be primary",
                attr.name
            )));
        }
        return Ok((!out.is_empty()).then_some(Value::Array(out)));
    }
    normalize_single(attr, value)
}

fn normalize_single(attr: &Attr, value: &Value) -> Result<Option<Value>, ScimError> {
    let wrong = || {
        ScimError::invalid_value(format!(
            "{} must be a {}",
            attr.name,
            if attr.ty == Type::Complex {
                "JSON object"
            } else {
                attr.ty.name()
            }
        ))
    };
    Ok(Some(match (attr.ty, value) {
        (_, Value::Null) => return Ok(None),
        (Type::Complex, Value::Object(map)) => {
            let mut out = Map::new();
            for (key, v) in map {
                let Some(sub) = find(attr.sub, key) else {
                    continue;
                };
                if let Some(v) = normalize_single(sub, v)? {
                    out.insert(sub.name.to_owned(), v);
                }
            }
            if out.is_empty() {
                return Ok(None);
            }
            Value::Object(out)
        }
        (Type::Boolean, Value::Bool(b)) => Value::Bool(*b),
        (Type::Boolean, Value::String(text)) if text.eq_ignore_ascii_case("true") => {
            Value::Bool(true)
        }
        (Type::Boolean, Value::String(text)) if text.eq_ignore_ascii_case("false") => {
            Value::Bool(false)
        }
        (Type::String | Type::Reference | Type::DateTime | Type::Binary, Value::String(text)) => {
            if text.len() > 2048 {
                return Err(ScimError::invalid_value(format!(
                    "{} is longer than 2048 bytes",
                    attr.name
                )));
            }
            Value::String(text.clone())
        }
        _ => return Err(wrong()),
    }))
}

/// The `schemas` entry of one schema, for `/Schemas`.
pub fn document(id: &str, name: &str, description: &str, attrs: &[Attr], base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": id,
        "name": name,
        "description": description,
        "attributes": attrs.iter().map(describe).collect::<Vec<_>>(),
        "meta": {
            "resourceType": "Schema",
            "location": format!("{base}/Schemas/{id}"),
        },
    })
}

fn describe(attr: &Attr) -> Value {
    let mut out = json!({
        "name": attr.name,
        "type": attr.ty.name(),
        "multiValued": attr.multi,
        "description": attr.name,
        "required": attr.required,
        "caseExact": attr.case_exact,
        "mutability": attr.mutability,
        "returned": attr.returned,
        "uniqueness": attr.uniqueness,
    });
    if !attr.sub.is_empty() {
        out["subAttributes"] = attr.sub.iter().map(describe).collect::<Vec<_>>().into();
    }
    if !attr.canonical.is_empty() {
        out["canonicalValues"] = attr.canonical.to_vec().into();
    }
    if attr.ty == Type::Reference {
        out["referenceTypes"] = if attr.references.is_empty() {
            vec!["external"].into()
        } else {
            attr.references.to_vec().into()
        };
    }
    out
}

/// The member of `object` a path's attribute names, with its key as
/// stored, case-insensitively.
pub fn key_of(object: &Map<String, Value>, name: &str) -> Option<String> {
    object
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned()
}
