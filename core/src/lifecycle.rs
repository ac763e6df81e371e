//! Managing sessions once signed in: more sessions for more devices, listing
//! them, keeping one alive, revoking them, checking a token for other
//! services, and when a user was last seen.
//!
//! The rule for acting on a user's sessions is the same everywhere: a user
//! acts on their own, an admin on anyone's, and anything else is `FORBIDDEN`.
//! Who is an admin is read from the directory, not from the token.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::authentication::Authentication;
use crate::error::{Error, ErrorCode};
use crate::ports::{
    ActivityLog, Clock, LastConnection, SessionQuery, SessionRepository, UserRepository,
};
use crate::session::{ClientInfo, Session, SessionEvent, SessionEventKind, SessionId};
use crate::token::{IssuedToken, Principal};
use crate::user::{Role, UserId, Username};

/// How long sessions live: `lifetime` from the last touch, never past
/// `max_lifetime` from the login; and how many a user may open from a
/// token (`max_open`), which costs no password and so no budget.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_open: u32,
}

/// Open sessions a user may have before another is refused, unless
/// configured otherwise.
pub const DEFAULT_MAX_OPEN_SESSIONS: u32 = 100;

/// A page of sessions, and where the next one starts.
#[derive(Debug, Clone)]
pub struct SessionPage {
    pub sessions: Vec<Session>,
    pub next: Option<SessionId>,
}

/// The largest page a caller can ask for.
pub const MAX_PAGE: u32 = 100;

/// The session-management use case.
#[derive(Clone)]
pub struct SessionLifecycle {
    authentication: Authentication,
    users: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionRepository>,
    activity: Arc<dyn ActivityLog>,
    clock: Arc<dyn Clock>,
    limits: SessionLimits,
}

impl std::fmt::Debug for SessionLifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLifecycle")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn forbidden(why: &str) -> Error {
    Error::with_message(ErrorCode::Forbidden, why)
}

fn duration(d: Duration) -> Result<time::Duration, Error> {
    time::Duration::try_from(d).map_err(|e| Error::internal(format!("duration out of range: {e}")))
}

impl SessionLifecycle {
    pub fn new(
        authentication: Authentication,
        users: Arc<dyn UserRepository>,
        sessions: Arc<dyn SessionRepository>,
        activity: Arc<dyn ActivityLog>,
        clock: Arc<dyn Clock>,
        limits: SessionLimits,
    ) -> Self {
        Self {
            authentication,
            users,
            sessions,
            activity,
            clock,
            limits,
        }
    }

    /// Who `token` speaks for, checked exactly as every service checks it.
    pub async fn verify(&self, token: &str) -> Result<Principal, Error> {
        self.authentication.authenticate(token).await
    }

    /// The caller may act on `user`'s sessions: their own, or anyone's for
    /// an admin (and then the user must exist).
    async fn may_act_on(&self, principal: &Principal, user: UserId) -> Result<(), Error> {
        if principal.user_id == user {
            return Ok(());
        }
        crate::administration::require_admin(
            &*self.users,
            principal,
            "a user may only act on their own sessions",
        )
        .await?;
        match self.users.find_by_id(user).await? {
            Some(_) => Ok(()),
            None => Err(Error::new(ErrorCode::UserNotFound)),
        }
    }

    /// Opens another session for the caller (another device) with its own token.
    pub async fn open_additional(
        &self,
        token: &str,
        client: ClientInfo,
    ) -> Result<(Session, IssuedToken), Error> {
        let (parent, user) = self.authentication.authenticate_user(token).await?;
        // Another session needs only a token, no password and so no
        // budget: without a bound, one token could fill the sessions table
        // and the event log at its request rate. Counted before the insert,
        // so requests racing each other may pass it by their number, no
        // more (each client's requests in flight are capped).
        let max_open = self.limits.max_open.max(1);
        let open = self
            .sessions
            .list(
                user.id,
                &SessionQuery {
                    include_closed: false,
                    now: self.clock.now(),
                    before: None,
                    limit: max_open,
                },
            )
            .await?;
        if open.len() >= max_open as usize {
            tracing::warn!(user_id = %user.id, max_open, "another session refused: the user's open sessions are at the limit");
            return Err(Error::with_message(
                ErrorCode::QuotaExceeded,
                format!(
                    "at most {max_open} open sessions per user: sign one out (DELETE /api/sessions/{{user}}?session=ID) first"
                ),
            ));
        }
        let (session, token) = self
            .authentication
            .open_session(&user, Some(parent.session_id), client)
            .await?;
        tracing::info!(user_id = %user.id, session_id = %session.id, "additional session opened");
        Ok((session, token))
    }

    /// One page of `user`'s sessions, newest first.
    pub async fn list(
        &self,
        principal: &Principal,
        user: UserId,
        include_closed: bool,
        limit: u32,
        before: Option<SessionId>,
    ) -> Result<SessionPage, Error> {
        self.may_act_on(principal, user).await?;
        let limit = limit.clamp(1, MAX_PAGE);
        // One more than asked tells whether another page follows.
        let mut sessions = self
            .sessions
            .list(
                user,
                &SessionQuery {
                    include_closed,
                    now: self.clock.now(),
                    before,
                    limit: limit + 1,
                },
            )
            .await?;
        let next = if sessions.len() > limit as usize {
            sessions.truncate(limit as usize);
            sessions.last().map(|s| s.id)
        } else {
            None
        };
        Ok(SessionPage { sessions, next })
    }

    /// Keeps the caller's current session alive: `last_seen_at` now, expiry
    /// slid to `lifetime` from now but never past `max_lifetime` from login
    /// (and never earlier than it was). Returns the session and a fresh token
    /// that lives as long as the token lifetime and the session allow.
    pub async fn touch(
        &self,
        principal: &Principal,
        user: UserId,
    ) -> Result<(Session, IssuedToken), Error> {
        self.may_act_on(principal, user).await?;
        if principal.user_id != user {
            return Err(forbidden(
                "a session is kept alive by its own user, with its own token",
            ));
        }
        let now = self.clock.now();
        let Some(current) = self.sessions.find_open(principal.session_id, now).await? else {
            return Err(Error::new(ErrorCode::InvalidToken));
        };
        let account = self
            .users
            .find_by_id(user)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::InvalidToken))?;
        let slid = (now + duration(self.limits.lifetime)?)
            .min(current.created_at + duration(self.limits.max_lifetime)?);
        let touched = Session {
            last_seen_at: now,
            expires_at: current.expires_at.max(slid),
            ..current
        };
        let event = SessionEvent::new(SessionEventKind::Touched, &touched, now);
        if !self.sessions.touch(&touched, &event).await? {
            // Revoked or expired between the two queries.
            return Err(Error::new(ErrorCode::InvalidToken));
        }
        let token = self
            .authentication
            .tokens()
            .issue(user, account.role, &touched, now)?;
        tracing::debug!(user_id = %user, session_id = %touched.id, expires_at = %touched.expires_at, "session touched");
        Ok((touched, token))
    }

    /// Revokes one session of `user` (`Some`) or all of them; how many were
    /// open. A session that is not `user`'s is `NOT_FOUND`.
    pub async fn revoke(
        &self,
        principal: &Principal,
        user: UserId,
        session: Option<SessionId>,
    ) -> Result<u64, Error> {
        self.may_act_on(principal, user).await?;
        let now = self.clock.now();
        let reason = if principal.user_id == user {
            "logout"
        } else {
            "revoked_by_admin"
        };
        let revoked = match session {
            Some(id) => match self.sessions.find(id).await? {
                Some(found) if found.user_id == user => {
                    u64::from(self.sessions.revoke(id, now, reason).await?)
                }
                _ => {
                    return Err(Error::with_message(
                        ErrorCode::NotFound,
                        "no such session for this user",
                    ));
                }
            },
            None => self.sessions.revoke_all(user, None, now, reason).await?,
        };
        tracing::info!(user_id = %user, by = %principal.user_id, revoked, "sessions revoked");
        Ok(revoked)
    }

    /// When a user was last seen: the caller, or (for an admin) anyone by name.
    /// `None` inside means never (or not yet delivered to the activity log).
    pub async fn last_connection(
        &self,
        principal: &Principal,
        username: Option<&str>,
    ) -> Result<(UserId, Username, Option<LastConnection>), Error> {
        let me = || async {
            self.users
                .find_by_id(principal.user_id)
                .await?
                .ok_or_else(|| Error::new(ErrorCode::InvalidToken))
        };
        let user = match username {
            Some(raw) => {
                let me = me().await?;
                if me.username.as_str().eq_ignore_ascii_case(raw) {
                    me
                } else if me.role == Role::Admin {
                    // The directory's role, not the token's.
                    self.users
                        .find_by_username(&Username::parse(raw)?)
                        .await?
                        .ok_or_else(|| Error::new(ErrorCode::UserNotFound))?
                } else {
                    // Whether another name exists is not told to a non-admin.
                    return Err(forbidden("only admins may ask about other users"));
                }
            }
            None => me().await?,
        };
        let last = self.activity.last_connection(user.id).await?;
        Ok((user.id, user.username, last))
    }

    /// The time as the domain sees it.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::SystemClock;
    use crate::ports::memory::{InMemoryAuth, InMemorySessions};
    use crate::registration::{RegisterUser, Registration};
    use crate::{LoginName, User};

    /// Remembers nothing: these tests are about sessions, not activity.
    struct NoActivity;

    #[async_trait::async_trait]
    impl ActivityLog for NoActivity {
        async fn record(
            &self,
            _: &crate::events::DomainEvent,
            _: Option<&Username>,
        ) -> Result<bool, Error> {
            Ok(true)
        }
        async fn last_connection(&self, _: UserId) -> Result<Option<LastConnection>, Error> {
            Ok(None)
        }
    }

    struct World {
        lifecycle: SessionLifecycle,
        auth: Authentication,
        registration: Registration,
        sessions: Arc<InMemorySessions>,
    }

    fn world(limits: SessionLimits) -> World {
        let world = InMemoryAuth::new(limits.lifetime).unwrap();
        let registration = world.registration();
        let (users, sessions, auth) = (world.users, world.sessions, world.authentication);
        World {
            lifecycle: SessionLifecycle::new(
                auth.clone(),
                users.clone(),
                sessions.clone(),
                Arc::new(NoActivity),
                Arc::new(SystemClock),
                limits,
            ),
            auth,
            registration,
            sessions,
        }
    }

    fn hours(h: u64) -> Duration {
        Duration::from_secs(h * 3600)
    }

    async fn signed_in(world: &World, name: &str) -> (User, String) {
        let user = world
            .registration
            .register(RegisterUser {
                username: name.into(),
                email: format!("{name}@example.com"),
                password: "correct horse".into(),
            })
            .await
            .unwrap();
        let out = world
            .auth
            .login(
                LoginName::Username(name.into()),
                "correct horse".into(),
                ClientInfo::default(),
            )
            .await
            .unwrap();
        (user, out.token.token)
    }

    /// Sessions opened from a token cost no password, so they are bounded
    /// per user: past `max_open` open ones, another is QUOTA_EXCEEDED until
    /// one is signed out.
    #[tokio::test]
    async fn sessions_opened_from_a_token_are_bounded_per_user() {
        let world = world(SessionLimits {
            lifetime: hours(1),
            max_lifetime: hours(2),
            max_open: 3,
        });
        let (alice, token) = signed_in(&world, "alice").await;
        let mut opened = Vec::new();
        for _ in 0..2 {
            let (session, _) = world
                .lifecycle
                .open_additional(&token, ClientInfo::default())
                .await
                .unwrap();
            opened.push(session.id);
        }
        let refused = world
            .lifecycle
            .open_additional(&token, ClientInfo::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::QuotaExceeded);
        assert!(refused.to_string().contains("at most 3"), "{refused}");
        // Another user is not held back by alice's.
        let (_, bob_token) = signed_in(&world, "bob").await;
        assert!(
            world
                .lifecycle
                .open_additional(&bob_token, ClientInfo::default())
                .await
                .is_ok()
        );
        let alice_p = world.lifecycle.verify(&token).await.unwrap();
        world
            .lifecycle
            .revoke(&alice_p, alice.id, Some(opened[0]))
            .await
            .unwrap();
        assert!(
            world
                .lifecycle
                .open_additional(&token, ClientInfo::default())
                .await
                .is_ok(),
            "one signed out, one more may open"
        );
    }

    #[tokio::test]
    async fn users_act_on_their_own_sessions_and_admins_on_anyones() {
        let world = world(SessionLimits {
            lifetime: hours(1),
            max_lifetime: hours(2),
            max_open: DEFAULT_MAX_OPEN_SESSIONS,
        });
        let (alice, alice_token) = signed_in(&world, "alice").await;
        let (bob, bob_token) = signed_in(&world, "bob").await;
        let alice_p = world.lifecycle.verify(&alice_token).await.unwrap();
        let err = world
            .lifecycle
            .list(&alice_p, bob.id, false, 10, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Forbidden);
        let err = world
            .lifecycle
            .revoke(&alice_p, bob.id, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Forbidden);
        // Whether another name exists is not told to a non-admin.
        for name in ["bob", "nobody"] {
            let err = world
                .lifecycle
                .last_connection(&alice_p, Some(name))
                .await
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::Forbidden, "{name}");
        }

        let bob_p = world.lifecycle.verify(&bob_token).await.unwrap();
        assert_eq!(bob_p.role, Role::User);
        world
            .sessions
            .change_role(bob.id, Role::Admin, OffsetDateTime::now_utc())
            .await
            .unwrap();
        // The change ended the session the old role was issued under.
        let err = world.lifecycle.verify(&bob_token).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidToken);
        let admin_token = world
            .auth
            .login(
                LoginName::Username("bob".into()),
                "correct horse".into(),
                ClientInfo::default(),
            )
            .await
            .unwrap()
            .token;
        let admin = world.lifecycle.verify(&admin_token.token).await.unwrap();
        assert_eq!(admin.role, Role::Admin);
        let page = world
            .lifecycle
            .list(&admin, alice.id, false, 10, None)
            .await
            .unwrap();
        assert_eq!(page.sessions.len(), 1);
        let err = world
            .lifecycle
            .list(&admin, UserId::generate(), false, 10, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::UserNotFound);
        let err = world.lifecycle.touch(&admin, alice.id).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Forbidden);
        assert_eq!(
            world
                .lifecycle
                .revoke(&admin, alice.id, None)
                .await
                .unwrap(),
            1
        );
        let err = world.lifecycle.verify(&alice_token).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidToken);
    }

    #[tokio::test]
    async fn pages_run_newest_first_without_overlap() {
        let world = world(SessionLimits {
            lifetime: hours(1),
            max_lifetime: hours(2),
            max_open: DEFAULT_MAX_OPEN_SESSIONS,
        });
        let (alice, token) = signed_in(&world, "alice").await;
        let me = world.lifecycle.verify(&token).await.unwrap();
        for _ in 0..4 {
            world
                .lifecycle
                .open_additional(&token, ClientInfo::default())
                .await
                .unwrap();
        }
        let first = world
            .lifecycle
            .list(&me, alice.id, false, 2, None)
            .await
            .unwrap();
        let second = world
            .lifecycle
            .list(&me, alice.id, false, 2, first.next)
            .await
            .unwrap();
        let third = world
            .lifecycle
            .list(&me, alice.id, false, 2, second.next)
            .await
            .unwrap();
        assert_eq!(third.next, None);
        let ids: Vec<_> = [first, second, third]
            .iter()
            .flat_map(|p| p.sessions.iter().map(|s| s.id))
            .collect();
        assert_eq!(ids.len(), 5);
        assert!(
            ids.windows(2).all(|w| w[0] > w[1]),
            "newest first, no repeats"
        );

        // One session of another user's id is not found, whoever asks.
        let (_, bob_token) = signed_in(&world, "bob").await;
        let bob = world.lifecycle.verify(&bob_token).await.unwrap();
        let err = world
            .lifecycle
            .revoke(&me, alice.id, Some(bob.session_id))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound);
        assert_eq!(
            world
                .lifecycle
                .revoke(&me, alice.id, Some(me.session_id))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            world
                .lifecycle
                .revoke(&me, alice.id, Some(me.session_id))
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn touching_slides_the_expiry_up_to_the_maximum() {
        let world = world(SessionLimits {
            lifetime: hours(1),
            max_lifetime: hours(2),
            max_open: DEFAULT_MAX_OPEN_SESSIONS,
        });
        let (alice, token) = signed_in(&world, "alice").await;
        let me = world.lifecycle.verify(&token).await.unwrap();
        let (touched, fresh) = world.lifecycle.touch(&me, alice.id).await.unwrap();
        assert!(touched.expires_at <= touched.created_at + time::Duration::hours(2));
        assert!(touched.expires_at >= touched.last_seen_at + time::Duration::minutes(59));
        assert!(world.lifecycle.verify(&fresh.token).await.is_ok());

        // With no room to slide, the expiry stays at the maximum.
        let world = world_capped();
        let (alice, token) = signed_in(&world, "alice").await;
        let me = world.lifecycle.verify(&token).await.unwrap();
        let (before, _) = world.lifecycle.touch(&me, alice.id).await.unwrap();
        let (after, _) = world.lifecycle.touch(&me, alice.id).await.unwrap();
        assert_eq!(
            after.expires_at,
            before.created_at + time::Duration::hours(1)
        );
        assert!(after.last_seen_at >= before.last_seen_at);
    }

    fn world_capped() -> World {
        world(SessionLimits {
            lifetime: hours(1),
            max_lifetime: hours(1),
            max_open: DEFAULT_MAX_OPEN_SESSIONS,
        })
    }
}
