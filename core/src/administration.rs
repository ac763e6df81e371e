//! What operators and admins do to accounts: find them, and set a user's
//! role. The `hub users grant-admin` command and the admin console come
//! through here, never to the repository directly; the console's calls
//! (`*_as`) are checked against the caller's role first.
//!
//! A token's `role` claim says what the role was when it was issued; it is
//! never what an admin check believes. [`require_admin`] reads the role
//! from the directory, and a role change revokes every session of the
//! user in the same transaction (`SessionRepository::change_role`), so a
//! demoted admin is refused at once on every protocol and instance.

use std::sync::Arc;

use crate::error::{Error, ErrorCode};
use crate::ports::{Clock, SessionRepository, User, UserRepository};
use crate::token::Principal;
use crate::user::{Role, Username};

/// The largest page of a user search.
pub const MAX_SEARCH_PAGE: u32 = 100;

/// A page of users, and the username the next page starts after.
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<User>,
    pub next: Option<Username>,
}

/// The principal's user as the directory has it now, when that user is an
/// admin now: what every admin-only decision checks, whatever role the
/// token claims. `FORBIDDEN` (with `what` as the message) for anyone else;
/// `INVALID_TOKEN` when the user is gone.
pub async fn require_admin(
    users: &dyn UserRepository,
    principal: &Principal,
    what: &str,
) -> Result<User, Error> {
    let user = users
        .find_by_id(principal.user_id)
        .await?
        .ok_or_else(|| Error::new(ErrorCode::InvalidToken))?;
    if user.role == Role::Admin {
        Ok(user)
    } else {
        if principal.role == Role::Admin {
            tracing::warn!(user_id = %principal.user_id, "an admin token of a user who is no longer admin was refused");
        }
        Err(Error::with_message(ErrorCode::Forbidden, what))
    }
}

/// The administration use case.
#[derive(Clone)]
pub struct Administration {
    users: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionRepository>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Administration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Administration").finish_non_exhaustive()
    }
}

impl Administration {
    pub fn new(
        users: Arc<dyn UserRepository>,
        sessions: Arc<dyn SessionRepository>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            users,
            sessions,
            clock,
        }
    }

    async fn admins_only(&self, principal: &Principal) -> Result<User, Error> {
        require_admin(&*self.users, principal, "managing users is for admins").await
    }

    /// The principal's user, when an admin now (read from the directory):
    /// for admin pages that change nothing, with `what` as the refusal.
    pub async fn admin_only(&self, principal: &Principal, what: &str) -> Result<User, Error> {
        require_admin(&*self.users, principal, what).await
    }

    /// Gives the user named `username` the role `role`; the user as it now is.
    /// A change revokes every session of the user (their tokens carry the
    /// old role), so they sign in again. An unknown name is `USER_NOT_FOUND`.
    #[tracing::instrument(skip(self))]
    pub async fn set_role(&self, username: &str, role: Role) -> Result<User, Error> {
        let username = Username::parse(username)?;
        let mut user = self
            .users
            .find_by_username(&username)
            .await?
            .ok_or_else(|| {
                Error::with_message(ErrorCode::UserNotFound, format!("no user named {username}"))
            })?;
        if user.role != role {
            let revoked = self
                .sessions
                .change_role(user.id, role, self.clock.now())
                .await?;
            tracing::info!(user = %user.id, %role, revoked, "role changed; the user's sessions are revoked");
            user.role = role;
        }
        Ok(user)
    }

    /// As [`Self::set_role`], for an admin signed in. An admin cannot
    /// withdraw their own admin role here, so the last admin cannot lock
    /// everyone out by a click (`hub users` can still do it).
    pub async fn set_role_as(
        &self,
        principal: &Principal,
        username: &str,
        role: Role,
    ) -> Result<User, Error> {
        let target = self.find_as(principal, username).await?;
        if target.id == principal.user_id && role != Role::Admin {
            return Err(Error::with_message(
                ErrorCode::Forbidden,
                "an admin cannot withdraw their own admin role",
            ));
        }
        tracing::info!(by = %principal.user_id, user = %target.id, %role, "role set by an admin");
        self.set_role(username, role).await
    }

    /// The user named `username`, for an admin.
    pub async fn find_as(&self, principal: &Principal, username: &str) -> Result<User, Error> {
        self.admins_only(principal).await?;
        let username = Username::parse(username)?;
        self.users
            .find_by_username(&username)
            .await?
            .ok_or_else(|| {
                Error::with_message(ErrorCode::UserNotFound, format!("no user named {username}"))
            })
    }

    /// Users whose username or email starts with `query`, by username, a
    /// page of at most `limit` after `after`; for an admin.
    pub async fn search_as(
        &self,
        principal: &Principal,
        query: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<UserPage, Error> {
        self.admins_only(principal).await?;
        let query = query.trim();
        if query.chars().count() > 254 {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "a search is at most 254 characters",
            ));
        }
        // No name or address holds a control character, and PostgreSQL
        // text cannot hold NUL: such a search is the client's mistake.
        if query.chars().any(char::is_control) {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "a search cannot contain control characters",
            ));
        }
        let after = after.map(Username::parse).transpose()?;
        let limit = limit.clamp(1, MAX_SEARCH_PAGE);
        // One more than asked tells whether another page follows.
        let mut users = self.users.search(query, after.as_ref(), limit + 1).await?;
        let next = if users.len() > limit as usize {
            users.truncate(limit as usize);
            users.last().map(|u| u.username.clone())
        } else {
            None
        };
        Ok(UserPage { users, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::{InMemorySessions, InMemoryUsers};
    use crate::ports::{NewUser, SystemClock};
    use crate::user::{Email, UserId};

    fn administration(users: &Arc<InMemoryUsers>) -> (Administration, Arc<InMemorySessions>) {
        let sessions = Arc::new(InMemorySessions::with_users(users.clone()));
        (
            Administration::new(users.clone(), sessions.clone(), Arc::new(SystemClock)),
            sessions,
        )
    }

    /// Stores `name` with `role` (and a cheap hash) in `users`.
    async fn stored(users: &InMemoryUsers, name: &str, role: Role) -> User {
        let username = Username::parse(name).unwrap();
        let hash = crate::PasswordHasher::insecure_for_tests(1_000)
            .hash(&crate::Password::parse("correct horse", &username).unwrap())
            .unwrap();
        users
            .insert(NewUser {
                id: UserId::generate(),
                username,
                email: Email::parse(&format!("{name}@example.com")).unwrap(),
                password_hash: hash,
                role,
                created_at: time::OffsetDateTime::now_utc(),
                created_by: None,
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn grants_a_role_and_refuses_unknown_names() {
        let users = Arc::new(InMemoryUsers::default());
        stored(&users, "olivia", Role::User).await;
        let (admin, _) = administration(&users);
        let user = admin.set_role("Olivia", Role::Admin).await.unwrap();
        assert_eq!(user.role, Role::Admin);
        let stored = users
            .find_by_username(&Username::parse("olivia").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.role, Role::Admin);
        let err = admin.set_role("nobody", Role::Admin).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::UserNotFound);
        let err = admin.set_role("x y", Role::Admin).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidUsername);
    }

    fn principal(user: &User) -> Principal {
        Principal {
            user_id: user.id,
            session_id: crate::SessionId::generate(),
            role: user.role,
            expires_at: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        }
    }

    #[tokio::test]
    async fn the_console_calls_are_for_admins_and_page_by_username() {
        let users = Arc::new(InMemoryUsers::default());
        let mut stored_users = Vec::new();
        for (name, role) in [
            ("anna", Role::Admin),
            ("bert", Role::User),
            ("bella", Role::User),
            ("carl", Role::User),
        ] {
            stored_users.push(stored(&users, name, role).await);
        }
        let (admin, _) = administration(&users);
        let (anna, bert) = (principal(&stored_users[0]), principal(&stored_users[1]));

        let page = admin.search_as(&anna, "B", None, 1).await.unwrap();
        let names: Vec<&str> = page.users.iter().map(|u| u.username.as_str()).collect();
        assert_eq!(names, ["bella"]);
        let next = page.next.unwrap();
        let page = admin
            .search_as(&anna, "b", Some(next.as_str()), 1)
            .await
            .unwrap();
        assert_eq!(page.users[0].username.as_str(), "bert");
        assert!(page.next.is_none());
        let by_mail = admin.search_as(&anna, "carl@", None, 10).await.unwrap();
        assert_eq!(by_mail.users.len(), 1);

        for err in [
            admin.search_as(&bert, "", None, 10).await.unwrap_err(),
            admin.find_as(&bert, "anna").await.unwrap_err(),
            admin
                .set_role_as(&bert, "bert", Role::Admin)
                .await
                .unwrap_err(),
            admin
                .set_role_as(&anna, "anna", Role::User)
                .await
                .unwrap_err(),
        ] {
            assert_eq!(err.code(), ErrorCode::Forbidden, "{err}");
        }
        let granted = admin.set_role_as(&anna, "bert", Role::Admin).await.unwrap();
        assert_eq!(granted.role, Role::Admin);
        let err = admin.search_as(&anna, "a\0b", None, 10).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
    }

    /// The token's role is what it was at issue; the directory decides.
    #[tokio::test]
    async fn a_withdrawn_admin_is_refused_whatever_the_token_claims() {
        let users = Arc::new(InMemoryUsers::default());
        let mut stored_users = Vec::new();
        for name in ["anna", "bert"] {
            stored_users.push(stored(&users, name, Role::Admin).await);
        }
        let (admin, sessions) = administration(&users);
        let bert = principal(&stored_users[1]);
        let now = time::OffsetDateTime::now_utc();
        let session = crate::Session {
            id: bert.session_id,
            user_id: bert.user_id,
            created_at: now,
            expires_at: now + time::Duration::hours(1),
            last_seen_at: now,
            revoked_at: None,
            client: crate::ClientInfo::default(),
        };
        let opened = crate::SessionEvent::new(crate::SessionEventKind::Opened, &session, now);
        sessions.open(&session, &opened).await.unwrap();

        admin.set_role("bert", Role::User).await.unwrap();
        // Bert's session died with the role it was opened under...
        assert!(
            sessions
                .find_open(bert.session_id, time::OffsetDateTime::now_utc())
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            sessions.events().last().unwrap().reason.as_deref(),
            Some(crate::ports::ROLE_CHANGED)
        );
        // ...and a principal still claiming admin gets nothing, not even
        // the role back, nor anna's.
        assert_eq!(bert.role, Role::Admin);
        for err in [
            admin.find_as(&bert, "anna").await.unwrap_err(),
            admin
                .set_role_as(&bert, "bert", Role::Admin)
                .await
                .unwrap_err(),
            admin
                .set_role_as(&bert, "anna", Role::User)
                .await
                .unwrap_err(),
        ] {
            assert_eq!(err.code(), ErrorCode::Forbidden, "{err}");
        }
        let anna = users.find_by_id(stored_users[0].id).await.unwrap().unwrap();
        assert_eq!(anna.role, Role::Admin);
    }
}
