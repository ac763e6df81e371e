//! hub-core: the one domain every polyhub protocol adapter serves.
//!
//! Values here validate when they are built, so an invalid `Username` or `Email`
//! cannot exist past the edge. Use cases speak to the outside world only through
//! the narrow port traits in [`ports`]; no transport or storage crate is a
//! dependency of this crate.

pub mod administration;
pub mod authentication;
mod container;
pub mod delivery;
pub mod directory;
pub mod error;
pub mod events;
pub mod factors;
pub mod feed;
pub mod images;
pub mod legacy;
pub mod lifecycle;
pub mod oauth;
pub mod oidc;
pub mod passkeys;
pub mod password;
pub mod ports;
pub mod recovery;
pub mod registration;
pub mod relay;
pub mod scim;
pub mod session;
pub mod sign_in;
pub mod token;
pub mod upload;
pub mod user;
pub mod verified;
pub mod webhooks;
pub mod work_pool;

pub use administration::{Administration, UserPage, require_admin};
pub use authentication::{AccountKey, Authentication, LoginName, LoginOutcome, ProfileChange};
pub use delivery::{DispatchSettings, DispatchSnapshot, DispatchStatus, Dispatcher};
pub use directory::{Directory, UserSummary};
pub use error::{Error, ErrorCode, ErrorKind};
pub use factors::{Challenge, FactorStore, FactorSummary, Factors};
pub use images::{
    DEFAULT_BUFFER_POOL_BYTES, ImageKey, ImageLibrary, ImageQuota, ImageRepository, PublicUrls,
    StoredImage, UploadSlot,
};
pub use legacy::{
    HashCeilings, HashRefusal, ImportRecord, ImportReport, Importer, import_hash, import_hash_with,
};
pub use lifecycle::{SessionLifecycle, SessionLimits, SessionPage};
pub use oauth::{
    ClientAuthMethod, ClientId, ClientRegistry, ClientSecret, GrantType, IdTokenAlg, NewClient,
    OAuth, OAuthClient, OAuthClients, OAuthError, OAuthErrorCode, OAuthSettings, PresentedClient,
    Scopes, TokenResponse,
};
pub use oidc::{
    AuthorizationRequest, AuthorizeParams, AuthorizeRefusal, IdTokenKey, Next, Oidc, OidcSettings,
    OidcStore, UserTokens,
};
pub use password::{PasswordHash, PasswordHasher};
pub use ports::{
    ActivityLog, Backlog, ByteStream, ClaimedEvents, Clock, CredentialChange, DependencyProbe,
    ImportOutcome, KnownDevices, LastConnection, NewUser, ObjectStore, Outbox, PendingEvent,
    ReplayGuard, SessionQuery, SessionRepository, StoredObject, SystemClock, User, UserRepository,
};
pub use registration::{RegisterUser, Registration};
pub use relay::{Relay, RelayError, RelaySettings, RelaySnapshot, RelayStatus};
pub use session::{ClientInfo, Session, SessionEvent, SessionEventKind, SessionId, SessionState};
pub use sign_in::{
    AccountBudgets, Credential, LoginAttempt, LoginBudgets, ProfileChanged, SecondStep,
    SecondStepDone, SignIn, SignInStep, SignUp, SignedIn,
};
pub use token::{
    AppPrincipal, Claims, ClientPrincipal, IssuedToken, Jwks, KeySet, KnownDevice, Principal,
    TokenSettings, Tokens, claimed_identity,
};
pub use upload::{BufferPool, ImageFormat, ImageLimits, Loan, SanitizedImage, UploadBuffer};
pub use user::{Email, Password, Role, UserId, Username};
pub use verified::VerifiedPasswords;
pub use webhooks::{
    Delivery, EndpointId, EventTypes, WebhookEndpoint, WebhookEndpoints, WebhookSecret,
    WebhookTransport, Webhooks,
};
pub use work_pool::{HashingPool, WorkPool, WorkPoolConfig, as_client};
