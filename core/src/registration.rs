//! Registering a user: the same rules, the same hashing and the same codes for
//! every protocol that offers it.

use std::sync::Arc;

use crate::error::{Error, ErrorCode};
use crate::ports::{Clock, NewUser, User, UserRepository};
use crate::user::{Email, Password, Role, UserId, Username};
use crate::work_pool::HashingPool;

/// A registration request as it arrives from any protocol, not yet validated.
#[derive(Clone)]
pub struct RegisterUser {
    pub username: String,
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for RegisterUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterUser")
            .field("username", &self.username)
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The registration use case.
#[derive(Clone)]
pub struct Registration {
    users: Arc<dyn UserRepository>,
    hashing: HashingPool,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").finish_non_exhaustive()
    }
}

impl Registration {
    pub fn new(
        users: Arc<dyn UserRepository>,
        hashing: HashingPool,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            users,
            hashing,
            clock,
        }
    }

    /// Validates, hashes and stores a new user with the `user` role.
    ///
    /// Fields are checked in order username, email, password, so a request with
    /// several faults always gets the same code. A taken username or email is
    /// found before hashing when possible; the store's unique keys decide races.
    #[tracing::instrument(name = "register_user", skip_all, fields(username = %request.username))]
    pub async fn register(&self, request: RegisterUser) -> Result<User, Error> {
        self.register_with_role(request, Role::User).await
    }

    /// As [`Self::register`], with a chosen role: for operators' tooling.
    pub async fn register_with_role(
        &self,
        request: RegisterUser,
        role: Role,
    ) -> Result<User, Error> {
        self.store(request, role, None).await
    }

    /// As [`Self::register_with_role`], by the admin `by`, whom the
    /// `user.created` event names.
    pub async fn register_by(
        &self,
        request: RegisterUser,
        role: Role,
        by: UserId,
    ) -> Result<User, Error> {
        self.store(request, role, Some(by)).await
    }

    async fn store(
        &self,
        request: RegisterUser,
        role: Role,
        by: Option<UserId>,
    ) -> Result<User, Error> {
        let username = Username::parse(&request.username)?;
        let email = Email::parse(&request.email)?;
        let password = Password::parse(&request.password, &username)?;

        if self.users.find_by_username(&username).await?.is_some() {
            return Err(Error::new(ErrorCode::UsernameTaken));
        }
        if self.users.find_by_email(&email).await?.is_some() {
            return Err(Error::new(ErrorCode::EmailTaken));
        }

        let password_hash = self
            .hashing
            .run(move |hasher| hasher.hash(&password))
            .await??;
        let user = self
            .users
            .insert(NewUser {
                id: UserId::generate(),
                username,
                email,
                password_hash,
                role,
                created_at: self.clock.now(),
                created_by: by,
            })
            .await?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::PasswordHasher;
    use crate::ports::SystemClock;
    use crate::ports::memory::InMemoryUsers;
    use crate::work_pool::WorkPoolConfig;

    fn registration() -> (Registration, Arc<InMemoryUsers>) {
        let users = Arc::new(InMemoryUsers::default());
        let pool = HashingPool::new(
            PasswordHasher::insecure_for_tests(10),
            WorkPoolConfig::default(),
        );
        (
            Registration::new(users.clone(), pool, Arc::new(SystemClock)),
            users,
        )
    }

    fn request(username: &str, email: &str, password: &str) -> RegisterUser {
        RegisterUser {
            username: username.into(),
            email: email.into(),
            password: password.into(),
        }
    }

    #[tokio::test]
    async fn registers_and_hashes() {
        let (reg, users) = registration();
        let user = reg
            .register(request("Alice", "Alice@Example.com", "correct horse"))
            .await
            .unwrap();
        assert_eq!(user.username.as_str(), "alice");
        assert_eq!(user.email.as_str(), "alice@example.com");
        assert_eq!(user.role, Role::User);
        let stored = users.find_by_id(user.id).await.unwrap().unwrap();
        assert!(
            PasswordHasher::insecure_for_tests(10).verify("correct horse", &stored.password_hash)
        );
    }

    #[tokio::test]
    async fn each_invalid_field_has_its_code_in_a_fixed_order() {
        let (reg, _) = registration();
        let cases = [
            (request("a b", "bad", "short"), ErrorCode::InvalidUsername),
            (request("alice", "bad", "short"), ErrorCode::InvalidEmail),
            (
                request("alice", "a@b.com", "short"),
                ErrorCode::WeakPassword,
            ),
            (
                request("alice", "a@b.com", "ALICE"),
                ErrorCode::WeakPassword,
            ),
        ];
        for (req, code) in cases {
            assert_eq!(reg.register(req).await.unwrap_err().code(), code);
        }
    }

    #[tokio::test]
    async fn taken_username_and_email_are_conflicts() {
        let (reg, _) = registration();
        reg.register(request("alice", "alice@example.com", "correct horse"))
            .await
            .unwrap();
        let err = reg
            .register(request("ALICE", "other@example.com", "correct horse"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::UsernameTaken);
        let err = reg
            .register(request("bob", "ALICE@example.com", "correct horse"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::EmailTaken);
    }

    #[test]
    fn request_debug_hides_the_password() {
        let r = request("alice", "a@b.com", "hunter2hunter2");
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
