//! The pieces every page is made of: the layout, the navigation, form
//! fields with their errors, and the page for a refusal. Everything a user
//! typed is escaped by maud; nothing here writes raw HTML.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hub_core::{Error, ErrorCode};
use hub_runtime::HttpError;
use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;
use time::macros::format_description;

/// A page that ends a request early (a refusal, the way to the sign-in
/// page), boxed: a `Response` is large to move through every `Result`.
#[derive(Debug)]
pub(crate) struct Early(Box<Response>);

impl IntoResponse for Early {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<Response> for Early {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

/// A use case's refusal ends the request with its page.
impl From<Error> for Early {
    fn from(error: Error) -> Self {
        error_page(&error).into()
    }
}

/// What a handler answers: its page, or a page that ended it early.
pub(crate) type Page = Result<Response, Early>;

/// An error as a page shows it: next to the field it concerns (or above
/// the form), in words, with the stable code for support staff.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub field: Option<&'static str>,
    pub message: String,
    pub code: &'static str,
    pub status: StatusCode,
}

impl Problem {
    /// `error`, placed by `field_of` (which field a code concerns on this
    /// form).
    pub fn new(error: &HttpError, field_of: fn(ErrorCode) -> Option<&'static str>) -> Self {
        let inner = error.error();
        let mut message = sentence(inner.message());
        if let Some(wait) = error.wait() {
            message.push_str(&format!(" Try again in {} s.", wait.as_secs().max(1)));
        }
        Self {
            field: field_of(inner.code()),
            message,
            code: inner.code().as_str(),
            status: error.status(),
        }
    }

    pub fn from_error(error: Error, field_of: fn(ErrorCode) -> Option<&'static str>) -> Self {
        Self::new(&HttpError::from(error), field_of)
    }
}

/// A message as a sentence: capital first, full stop last.
fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// Where the signed-in user is, for the navigation.
#[derive(Debug)]
pub(crate) struct Nav<'a> {
    pub username: &'a str,
    pub admin: bool,
    pub csrf: &'a str,
    pub current: &'a str,
}

const USER_LINKS: [(&str, &str); 5] = [
    ("/account", "Profile"),
    ("/account/security", "Security"),
    ("/account/devices", "Devices"),
    ("/account/images", "Images"),
    ("/account/apps", "Apps"),
];
const ADMIN_LINKS: [(&str, &str); 4] = [
    ("/admin/users", "Users"),
    ("/admin/hooks", "Webhooks"),
    ("/admin/apps", "Applications"),
    ("/admin/system", "System"),
];

/// A whole page.
pub(crate) fn layout(title: &str, nav: Option<&Nav<'_>>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · polyhub" }
                link rel="stylesheet" href="/account/console.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/account" { "polyhub" }
                    @if let Some(nav) = nav {
                        nav aria-label="Console" {
                            ul {
                                @for (href, label) in USER_LINKS {
                                    li { (link(href, label, nav.current)) }
                                }
                                @if nav.admin {
                                    @for (href, label) in ADMIN_LINKS {
                                        li { (link(href, label, nav.current)) }
                                    }
                                }
                            }
                        }
                        form.signout method="post" action="/account/signout" {
                            input type="hidden" name="csrf" value=(nav.csrf);
                            span.who { "Signed in as " strong { (nav.username) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (main)
                }
            }
        }
    }
}

fn link(href: &str, label: &str, current: &str) -> Markup {
    html! {
        @if href == current {
            a href=(href) aria-current="page" { (label) }
        } @else {
            a href=(href) { (label) }
        }
    }
}

/// A labelled input, with its error under it when `problem` concerns it.
pub(crate) struct Field<'a> {
    pub name: &'static str,
    pub label: &'a str,
    pub kind: &'static str,
    pub autocomplete: &'static str,
    pub value: Option<&'a str>,
    pub hint: Option<&'a str>,
}

pub(crate) fn field(field: &Field<'_>, problem: Option<&Problem>) -> Markup {
    let error = problem.filter(|p| p.field == Some(field.name));
    let error_id = format!("{}-error", field.name);
    let hint_id = format!("{}-hint", field.name);
    let described = match (error.is_some(), field.hint.is_some()) {
        (true, true) => Some(format!("{error_id} {hint_id}")),
        (true, false) => Some(error_id.clone()),
        (false, true) => Some(hint_id.clone()),
        (false, false) => None,
    };
    html! {
        div.field {
            label for=(field.name) { (field.label) }
            input id=(field.name) name=(field.name) type=(field.kind)
                autocomplete=(field.autocomplete) value=[field.value]
                required aria-describedby=[described]
                aria-invalid=[error.map(|_| "true")];
            @if let Some(hint) = field.hint {
                p.hint id=(hint_id) { (hint) }
            }
            @if let Some(error) = error {
                (message(error, Some(&error_id)))
            }
        }
    }
}

/// An error's words and code.
fn message(problem: &Problem, id: Option<&str>) -> Markup {
    html! {
        p.error id=[id] role="alert" {
            (problem.message)
            " "
            span.code { "Code " code { (problem.code) } }
        }
    }
}

/// The error of a form that concerns no one field, above the form.
pub(crate) fn form_problem(problem: Option<&Problem>) -> Markup {
    html! {
        @if let Some(problem) = problem.filter(|p| p.field.is_none()) {
            (message(problem, None))
        }
    }
}

/// A notice that something was done.
pub(crate) fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = text {
            p.notice role="status" { (text) }
        }
    }
}

/// The hidden CSRF field every form carries.
pub(crate) fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A page that only says why something was refused.
pub(crate) fn problem_page(status: StatusCode, error: &Error) -> Response {
    let problem = Problem::from_error(Error::with_message(error.code(), error.message()), |_| None);
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        s if s.is_server_error() => "Not available right now",
        _ => "Something went wrong",
    };
    let page = layout(
        title,
        None,
        html! {
            (form_problem(Some(&problem)))
            p { a href="/account" { "Back to your account" } }
        },
    );
    (status, page).into_response()
}

/// The page for a use case's refusal, with its kind's status.
pub(crate) fn error_page(error: &Error) -> Response {
    problem_page(HttpError::from(Error::new(error.code())).status(), error)
}

/// A time as pages show it.
pub(crate) fn when(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
        ))
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_sentences_with_their_code_and_wait() {
        let error = HttpError::from(Error::new(ErrorCode::TooManyAttempts))
            .retry_after(std::time::Duration::from_secs(7));
        let problem = Problem::new(&error, |_| Some("password"));
        assert_eq!(
            problem.message,
            "Too many attempts; retry later. Try again in 7 s."
        );
        assert_eq!(problem.code, "TOO_MANY_ATTEMPTS");
        assert_eq!(problem.field, Some("password"));
        assert_eq!(problem.status, StatusCode::TOO_MANY_REQUESTS);
        let shown = field(
            &Field {
                name: "password",
                label: "Password",
                kind: "password",
                autocomplete: "current-password",
                value: None,
                hint: None,
            },
            Some(&problem),
        )
        .into_string();
        assert!(
            shown.contains(r#"aria-describedby="password-error""#),
            "{shown}"
        );
        assert!(shown.contains("TOO_MANY_ATTEMPTS"), "{shown}");
    }

    #[test]
    fn what_a_user_typed_is_escaped() {
        let shown = field(
            &Field {
                name: "username",
                label: "Username",
                kind: "text",
                autocomplete: "username",
                value: Some("\"><script>alert(1)</script>"),
                hint: None,
            },
            None,
        )
        .into_string();
        assert!(!shown.contains("<script>"), "{shown}");
    }
}
