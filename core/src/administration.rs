//! What operators and admins do to accounts: find them, and set a user's
//! role. The `hub users grant-admin` command and the admin console come
//! through here, never to the repository directly; the console's calls
//! (`*_as`) are checked against the caller's role first.

use std::sync::Arc;

use crate::error::{Error, ErrorCode};
use crate::ports::{User, UserRepository};
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

fn admins_only(principal: &Principal) -> Result<(), Error> {
    if principal.role == Role::Admin {
        Ok(())
    } else {
        Err(Error::with_message(
            ErrorCode::Forbidden,
            "managing users is for admins",
        ))
    }
}

/// The administration use case.
#[derive(Clone)]
pub struct Administration {
    users: Arc<dyn UserRepository>,
}

impl std::fmt::Debug for Administration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Administration").finish_non_exhaustive()
    }
}

impl Administration {
    pub fn new(users: Arc<dyn UserRepository>) -> Self {
        Self { users }
    }

    /// Gives the user named `username` the role `role`; the user as it now is.
    /// An unknown name is `USER_NOT_FOUND`.
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
            self.users.set_role(user.id, role).await?;
            tracing::info!(user = %user.id, %role, "role changed");
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
        admins_only(principal)?;
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
        admins_only(principal)?;
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
        admins_only(principal)?;
        let query = query.trim();
        if query.chars().count() > 254 {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "a search is at most 254 characters",
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
    use crate::ports::NewUser;
    use crate::ports::memory::InMemoryUsers;
    use crate::user::{Email, UserId};

    #[tokio::test]
    async fn grants_a_role_and_refuses_unknown_names() {
        let users = Arc::new(InMemoryUsers::default());
        let hash = crate::PasswordHasher::insecure_for_tests(1_000)
            .hash(
                &crate::Password::parse("correct horse", &Username::parse("olivia").unwrap())
                    .unwrap(),
            )
            .unwrap();
        users
            .insert(NewUser {
                id: UserId::generate(),
                username: Username::parse("olivia").unwrap(),
                email: Email::parse("olivia@example.com").unwrap(),
                password_hash: hash,
                role: Role::User,
                created_at: time::OffsetDateTime::now_utc(),
            })
            .await
            .unwrap();
        let admin = Administration::new(users.clone());
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
        let err = admin.set_role("x", Role::Admin).await.unwrap_err();
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
        let hash = crate::PasswordHasher::insecure_for_tests(1_000)
            .hash(
                &crate::Password::parse("correct horse", &Username::parse("anna").unwrap())
                    .unwrap(),
            )
            .unwrap();
        let mut stored = Vec::new();
        for (name, role) in [
            ("anna", Role::Admin),
            ("bert", Role::User),
            ("bella", Role::User),
            ("carl", Role::User),
        ] {
            stored.push(
                users
                    .insert(NewUser {
                        id: UserId::generate(),
                        username: Username::parse(name).unwrap(),
                        email: Email::parse(&format!("{name}@example.com")).unwrap(),
                        password_hash: hash.clone(),
                        role,
                        created_at: time::OffsetDateTime::now_utc(),
                    })
                    .await
                    .unwrap(),
            );
        }
        let admin = Administration::new(users.clone());
        let (anna, bert) = (principal(&stored[0]), principal(&stored[1]));

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
    }
}
