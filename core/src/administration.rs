//! What operators and admins do to accounts: today, a user's role. The
//! `hub users grant-admin` command and any admin endpoint come through here,
//! never to the repository directly.

use std::sync::Arc;

use crate::error::{Error, ErrorCode};
use crate::ports::{User, UserRepository};
use crate::user::{Role, Username};

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
}
