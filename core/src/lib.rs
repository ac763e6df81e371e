//! hub-core: the one domain every polyhub protocol adapter serves.
//!
//! Values here validate when they are built, so an invalid `Username` or `Email`
//! cannot exist past the edge. Use cases speak to the outside world only through
//! the narrow port traits in [`ports`]; no transport or storage crate is a
//! dependency of this crate.

pub mod directory;
pub mod error;
pub mod hashing;
pub mod password;
pub mod ports;
pub mod registration;
pub mod user;

pub use directory::Directory;
pub use error::{Error, ErrorCode, ErrorKind};
pub use hashing::{HashingPool, HashingPoolConfig};
pub use password::{PasswordHash, PasswordHasher};
pub use ports::{Clock, DependencyProbe, NewUser, SystemClock, User, UserRepository};
pub use registration::{RegisterUser, Registration};
pub use user::{Email, Password, Role, UserId, Username};
