//! Looking users up by name: what a directory may tell about a user.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::{Error, ErrorCode};
use crate::ports::UserRepository;
use crate::user::{UserId, Username};

/// What a lookup tells: never the email, never anything about the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    pub id: UserId,
    pub username: Username,
    pub created_at: OffsetDateTime,
}

/// The directory use case.
#[derive(Clone)]
pub struct Directory {
    users: Arc<dyn UserRepository>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    pub fn new(users: Arc<dyn UserRepository>) -> Self {
        Self { users }
    }

    /// Finds a user by name, case-insensitively.
    #[tracing::instrument(name = "lookup_user", skip(self))]
    pub async fn lookup(&self, username: &str) -> Result<UserSummary, Error> {
        let username = Username::parse(username)?;
        let user = self
            .users
            .find_by_username(&username)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::UserNotFound))?;
        Ok(UserSummary {
            id: user.id,
            username: user.username,
            created_at: user.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::PasswordHasher;
    use crate::ports::SystemClock;
    use crate::ports::memory::InMemoryUsers;
    use crate::registration::{RegisterUser, Registration};
    use crate::work_pool::{HashingPool, WorkPoolConfig};

    #[tokio::test]
    async fn finds_case_insensitively_and_reports_missing_users() {
        let users = Arc::new(InMemoryUsers::default());
        let pool = HashingPool::new(
            PasswordHasher::insecure_for_tests(1),
            WorkPoolConfig::default(),
        );
        let registered = Registration::new(users.clone(), pool, Arc::new(SystemClock))
            .register(RegisterUser {
                username: "carol".into(),
                email: "carol@example.com".into(),
                password: "correct horse".into(),
            })
            .await
            .unwrap();
        let directory = Directory::new(users);
        let found = directory.lookup("CAROL").await.unwrap();
        assert_eq!(found.id, registered.id);
        assert_eq!(found.username.as_str(), "carol");
        assert_eq!(
            directory.lookup("dave").await.unwrap_err().code(),
            ErrorCode::UserNotFound
        );
        assert_eq!(
            directory.lookup("no way!").await.unwrap_err().code(),
            ErrorCode::InvalidUsername
        );
    }
}
