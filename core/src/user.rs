//! User values that parse when built: past the edge an invalid one cannot exist.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, ErrorCode};

/// A username: 1 to 256 ASCII characters of `a-z`, `0-9` and
/// `. _ - @ + ' ! # ^ ~`, so a directory's user principal name
/// (`alice@corp.example`, what Entra ID and Okta provision over SCIM) or a
/// UUID is one as it is; not a control character, space, quote, slash,
/// angle bracket or any non-ASCII letter.
///
/// Usernames compare case-insensitively, so the value is folded to lower case
/// when parsed and stored that way. ASCII only, as an email's local part is
/// (see [`Email`]): a Cyrillic `а` or a fullwidth `ａ` would give a second
/// account a name that reads as another's, so it is refused, never mapped
/// onto the ASCII it resembles.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub const MIN_CHARS: usize = 1;
    pub const MAX_CHARS: usize = 256;
    /// The characters besides `a-z` and `0-9`.
    pub const PUNCTUATION: &'static str = ".-_@+'!#^~";

    pub fn parse(raw: &str) -> Result<Self, Error> {
        let len = raw.chars().count();
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || Self::PUNCTUATION.contains(c);
        let folded = raw.to_ascii_lowercase();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&len) || !folded.chars().all(allowed) {
            return Err(Error::new(ErrorCode::InvalidUsername));
        }
        Ok(Self(folded))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({:?})", self.0)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Username {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// An email address, checked against RFC 5322's address grammar, with a
/// domain of at least two labels, and stored lower-case.
///
/// As a username, an address is ASCII only, its local part a dot-atom (no
/// quoted string): a Cyrillic `а`, a fullwidth `ａ` or quotes would give a
/// second account an address that reads as, or delivers to, another's
/// (`аlice@example.com`, `"alice"@example.com` beside `alice@example.com`).
/// Refused, never mapped onto the ASCII it resembles: that would be another
/// mailbox than the one given. The domain's labels were ASCII already
/// (an internationalised domain is written in its `xn--` form).
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// RFC 5321's limit on a forward path, less the angle brackets.
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, Error> {
        let invalid = || Error::new(ErrorCode::InvalidEmail);
        if raw.is_empty() || raw.len() > Self::MAX_LEN || raw.trim() != raw {
            return Err(invalid());
        }
        let parsed = email_address::EmailAddress::from_str(raw).map_err(|_| invalid())?;
        // The grammar accepts a display name ("A <a@b.c>") and address literals
        // ("a@[10.0.0.1]"); neither belongs in a user's email field.
        if parsed.as_str() != raw || parsed.display_part() != "" {
            return Err(invalid());
        }
        // RFC 5322's atext and the dots between atoms: no character of
        // another script, no compatibility form, no quoted string.
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
        if !parsed.local_part().chars().all(atext) {
            return Err(invalid());
        }
        let domain = parsed.domain();
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(invalid());
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }

    /// An address read back from the store: accepted as it was written, so
    /// a row stored before today's stricter rule (a non-ASCII local part)
    /// stays readable, and its owner can still sign in and change it. Only
    /// what no rule ever allowed is refused: empty, over [`Self::MAX_LEN`],
    /// surrounding white space, or no `@` between two non-empty parts.
    pub fn stored(raw: &str) -> Result<Self, Error> {
        let invalid = || Error::new(ErrorCode::InvalidEmail);
        if raw.is_empty() || raw.len() > Self::MAX_LEN || raw.trim() != raw {
            return Err(invalid());
        }
        match raw.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                Ok(Self(raw.to_owned()))
            }
            _ => Err(invalid()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({:?})", self.0)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new password that meets the policy: 8 to 128 characters, not the username.
///
/// It never prints: `Debug` shows a placeholder and there is no `Display`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str, username: &Username) -> Result<Self, Error> {
        let len = raw.chars().count();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&len)
            || raw.eq_ignore_ascii_case(username.as_str())
        {
            return Err(Error::new(ErrorCode::WeakPassword));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The secret itself, for the hasher only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A user's identifier: a UUID version 7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "Uuid", into = "Uuid")]
pub struct UserId(Uuid);

impl UserId {
    /// A new id for a user created now.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(raw: &str) -> Result<Self, Error> {
        let uuid = Uuid::try_parse(raw).map_err(|_| Error::new(ErrorCode::InvalidUserId))?;
        Self::try_from(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl TryFrom<Uuid> for UserId {
    type Error = Error;
    fn try_from(uuid: Uuid) -> Result<Self, Error> {
        if uuid.get_version_num() != 7 {
            return Err(Error::new(ErrorCode::InvalidUserId));
        }
        Ok(Self(uuid))
    }
}

impl From<UserId> for Uuid {
    fn from(id: UserId) -> Uuid {
        id.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Admin,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, Error> {
        match raw {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            _ => Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "role must be 'user' or 'admin'",
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: fmt::Debug>(r: Result<T, Error>) -> ErrorCode {
        r.unwrap_err().code()
    }

    #[test]
    fn username_length_boundaries() {
        assert!(Username::parse("a").is_ok());
        assert!(Username::parse(&"a".repeat(256)).is_ok());
        assert_eq!(
            code(Username::parse(&"a".repeat(257))),
            ErrorCode::InvalidUsername
        );
        assert_eq!(code(Username::parse("")), ErrorCode::InvalidUsername);
    }

    #[test]
    fn username_alphabet() {
        assert!(Username::parse("a.b_c-d9").is_ok());
        // What directories provision: a user principal name, a UUID.
        for ok in [
            "Alice.O'Brien+ops@Corp.example",
            "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b",
            "a",
            "x!#^~",
            &"a".repeat(256),
        ] {
            assert!(Username::parse(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(
            Username::parse("Alice@Corp.example").unwrap().as_str(),
            "alice@corp.example"
        );
        for bad in [
            "",
            "al ice",
            "alicé",
            "аlice@corp.example", // Cyrillic а
            "ａlice",
            " alice",
            "alice\n",
            "ali\0ce",
            "ålice",
            "a\"b",
            "a/b",
            "<a>",
            "a,b",
            &"a".repeat(257),
        ] {
            assert_eq!(
                code(Username::parse(bad)),
                ErrorCode::InvalidUsername,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn username_is_folded_to_lower_case() {
        let a = Username::parse("Alice.Smith").unwrap();
        assert_eq!(a.as_str(), "alice.smith");
        assert_eq!(a, Username::parse("ALICE.SMITH").unwrap());
    }

    #[test]
    fn username_counts_characters_not_bytes() {
        // Three two-byte characters are three characters, still refused by alphabet.
        assert_eq!(code(Username::parse("ééé")), ErrorCode::InvalidUsername);
    }

    #[test]
    fn email_accepts_real_addresses_and_folds_case() {
        for ok in [
            "a@b.co",
            "first.last+tag@example.com",
            "x_y@sub.domain.example.org",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            Email::parse("Alice@Example.COM").unwrap().as_str(),
            "alice@example.com"
        );
    }

    #[test]
    fn email_rejects_what_is_not_an_address() {
        let long_local = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            " a@b.com",
            "a@b.com ",
            "Alice <alice@example.com>",
            "a@[10.0.0.1]",
            "a@-b.com",
            "a@b..com",
            long_local.as_str(),
        ] {
            assert_eq!(code(Email::parse(bad)), ErrorCode::InvalidEmail, "{bad:?}");
        }
    }

    /// The addresses the domain rule already refused, and those the
    /// local-part rule adds: each reads as, or delivers to, `alice@example.com`.
    #[test]
    fn email_refuses_look_alikes_of_another_address() {
        for look_alike in [
            "\u{430}lice@example.com",                         // Cyrillic а
            "\u{ff41}lice@example.com",                        // fullwidth ａ
            "\u{430}\u{4cf}\u{456}\u{441}\u{435}@example.com", // аӏісе, all Cyrillic
            "\u{3b1}lice@example.com",                         // Greek α
            "a\u{301}lice@example.com",                        // a combining accent
            "alice\u{ff20}example.com",                        // fullwidth ＠
            "alice@ex\u{430}mple.com",                         // in the domain
            "alice@\u{ff45}xample.com",
            "\"alice\"@example.com", // the same mailbox, quoted
            "\"al\\ice\"@example.com",
            "alic\u{435}@example.com",
            "alice\u{200b}@example.com", // a zero-width space
        ] {
            assert_eq!(
                code(Email::parse(look_alike)),
                ErrorCode::InvalidEmail,
                "{look_alike:?}"
            );
        }
        // What a registration form sees every day still passes, folded.
        for ok in [
            "o'brien@example.com",
            "a.b-c_d+e@example.co.uk",
            "x!#$%&*/=?^`{|}~@example.com",
            "alice@xn--exmple-cua.com",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            Email::parse("ALICE@EXAMPLE.COM").unwrap(),
            Email::parse("alice@example.com").unwrap()
        );
    }

    #[test]
    fn password_length_boundaries() {
        let user = Username::parse("alice").unwrap();
        assert_eq!(
            code(Password::parse("1234567", &user)),
            ErrorCode::WeakPassword
        );
        assert!(Password::parse("12345678", &user).is_ok());
        assert!(Password::parse(&"p".repeat(128), &user).is_ok());
        assert_eq!(
            code(Password::parse(&"p".repeat(129), &user)),
            ErrorCode::WeakPassword
        );
        // 8 characters of 2 bytes each: the limit counts characters.
        assert!(Password::parse("éééééééé", &user).is_ok());
    }

    #[test]
    fn password_may_not_be_the_username() {
        let user = Username::parse("alice.smith").unwrap();
        assert_eq!(
            code(Password::parse("Alice.Smith", &user)),
            ErrorCode::WeakPassword
        );
    }

    #[test]
    fn password_never_prints() {
        let user = Username::parse("alice").unwrap();
        let p = Password::parse("hunter2hunter2", &user).unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn user_id_is_v7_only() {
        let id = UserId::generate();
        assert_eq!(UserId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(
            code(UserId::parse("6ba7b810-9dad-11d1-80b4-00c04fd430c8")), // v1
            ErrorCode::InvalidUserId
        );
        assert_eq!(code(UserId::parse("not-a-uuid")), ErrorCode::InvalidUserId);
    }

    #[test]
    fn role_round_trips() {
        for role in [Role::User, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()).unwrap(), role);
        }
        assert_eq!(code(Role::parse("root")), ErrorCode::InvalidRequest);
    }
}
