//! SCIM's users and groups in PostgreSQL, and its filters as SQL.
//!
//! A filter becomes one WHERE clause, every literal a bind parameter and
//! every column or JSON path a fixed string from the schema table, so no
//! filter can write SQL. `userName` and `emails` have trigram indexes
//! (`co`, `sw`, `ew`) beside the unique one on `lower(username)` (`eq`),
//! and `externalId` its own; other attributes are read from the `scim`
//! column and cost a scan of the rows the indexed terms leave.

use async_trait::async_trait;
use hub_core::events::{DomainEvent, UserEvent};
use hub_core::ports::{LAST_ADMIN, ROLE_CHANGED};
use hub_core::scim::{
    AttrPath, CompValue, CompareOp, Filter, GroupRef, GroupWrite, ListQuery, Member, Page,
    ScimGroup, ScimStore, ScimUser, UserWrite, Written, schema,
};
use hub_core::{Email, Error, ErrorCode, Role, UserId, Username};
use serde_json::{Map, Value};
use sqlx::postgres::{PgPool, Postgres};
use sqlx::types::Json;
use sqlx::{PgTransaction, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;
use super::sessions::{forget_devices, revoke_sessions_of, revoked_with_events};

/// SCIM's store.
#[derive(Debug, Clone)]
pub struct PgScimStore {
    pool: PgPool,
}

impl PgScimStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

macro_rules! user_columns {
    () => {
        "u.id, u.username, u.email, u.role, u.active, u.external_id, u.scim, u.version, \
         u.created_at, u.updated_at, \
         coalesce((SELECT jsonb_agg(jsonb_build_array(g.id::text, g.display_name) \
                                    ORDER BY g.display_name) \
                   FROM scim_group_members m JOIN scim_groups g ON g.id = m.group_id \
                   WHERE m.user_id = u.id), '[]'::jsonb) AS groups"
    };
}

macro_rules! group_columns {
    () => {
        "g.id, g.display_name, g.external_id, g.version, g.created_at, g.updated_at, \
         coalesce((SELECT jsonb_agg(jsonb_build_array(u.id::text, u.username) ORDER BY u.username) \
                   FROM scim_group_members m JOIN users u ON u.id = m.user_id \
                   WHERE m.group_id = g.id), '[]'::jsonb) AS members"
    };
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    username: String,
    email: String,
    role: String,
    active: bool,
    external_id: Option<String>,
    scim: Json<Value>,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    groups: Json<Vec<(String, String)>>,
}

#[derive(sqlx::FromRow)]
struct CountedUser {
    #[sqlx(flatten)]
    row: UserRow,
    total: i64,
}

#[derive(sqlx::FromRow)]
struct GroupRow {
    id: Uuid,
    display_name: String,
    external_id: Option<String>,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    members: Json<Vec<(String, String)>>,
}

#[derive(sqlx::FromRow)]
struct CountedGroup {
    #[sqlx(flatten)]
    row: GroupRow,
    total: i64,
}

impl TryFrom<UserRow> for ScimUser {
    type Error = Error;
    fn try_from(row: UserRow) -> Result<Self, Error> {
        let corrupt =
            |field: &str| Error::internal(format!("users row {} has a bad {field}", row.id));
        Ok(ScimUser {
            id: UserId::try_from(row.id).map_err(|_| corrupt("id"))?,
            username: Username::parse(&row.username).map_err(|_| corrupt("username"))?,
            email: Email::stored(&row.email).map_err(|_| corrupt("email"))?,
            role: Role::parse(&row.role).map_err(|_| corrupt("role"))?,
            active: row.active,
            external_id: row.external_id,
            attributes: match row.scim.0 {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            groups: row
                .groups
                .0
                .into_iter()
                .filter_map(|(id, display)| {
                    Some(GroupRef {
                        id: Uuid::parse_str(&id).ok()?,
                        display,
                    })
                })
                .collect(),
            created_at: row.created_at,
            updated_at: row.updated_at,
            version: row.version,
        })
    }
}

impl From<GroupRow> for ScimGroup {
    fn from(row: GroupRow) -> Self {
        ScimGroup {
            id: row.id,
            display_name: row.display_name,
            external_id: row.external_id,
            members: row
                .members
                .0
                .into_iter()
                .filter_map(|(id, display)| {
                    Some(Member {
                        id: UserId::parse(&id).ok()?,
                        display,
                    })
                })
                .collect(),
            created_at: row.created_at,
            updated_at: row.updated_at,
            version: row.version,
        }
    }
}

/// What a filter's attribute is in SQL.
enum Column {
    /// A text expression, folded (`lower(...)`) unless case-exact.
    Text(&'static str, bool),
    Bool(&'static str),
    Time(&'static str),
    Uuid(&'static str),
    /// The user's email values, one per line, folded.
    Emails,
    /// A text inside the `scim` column (or a group's row), by JSON path.
    Json(Vec<String>, bool),
    /// A boolean inside the `scim` column.
    JsonBool(Vec<String>),
    /// Values of a multi-valued attribute of `scim`: an element matches.
    Elements(String),
    /// Group membership: of a user (`groups`) or of a group (`members`).
    UserGroups,
    GroupMembers,
}

fn user_column(path: &AttrPath) -> Result<Column, Error> {
    let bad = || {
        Error::with_message(
            ErrorCode::InvalidRequest,
            format!("cannot filter on {path}"),
        )
    };
    if path.schema.is_none()
        || path
            .schema
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(schema::USER))
    {
        if path.is("id") {
            return Ok(Column::Uuid("u.id"));
        }
        if path.is("externalId") {
            return Ok(Column::Text("u.external_id", true));
        }
        if path.is_sub("meta", Some("created")) {
            return Ok(Column::Time("u.created_at"));
        }
        if path.is_sub("meta", Some("lastModified")) {
            return Ok(Column::Time("u.updated_at"));
        }
    }
    let (attr, sub, enterprise) = schema::user_path(path).ok_or_else(bad)?;
    let mut json_path = Vec::new();
    if enterprise {
        json_path.push(schema::ENTERPRISE.to_owned());
    }
    Ok(match (attr.name, sub) {
        ("userName", None) => Column::Text("u.username", false),
        ("active", None) => Column::Bool("u.active"),
        ("password", _) => return Err(bad()),
        ("emails", None) => Column::Emails,
        ("emails", Some(s)) if s.name == "value" => Column::Emails,
        ("groups", _) => Column::UserGroups,
        (_, _) if attr.multi => Column::Elements(attr.name.to_owned()),
        (name, None) => {
            json_path.push(name.to_owned());
            if attr.ty == schema::Type::Boolean {
                Column::JsonBool(json_path)
            } else {
                Column::Json(json_path, attr.case_exact)
            }
        }
        (name, Some(sub)) => {
            json_path.push(name.to_owned());
            json_path.push(sub.name.to_owned());
            Column::Json(json_path, sub.case_exact)
        }
    })
}

fn group_column(path: &AttrPath) -> Result<Column, Error> {
    Ok(if path.is("id") {
        Column::Uuid("g.id")
    } else if path.is("externalId") {
        Column::Text("g.external_id", true)
    } else if path.is("displayName") {
        Column::Text("g.display_name", false)
    } else if path.is("members") {
        Column::GroupMembers
    } else if path.is_sub("meta", Some("created")) {
        Column::Time("g.created_at")
    } else if path.is_sub("meta", Some("lastModified")) {
        Column::Time("g.updated_at")
    } else {
        return Err(Error::with_message(
            ErrorCode::InvalidRequest,
            format!("cannot filter on {path}"),
        ));
    })
}

/// `value` as a LIKE pattern's literal part.
fn like_escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn text_value(value: &CompValue) -> Option<String> {
    match value {
        CompValue::Str(s) => Some(s.clone()),
        CompValue::Num(n) => Some(n.to_string()),
        CompValue::Bool(b) => Some(b.to_string()),
        CompValue::Null => None,
    }
}

/// Pushes a text comparison of `expr` (already folded if it should be).
fn push_text(qb: &mut QueryBuilder<Postgres>, expr: &str, op: CompareOp, value: String) {
    qb.push("(").push(expr);
    push_op_value(qb, op, value);
}

/// Pushes ` OP $n)`: the operator and its bound value, closing a `(expr`.
fn push_op_value(qb: &mut QueryBuilder<Postgres>, op: CompareOp, value: String) {
    let sql_op = match op {
        CompareOp::Eq => "=",
        CompareOp::Ne => "IS DISTINCT FROM",
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => "LIKE",
    };
    let value = match op {
        CompareOp::Co => format!("%{}%", like_escape(&value)),
        CompareOp::Sw => format!("{}%", like_escape(&value)),
        CompareOp::Ew => format!("%{}", like_escape(&value)),
        _ => value,
    };
    qb.push(" ").push(sql_op).push(" ");
    qb.push_bind(value);
    qb.push(")");
}

fn push_json_path(qb: &mut QueryBuilder<Postgres>, base: &str, path: Vec<String>) {
    qb.push("(").push(base).push(" #>> ");
    qb.push_bind(path);
    qb.push(")");
}

/// A term of a filter as SQL.
type Term<'a> = &'a dyn Fn(&mut QueryBuilder<Postgres>, &Filter) -> Result<(), Error>;

/// `filter`'s `and`, `or` and `not` as SQL, each other term by `term`.
fn push_logic(
    qb: &mut QueryBuilder<Postgres>,
    filter: &Filter,
    term: Term<'_>,
) -> Result<(), Error> {
    match filter {
        Filter::And(a, b) | Filter::Or(a, b) => {
            qb.push("(");
            push_logic(qb, a, term)?;
            qb.push(if matches!(filter, Filter::And(..)) {
                " AND "
            } else {
                " OR "
            });
            push_logic(qb, b, term)?;
            qb.push(")");
        }
        Filter::Not(a) => {
            qb.push("(NOT coalesce(");
            push_logic(qb, a, term)?;
            qb.push(", false))");
        }
        other => term(qb, other)?,
    }
    Ok(())
}

/// `EXISTS (... WHERE ` over the values `e` of the multi-valued `name`
/// kept in `scim`; the caller closes it.
fn push_elements_exist(qb: &mut QueryBuilder<Postgres>, name: String) {
    qb.push("EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(u.scim -> ");
    qb.push_bind(name.clone());
    qb.push(") = 'array' THEN u.scim -> ");
    qb.push_bind(name);
    qb.push(" ELSE '[]'::jsonb END) AS e WHERE ");
}

/// `EXISTS (... WHERE ` over a user's groups (`mg`) or a group's members
/// (`mu`); the caller closes it.
fn membership_exists(of_user: bool) -> &'static str {
    if of_user {
        "EXISTS (SELECT 1 FROM scim_group_members m JOIN scim_groups mg ON mg.id = m.group_id WHERE m.user_id = u.id AND "
    } else {
        "EXISTS (SELECT 1 FROM scim_group_members m JOIN users mu ON mu.id = m.user_id WHERE m.group_id = g.id AND "
    }
}

/// One filter as SQL, for users (`u`) or groups (`g`).
fn push_filter(
    qb: &mut QueryBuilder<Postgres>,
    filter: &Filter,
    column: &dyn Fn(&AttrPath) -> Result<Column, Error>,
) -> Result<(), Error> {
    push_logic(qb, filter, &|qb, term| push_term(qb, term, column))
}

/// One term of a filter (a presence, a comparison, a value filter).
fn push_term(
    qb: &mut QueryBuilder<Postgres>,
    filter: &Filter,
    column: &dyn Fn(&AttrPath) -> Result<Column, Error>,
) -> Result<(), Error> {
    match filter {
        Filter::And(..) | Filter::Or(..) | Filter::Not(..) => push_filter(qb, filter, column)?,
        Filter::Present(path) => match column(path)? {
            Column::Text(expr, _)
            | Column::Bool(expr)
            | Column::Time(expr)
            | Column::Uuid(expr) => {
                qb.push("(").push(expr).push(" IS NOT NULL)");
            }
            Column::Emails => {
                qb.push("(u.emails_text <> '')");
            }
            Column::Json(path, _) | Column::JsonBool(path) => {
                push_json_path(qb, "u.scim", path);
                qb.push(" IS NOT NULL");
            }
            Column::Elements(name) => {
                qb.push("(jsonb_array_length(coalesce(u.scim -> ");
                qb.push_bind(name);
                qb.push(", '[]'::jsonb)) > 0)");
            }
            Column::UserGroups => {
                qb.push("EXISTS (SELECT 1 FROM scim_group_members m WHERE m.user_id = u.id)");
            }
            Column::GroupMembers => {
                qb.push("EXISTS (SELECT 1 FROM scim_group_members m WHERE m.group_id = g.id)");
            }
        },
        Filter::Compare { path, op, value } => push_compare(qb, path, *op, value, column)?,
        Filter::ValuePath { path, filter } => {
            match column(path)? {
                Column::Elements(name) => {
                    push_elements_exist(qb, name);
                    push_element_filter(qb, filter)?;
                    qb.push(")");
                }
                Column::Emails => {
                    // The emails kept in `scim`; a user registered elsewhere
                    // has its one email as a work, primary value.
                    qb.push("EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(u.scim -> 'emails') = 'array' THEN u.scim -> 'emails' ELSE jsonb_build_array(jsonb_build_object('value', u.email, 'type', 'work', 'primary', true)) END) AS e WHERE ");
                    push_element_filter(qb, filter)?;
                    qb.push(")");
                }
                Column::UserGroups | Column::GroupMembers => {
                    let is_user = matches!(column(path)?, Column::UserGroups);
                    qb.push(membership_exists(is_user));
                    push_member_filter(qb, filter, is_user)?;
                    qb.push(")");
                }
                _ => {
                    return Err(Error::with_message(
                        ErrorCode::InvalidRequest,
                        format!("{path} is not multi-valued"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn push_compare(
    qb: &mut QueryBuilder<Postgres>,
    path: &AttrPath,
    op: CompareOp,
    value: &CompValue,
    column: &dyn Fn(&AttrPath) -> Result<Column, Error>,
) -> Result<(), Error> {
    let invalid =
        |why: &str| Error::with_message(ErrorCode::InvalidRequest, format!("{path}: {why}"));
    match column(path)? {
        Column::Text(expr, case_exact) => {
            let Some(v) = text_value(value) else {
                qb.push("(").push(expr).push(if op == CompareOp::Ne {
                    " IS NOT NULL)"
                } else {
                    " IS NULL)"
                });
                return Ok(());
            };
            if case_exact {
                push_text(qb, expr, op, v);
            } else {
                push_text(qb, &format!("lower({expr})"), op, v.to_lowercase());
            }
        }
        Column::Bool(expr) => {
            let CompValue::Bool(b) = value else {
                return Err(invalid("compare it with true or false"));
            };
            match op {
                CompareOp::Eq => qb.push("(").push(expr).push(" = "),
                CompareOp::Ne => qb.push("(").push(expr).push(" <> "),
                _ => return Err(invalid("a boolean compares with eq or ne")),
            };
            qb.push_bind(*b);
            qb.push(")");
        }
        Column::Time(expr) => {
            let CompValue::Str(s) = value else {
                return Err(invalid("compare it with a date-time string"));
            };
            let at = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| invalid("not an RFC 3339 date-time"))?;
            let sql_op = match op {
                CompareOp::Eq => "=",
                CompareOp::Ne => "<>",
                CompareOp::Gt => ">",
                CompareOp::Ge => ">=",
                CompareOp::Lt => "<",
                CompareOp::Le => "<=",
                _ => return Err(invalid("a date-time compares with eq ne gt ge lt le")),
            };
            qb.push("(").push(expr).push(" ").push(sql_op).push(" ");
            qb.push_bind(at);
            qb.push(")");
        }
        Column::Uuid(expr) => {
            let id = text_value(value).and_then(|v| Uuid::parse_str(&v).ok());
            match (op, id) {
                (CompareOp::Eq, Some(id)) => {
                    qb.push("(").push(expr).push(" = ");
                    qb.push_bind(id);
                    qb.push(")");
                }
                (CompareOp::Ne, Some(id)) => {
                    qb.push("(").push(expr).push(" <> ");
                    qb.push_bind(id);
                    qb.push(")");
                }
                (CompareOp::Ne, None) => {
                    qb.push("true");
                }
                (_, _) => {
                    let v = text_value(value).unwrap_or_default().to_lowercase();
                    push_text(qb, &format!("({expr})::text"), op, v);
                }
            }
        }
        Column::Emails => {
            let v = text_value(value)
                .ok_or_else(|| invalid("compare it with a string"))?
                .to_lowercase();
            // The trigram index narrows by the value anywhere; the exact
            // test then holds it to whole lines (one email each).
            let lines = "(E'\\n' || u.emails_text || E'\\n')";
            match op {
                CompareOp::Co => push_text(qb, "u.emails_text", CompareOp::Co, v),
                CompareOp::Eq | CompareOp::Sw | CompareOp::Ew => {
                    qb.push("(");
                    push_text(qb, "u.emails_text", CompareOp::Co, v.clone());
                    qb.push(" AND ");
                    let exact = match op {
                        CompareOp::Eq => format!("%\n{}\n%", like_escape(&v)),
                        CompareOp::Sw => format!("%\n{}%", like_escape(&v)),
                        _ => format!("%{}\n%", like_escape(&v)),
                    };
                    qb.push(lines).push(" LIKE ");
                    qb.push_bind(exact);
                    qb.push(")");
                }
                CompareOp::Ne => {
                    qb.push("(NOT ").push(lines).push(" LIKE ");
                    qb.push_bind(format!("%\n{}\n%", like_escape(&v)));
                    qb.push(")");
                }
                _ => {
                    qb.push("EXISTS (SELECT 1 FROM unnest(string_to_array(u.emails_text, E'\\n')) AS e(v) WHERE ");
                    push_text(qb, "e.v", op, v);
                    qb.push(")");
                }
            }
        }
        Column::Json(json_path, case_exact) => {
            let Some(v) = text_value(value) else {
                qb.push("(");
                push_json_path(qb, "u.scim", json_path);
                qb.push(if op == CompareOp::Ne {
                    " IS NOT NULL)"
                } else {
                    " IS NULL)"
                });
                return Ok(());
            };
            qb.push(if case_exact {
                "((u.scim #>> "
            } else {
                "(lower(u.scim #>> "
            });
            qb.push_bind(json_path);
            qb.push(")");
            push_op_value(qb, op, if case_exact { v } else { v.to_lowercase() });
        }
        Column::JsonBool(json_path) => {
            let CompValue::Bool(b) = value else {
                return Err(invalid("compare it with true or false"));
            };
            qb.push("((u.scim #> ");
            qb.push_bind(json_path);
            qb.push(")::text ");
            qb.push(match op {
                CompareOp::Eq => "= ",
                CompareOp::Ne => "IS DISTINCT FROM ",
                _ => return Err(invalid("a boolean compares with eq or ne")),
            });
            qb.push_bind(b.to_string());
            qb.push(")");
        }
        Column::Elements(name) => {
            push_elements_exist(qb, name);
            let sub = path.sub.clone().unwrap_or_else(|| "value".to_owned());
            push_element_compare(qb, &sub, op, value)?;
            qb.push(")");
        }
        Column::UserGroups | Column::GroupMembers => {
            let is_user = matches!(column(path)?, Column::UserGroups);
            qb.push(membership_exists(is_user));
            push_member_compare(qb, path.sub.as_deref(), op, value, is_user)?;
            qb.push(")");
        }
    }
    Ok(())
}

/// A filter inside `attr[...]`, on the element `e`.
fn push_element_filter(qb: &mut QueryBuilder<Postgres>, filter: &Filter) -> Result<(), Error> {
    push_logic(qb, filter, &push_element_term)
}

fn push_element_term(qb: &mut QueryBuilder<Postgres>, filter: &Filter) -> Result<(), Error> {
    match filter {
        Filter::And(..) | Filter::Or(..) | Filter::Not(..) => push_element_filter(qb, filter)?,
        Filter::Present(p) => {
            qb.push("(e ->> ");
            qb.push_bind(p.attr.clone());
            qb.push(" IS NOT NULL)");
        }
        Filter::Compare { path, op, value } => push_element_compare(qb, &path.attr, *op, value)?,
        Filter::ValuePath { .. } => {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "a value filter cannot nest another".to_owned(),
            ));
        }
    }
    Ok(())
}

fn push_element_compare(
    qb: &mut QueryBuilder<Postgres>,
    sub: &str,
    op: CompareOp,
    value: &CompValue,
) -> Result<(), Error> {
    // Sub-attribute names are stored in their canonical case; match any case.
    let key = match sub.to_ascii_lowercase().as_str() {
        "value" => "value",
        "type" => "type",
        "primary" => "primary",
        "display" => "display",
        _ => {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                format!("cannot filter on the sub-attribute {sub}"),
            ));
        }
    };
    match value {
        CompValue::Bool(b) => {
            qb.push("((e -> ")
                .push(format_args!("'{key}'"))
                .push(")::text ");
            qb.push(match op {
                CompareOp::Eq => "= ",
                CompareOp::Ne => "IS DISTINCT FROM ",
                _ => {
                    return Err(Error::with_message(
                        ErrorCode::InvalidRequest,
                        "a boolean compares with eq or ne".to_owned(),
                    ));
                }
            });
            qb.push_bind(b.to_string());
            qb.push(")");
        }
        other => {
            let v = text_value(other).unwrap_or_default().to_lowercase();
            push_text(qb, &format!("lower(e ->> '{key}')"), op, v);
        }
    }
    Ok(())
}

/// A filter inside `groups[...]` (of a user) or `members[...]` (of a group).
fn push_member_filter(
    qb: &mut QueryBuilder<Postgres>,
    filter: &Filter,
    of_user: bool,
) -> Result<(), Error> {
    push_logic(qb, filter, &|qb, term| match term {
        Filter::Compare { path, op, value } => {
            push_member_compare(qb, Some(&path.attr), *op, value, of_user)
        }
        _ => {
            qb.push("true");
            Ok(())
        }
    })
}

fn push_member_compare(
    qb: &mut QueryBuilder<Postgres>,
    sub: Option<&str>,
    op: CompareOp,
    value: &CompValue,
    of_user: bool,
) -> Result<(), Error> {
    let v = text_value(value).unwrap_or_default().to_lowercase();
    let expr = match (sub.map(str::to_ascii_lowercase).as_deref(), of_user) {
        (None | Some("value"), true) => "m.group_id::text",
        (None | Some("value"), false) => "m.user_id::text",
        (Some("display"), true) => "lower(mg.display_name)",
        (Some("display"), false) => "lower(mu.username)",
        _ => {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "members are filtered by value or display".to_owned(),
            ));
        }
    };
    push_text(qb, expr, op, v);
    Ok(())
}

/// The ORDER BY of a query's `sortBy`.
fn push_order(qb: &mut QueryBuilder<Postgres>, query: &ListQuery, users: bool) {
    let direction = if query.descending { " DESC" } else { " ASC" };
    let id = if users { "u.id" } else { "g.id" };
    qb.push(" ORDER BY ");
    if let Some(sort) = &query.sort_by {
        if users {
            match user_column(sort) {
                Ok(
                    Column::Text(expr, _)
                    | Column::Time(expr)
                    | Column::Bool(expr)
                    | Column::Uuid(expr),
                ) => {
                    qb.push(expr).push(direction).push(" NULLS LAST, ");
                }
                Ok(Column::Emails) => {
                    qb.push("u.emails_text").push(direction).push(", ");
                }
                Ok(Column::Json(path, _) | Column::JsonBool(path)) => {
                    qb.push("(u.scim #>> ");
                    qb.push_bind(path);
                    qb.push(")").push(direction).push(" NULLS LAST, ");
                }
                _ => {}
            }
        } else if let Ok(Column::Text(expr, _) | Column::Time(expr) | Column::Uuid(expr)) =
            group_column(sort)
        {
            qb.push(expr).push(direction).push(" NULLS LAST, ");
        }
    }
    qb.push(id).push(direction);
}

fn push_page(qb: &mut QueryBuilder<Postgres>, query: &ListQuery) {
    qb.push(" LIMIT ");
    qb.push_bind(i64::from(query.count));
    qb.push(" OFFSET ");
    qb.push_bind(i64::try_from(query.start_index.saturating_sub(1)).unwrap_or(i64::MAX));
}

/// Users who are in an admin group, among `users`.
async fn admins_by_group(
    tx: &mut PgTransaction<'_>,
    users: &[Uuid],
    admin_groups: &[String],
) -> Result<Vec<Uuid>, Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT m.user_id FROM scim_group_members m \
         JOIN scim_groups g ON g.id = m.group_id \
         WHERE m.user_id = ANY($1) AND lower(g.display_name) = ANY($2)",
    )
    .bind(users)
    .bind(admin_groups)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| classify("reading admin groups", e))
}

/// Gives each of `users` the role their admin groups say (admin while in
/// one; user once in none, if they were admin), revoking the sessions of
/// every user whose role changes, with events; refused if no admin would
/// remain. Runs after a group's members changed, in its transaction.
async fn apply_roles(
    tx: &mut PgTransaction<'_>,
    users: &[Uuid],
    admin_groups: &[String],
    at: OffsetDateTime,
) -> Result<Vec<DomainEvent>, Error> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    // Every admin's row, locked in one order, as change_role does: two
    // changes that each withdraw an admin are serialized.
    let admins: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM users WHERE role = 'admin' ORDER BY id FOR NO KEY UPDATE",
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| classify("changing roles", e))?;
    let wanted_admin = admins_by_group(tx, users, admin_groups).await?;
    let changed: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE users SET role = CASE WHEN id = ANY($2) THEN 'admin' ELSE 'user' END, updated_at = $3 \
         WHERE id = ANY($1) AND role <> CASE WHEN id = ANY($2) THEN 'admin' ELSE 'user' END \
         RETURNING id, role",
    )
    .bind(users)
    .bind(&wanted_admin)
    .bind(at)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| classify("changing roles", e))?;
    let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin'")
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| classify("changing roles", e))?;
    // A hub that has admins keeps one; one that never had any (its admins
    // all come from the directory) may still have none.
    if remaining == 0 && !admins.is_empty() {
        return Err(Error::with_message(ErrorCode::Forbidden, LAST_ADMIN));
    }
    let mut events = Vec::new();
    for (id, role) in changed {
        let user = UserId::try_from(id)?;
        let role = Role::parse(&role)?;
        events.push(
            UserEvent::new(
                Some(user),
                at,
                hub_core::events::UserChange::RoleChanged { role },
            )
            .into(),
        );
        let rows = revoke_sessions_of(tx, user, None, at).await?;
        forget_devices(tx, user).await?;
        for row in rows {
            events.push(super::sessions::revocation_event(row, at, ROLE_CHANGED)?);
        }
    }
    Ok(events)
}

#[async_trait]
impl ScimStore for PgScimStore {
    async fn insert_user(&self, user: &UserWrite, event: &UserEvent) -> Result<ScimUser, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("provisioning a user", e))?;
        let hash = user
            .password_hash
            .clone()
            .unwrap_or_else(hub_core::PasswordHash::unset);
        sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, role, created_at, updated_at, \
                                active, external_id, scim) \
             VALUES ($1, $2, $3, $4, 'user', $5, $5, $6, $7, $8)",
        )
        .bind(user.id.as_uuid())
        .bind(user.username.as_str())
        .bind(user.email.as_str())
        .bind(hash.as_str())
        .bind(user.at)
        .bind(user.active)
        .bind(&user.external_id)
        .bind(Json(Value::Object(user.attributes.clone())))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("provisioning a user", e))?;
        super::events::insert(&mut tx, &[event.clone().into()]).await?;
        let row: UserRow = sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users u WHERE u.id = $1"
        ))
        .bind(user.id.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| classify("provisioning a user", e))?;
        tx.commit()
            .await
            .map_err(|e| classify("provisioning a user", e))?;
        row.try_into()
    }

    async fn find_user(&self, id: UserId) -> Result<Option<ScimUser>, Error> {
        sqlx::query_as::<_, UserRow>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users u WHERE u.id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a user", e))?
        .map(ScimUser::try_from)
        .transpose()
    }

    async fn update_user(
        &self,
        user: &UserWrite,
        version: i64,
        events: &[UserEvent],
        revoke: Option<&'static str>,
    ) -> Result<Written<ScimUser>, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("changing a user", e))?;
        // The row lock orders this with logins (FOR SHARE in open_verified
        // and open_beside): a login either committed its session before,
        // and it is revoked below, or reads the new state after.
        let updated = sqlx::query(
            "UPDATE users SET username = $2, email = $3, active = $4, external_id = $5, scim = $6, \
                 password_hash = coalesce($7, password_hash), updated_at = $8 \
             WHERE id = $1 AND version = $9",
        )
        .bind(user.id.as_uuid())
        .bind(user.username.as_str())
        .bind(user.email.as_str())
        .bind(user.active)
        .bind(&user.external_id)
        .bind(Json(Value::Object(user.attributes.clone())))
        .bind(user.password_hash.as_ref().map(|h| h.as_str().to_owned()))
        .bind(user.at)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("changing a user", e))?;
        if updated.rows_affected() == 0 {
            return Ok(Written::Stale);
        }
        let first: Vec<DomainEvent> = events.iter().cloned().map(DomainEvent::from).collect();
        let rows = match revoke {
            Some(_) => {
                forget_devices(&mut tx, user.id).await?;
                revoke_sessions_of(&mut tx, user.id, None, user.at).await?
            }
            None => Vec::new(),
        };
        let row: UserRow = sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users u WHERE u.id = $1"
        ))
        .bind(user.id.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| classify("changing a user", e))?;
        revoked_with_events(tx, first, rows, user.at, revoke.unwrap_or("scim")).await?;
        Ok(Written::Done(row.try_into()?))
    }

    async fn delete_user(
        &self,
        id: UserId,
        version: Option<i64>,
        event: &UserEvent,
    ) -> Result<Written<bool>, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("deleting a user", e))?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM users WHERE id = $1 FOR UPDATE")
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| classify("deleting a user", e))?;
        match (current, version) {
            (None, _) => return Ok(Written::Done(false)),
            (Some(now), Some(expected)) if now != expected => return Ok(Written::Stale),
            _ => {}
        }
        // Revoked first, so every process's cache hears of each session.
        let rows = revoke_sessions_of(&mut tx, id, None, event.at).await?;
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("deleting a user", e))?;
        revoked_with_events(tx, vec![event.clone().into()], rows, event.at, "deleted").await?;
        Ok(Written::Done(true))
    }

    async fn query_users(&self, query: &ListQuery) -> Result<Page<ScimUser>, Error> {
        let mut qb = QueryBuilder::<Postgres>::new(concat!(
            "SELECT ",
            user_columns!(),
            ", count(*) OVER () AS total FROM users u WHERE "
        ));
        match &query.filter {
            Some(filter) => push_filter(&mut qb, filter, &user_column)?,
            None => {
                qb.push("true");
            }
        }
        push_order(&mut qb, query, true);
        push_page(&mut qb, query);
        let rows: Vec<CountedUser> = qb
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("querying users", e))?;
        let total = match rows.first() {
            Some(r) => u64::try_from(r.total).unwrap_or(0),
            None if query.start_index > 1 => self.count_users(query).await?,
            None => 0,
        };
        let items = rows
            .into_iter()
            .map(|r| ScimUser::try_from(r.row))
            .collect::<Result<_, _>>()?;
        Ok(Page { total, items })
    }

    async fn insert_group(
        &self,
        group: &GroupWrite,
        admin_groups: &[String],
        event: &UserEvent,
    ) -> Result<ScimGroup, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("provisioning a group", e))?;
        sqlx::query(
            "INSERT INTO scim_groups (id, display_name, external_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(group.id)
        .bind(&group.display_name)
        .bind(&group.external_id)
        .bind(group.at)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("provisioning a group", e))?;
        let members: Vec<Uuid> = group.members.iter().map(|m| m.as_uuid()).collect();
        set_members(&mut tx, group.id, &members).await?;
        let mut events: Vec<DomainEvent> = vec![event.clone().into()];
        events.extend(apply_roles(&mut tx, &members, admin_groups, group.at).await?);
        super::events::insert(&mut tx, &events).await?;
        let row = read_group(&mut tx, group.id).await?;
        tx.commit()
            .await
            .map_err(|e| classify("provisioning a group", e))?;
        row.map(ScimGroup::from)
            .ok_or_else(|| Error::internal("a group just stored is gone".to_owned()))
    }

    async fn find_group(&self, id: Uuid) -> Result<Option<ScimGroup>, Error> {
        Ok(sqlx::query_as::<_, GroupRow>(concat!(
            "SELECT ",
            group_columns!(),
            " FROM scim_groups g WHERE g.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a group", e))?
        .map(ScimGroup::from))
    }

    async fn update_group(
        &self,
        group: &GroupWrite,
        version: i64,
        admin_groups: &[String],
        event: &UserEvent,
    ) -> Result<Written<ScimGroup>, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("changing a group", e))?;
        let updated = sqlx::query(
            "UPDATE scim_groups SET display_name = $2, external_id = $3, updated_at = $4, \
                 version = version + 1 \
             WHERE id = $1 AND version = $5",
        )
        .bind(group.id)
        .bind(&group.display_name)
        .bind(&group.external_id)
        .bind(group.at)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("changing a group", e))?;
        if updated.rows_affected() == 0 {
            return Ok(Written::Stale);
        }
        let before: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM scim_group_members WHERE group_id = $1 RETURNING user_id",
        )
        .bind(group.id)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| classify("changing a group", e))?;
        let members: Vec<Uuid> = group.members.iter().map(|m| m.as_uuid()).collect();
        set_members(&mut tx, group.id, &members).await?;
        let mut touched = before;
        touched.extend(members.iter().copied());
        touched.sort_unstable();
        touched.dedup();
        let mut events: Vec<DomainEvent> = vec![event.clone().into()];
        events.extend(apply_roles(&mut tx, &touched, admin_groups, group.at).await?);
        super::events::insert(&mut tx, &events).await?;
        let row = read_group(&mut tx, group.id).await?;
        tx.commit()
            .await
            .map_err(|e| classify("changing a group", e))?;
        Ok(match row {
            Some(row) => Written::Done(row.into()),
            None => Written::Stale,
        })
    }

    async fn delete_group(
        &self,
        id: Uuid,
        version: Option<i64>,
        admin_groups: &[String],
        event: &UserEvent,
    ) -> Result<Written<bool>, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("deleting a group", e))?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM scim_groups WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| classify("deleting a group", e))?;
        match (current, version) {
            (None, _) => return Ok(Written::Done(false)),
            (Some(now), Some(expected)) if now != expected => return Ok(Written::Stale),
            _ => {}
        }
        let members: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM scim_group_members WHERE group_id = $1 RETURNING user_id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| classify("deleting a group", e))?;
        sqlx::query("DELETE FROM scim_groups WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("deleting a group", e))?;
        let mut events: Vec<DomainEvent> = vec![event.clone().into()];
        events.extend(apply_roles(&mut tx, &members, admin_groups, event.at).await?);
        super::events::insert(&mut tx, &events).await?;
        tx.commit()
            .await
            .map_err(|e| classify("deleting a group", e))?;
        Ok(Written::Done(true))
    }

    async fn query_groups(&self, query: &ListQuery) -> Result<Page<ScimGroup>, Error> {
        let mut qb = QueryBuilder::<Postgres>::new(concat!(
            "SELECT ",
            group_columns!(),
            ", count(*) OVER () AS total FROM scim_groups g WHERE "
        ));
        match &query.filter {
            Some(filter) => push_filter(&mut qb, filter, &group_column)?,
            None => {
                qb.push("true");
            }
        }
        push_order(&mut qb, query, false);
        push_page(&mut qb, query);
        let rows: Vec<CountedGroup> = qb
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("querying groups", e))?;
        let total = rows
            .first()
            .map(|r| u64::try_from(r.total).unwrap_or(0))
            .unwrap_or(0);
        Ok(Page {
            total,
            items: rows.into_iter().map(|r| r.row.into()).collect(),
        })
    }

    async fn existing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, Error> {
        let ids: Vec<Uuid> = ids.iter().map(|i| i.as_uuid()).collect();
        let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("reading users", e))?;
        found.into_iter().map(UserId::try_from).collect()
    }
}

impl PgScimStore {
    /// The total of a query whose page is past its end.
    async fn count_users(&self, query: &ListQuery) -> Result<u64, Error> {
        let mut qb = QueryBuilder::<Postgres>::new("SELECT count(*) FROM users u WHERE ");
        match &query.filter {
            Some(filter) => push_filter(&mut qb, filter, &user_column)?,
            None => {
                qb.push("true");
            }
        }
        let total: i64 = qb
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("counting users", e))?;
        Ok(u64::try_from(total).unwrap_or(0))
    }
}

async fn set_members(
    tx: &mut PgTransaction<'_>,
    group: Uuid,
    members: &[Uuid],
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO scim_group_members (group_id, user_id) \
         SELECT $1, u FROM unnest($2::uuid[]) AS u ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(members)
    .execute(&mut **tx)
    .await
    .map_err(|e| classify("storing a group's members", e))?;
    Ok(())
}

async fn read_group(tx: &mut PgTransaction<'_>, id: Uuid) -> Result<Option<GroupRow>, Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        group_columns!(),
        " FROM scim_groups g WHERE g.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| classify("reading a group", e))
}
