//! Image uploads and listings: the use case behind the gRPC image service.
//!
//! An upload is sanitized (see [`crate::upload`]) on the sanitizing pool's
//! own threads (a [`WorkPool`], shares by user), so memory stays
//! proportional to the uploads being sanitized at once, not to the uploads
//! in flight. It is stored under `users/{owner}/{random}.{ext}` (the
//! client's file name is never part of it, nor anything computable from the
//! bytes); the content hash in PostgreSQL makes the same image uploaded
//! twice one image.

use std::sync::Arc;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, ErrorCode};
use crate::ports::{Clock, ObjectStore, StoredObject};
use crate::token::Principal;
use crate::upload::{BufferPool, ImageFormat, ImageLimits, SanitizedImage, UploadBuffer, sanitize};
use crate::user::{Role, UserId};
use crate::work_pool::{WorkPool, WorkPoolConfig};

/// An image as stored and listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// A UUID v7: ids sort by upload time.
    pub id: Uuid,
    pub owner_id: UserId,
    /// Where the bytes are in the object store.
    pub key: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
    pub sha256: String,
    pub created_at: OffsetDateTime,
}

/// Where image metadata lives.
#[async_trait::async_trait]
pub trait ImageRepository: Send + Sync + 'static {
    /// Stores `image`, or returns the owner's existing image with the same
    /// hash (the same upload twice is one image). A new image that would
    /// take the owner past `quota` is `QUOTA_EXCEEDED`, decided in the same
    /// transaction that records it, so concurrent uploads cannot pass it.
    async fn insert(&self, image: &StoredImage, quota: &ImageQuota) -> Result<StoredImage, Error>;
    async fn find_by_hash(&self, owner: UserId, sha256: &str)
    -> Result<Option<StoredImage>, Error>;
    /// The owner's images older than `before`, newest first.
    async fn list(
        &self,
        owner: UserId,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<StoredImage>, Error>;
}

/// What one user may hold and do at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageQuota {
    /// Images one user may have stored.
    pub max_images: u64,
    /// Bytes (as stored) one user's images may take in all.
    pub max_bytes: u64,
    /// Uploads one user may have in progress (streaming or sanitizing).
    pub max_uploads_in_progress: usize,
}

impl Default for ImageQuota {
    fn default() -> Self {
        Self {
            max_images: 1_000,
            max_bytes: 1024 * 1024 * 1024,
            max_uploads_in_progress: 4,
        }
    }
}

/// One of a user's uploads in progress; the place is given back on drop.
#[derive(Debug)]
pub struct UploadSlot {
    owner: UserId,
    in_progress: Arc<std::sync::Mutex<std::collections::HashMap<UserId, usize>>>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut in_progress = match self.in_progress.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(count) = in_progress.get_mut(&self.owner) {
            *count -= 1;
            if *count == 0 {
                in_progress.remove(&self.owner);
            }
        }
    }
}

/// The largest page ListImages returns.
pub const MAX_PAGE: u32 = 100;
/// The page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 50;

/// The image use case.
#[derive(Clone)]
pub struct ImageLibrary {
    images: Arc<dyn ImageRepository>,
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    limits: ImageLimits,
    /// Sanitizing runs here: threads of its own at a lower priority, at
    /// most a quarter of its places per user.
    sanitizing: WorkPool<ImageLimits>,
    quota: ImageQuota,
    in_progress: Arc<std::sync::Mutex<std::collections::HashMap<UserId, usize>>>,
    /// Upload buffers kept for the next uploads.
    buffers: BufferPool,
}

/// Bytes of upload buffers kept for reuse, idle and lent together, unless
/// configured: four 8 MiB uploads' worth, as a doubling buffer grows
/// (16 MiB each).
pub const DEFAULT_BUFFER_POOL_BYTES: usize = 64 * 1024 * 1024;

impl std::fmt::Debug for ImageLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageLibrary")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Where a clean image lives in the object store:
/// `users/{owner}/{random}.{ext}`. Built here and parsed here: public delivery serves only keys of this
/// shape, so nothing else in the bucket can be reached through it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageKey {
    owner: UserId,
    /// 32 hex digits drawn at random (128 bits), so no one can compute an
    /// image's address from its bytes and its owner; keys written before
    /// that carry the 64-digit SHA-256 of the bytes and still parse.
    name: String,
    format: ImageFormat,
}

impl ImageKey {
    /// A new key for `image`: random, not derived from the bytes or owner.
    pub fn for_image(owner: UserId, image: &SanitizedImage) -> Result<Self, Error> {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random)
            .map_err(|e| Error::internal(format!("the random source failed: {e}")))?;
        Ok(Self {
            owner,
            name: random.iter().map(|b| format!("{b:02x}")).collect(),
            format: image.format,
        })
    }

    /// A key of the shape [`Self::for_image`] writes; anything else is
    /// `NOT_FOUND`, since no such image can exist.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let not_found = || Error::with_message(ErrorCode::NotFound, "no such image");
        let mut parts = raw.split('/');
        let (Some("users"), Some(owner), Some(file), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(not_found());
        };
        let (name, extension) = file.split_once('.').ok_or_else(not_found)?;
        let is_name = matches!(name.len(), 32 | 64)
            && name
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_name {
            return Err(not_found());
        }
        Ok(Self {
            owner: UserId::parse(owner).map_err(|_| not_found())?,
            name: name.to_owned(),
            format: ImageFormat::from_extension(extension).ok_or_else(not_found)?,
        })
    }

    pub fn owner(&self) -> UserId {
        self.owner
    }

    pub fn format(&self) -> ImageFormat {
        self.format
    }
}

impl std::fmt::Display for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "users/{}/{}.{}",
            self.owner,
            self.name,
            self.format.extension()
        )
    }
}

/// Where stored images are read from by anyone: every port that shows an
/// image (gRPC's `Image.url`, the HTTP upload's answer, the console's
/// pages) builds its address here, so all of them agree.
#[derive(Debug, Clone)]
pub enum PublicUrls {
    /// The image service delivers them: `{base}/images/{key}`.
    Delivered { base: String },
    /// A store or CDN with anonymous read: `{base}/{key}`.
    External { base: String },
}

impl PublicUrls {
    pub fn url(&self, key: &str) -> String {
        match self {
            PublicUrls::Delivered { base } => format!("{base}/images/{key}"),
            PublicUrls::External { base } => format!("{base}/{key}"),
        }
    }
}

impl ImageLibrary {
    /// `workers` uploads are sanitized at once (at least one).
    pub fn new(
        images: Arc<dyn ImageRepository>,
        store: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
        limits: ImageLimits,
        workers: usize,
    ) -> Self {
        Self {
            images,
            store,
            clock,
            limits,
            sanitizing: WorkPool::start(
                "sanitizing",
                limits,
                WorkPoolConfig {
                    workers: workers.max(1),
                    max_waiting: workers.max(1) * 32,
                    max_wait: std::time::Duration::from_secs(30),
                    max_per_client: 0,
                },
            ),
            quota: ImageQuota::default(),
            in_progress: Arc::default(),
            buffers: BufferPool::new(DEFAULT_BUFFER_POOL_BYTES),
        }
    }

    /// The same library keeping at most `max_bytes` of upload buffers, idle
    /// and lent together.
    pub fn with_buffer_pool(mut self, max_bytes: usize) -> Self {
        self.buffers = BufferPool::new(max_bytes);
        self
    }

    /// An empty buffer for one upload's bytes, from the library's pool and
    /// given back to it when the upload ends.
    pub fn new_upload(&self) -> UploadBuffer {
        UploadBuffer::pooled(&self.limits, &self.buffers)
    }

    /// Bytes of idle upload buffers the library keeps now.
    pub fn pooled_buffer_bytes(&self) -> usize {
        self.buffers.idle_bytes()
    }

    /// The same library with `quota` for every user.
    pub fn with_quota(mut self, quota: ImageQuota) -> Self {
        self.quota = quota;
        self
    }

    pub fn quota(&self) -> &ImageQuota {
        &self.quota
    }

    /// A place among `owner`'s uploads in progress, held while the upload
    /// streams in and is stored; `UPLOADS_IN_PROGRESS` when all are taken.
    pub fn begin_upload(&self, owner: &Principal) -> Result<UploadSlot, Error> {
        let mut in_progress = match self.in_progress.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        let count = in_progress.entry(owner.user_id).or_insert(0);
        if *count >= self.quota.max_uploads_in_progress.max(1) {
            tracing::info!(owner = %owner.user_id, in_progress = *count, "upload refused: the user's uploads in progress are at the cap");
            return Err(Error::new(ErrorCode::UploadsInProgress));
        }
        *count += 1;
        Ok(UploadSlot {
            owner: owner.user_id,
            in_progress: Arc::clone(&self.in_progress),
        })
    }

    /// How busy the sanitizing pool is.
    pub fn sanitizing_load(&self) -> crate::work_pool::PoolLoad {
        self.sanitizing.load()
    }

    /// Uploads in progress now, all users together.
    pub fn uploads_in_progress(&self) -> usize {
        match self.in_progress.lock() {
            Ok(map) => map.values().sum(),
            Err(poisoned) => poisoned.into_inner().values().sum(),
        }
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    /// Sanitizes and stores an upload for `owner`. Nothing is left in the
    /// store when it fails. An upload without bytes is `EMPTY_UPLOAD`,
    /// before it waits for a sanitizing slot.
    pub async fn upload(
        &self,
        owner: &Principal,
        upload: UploadBuffer,
    ) -> Result<StoredImage, Error> {
        if upload.is_empty() {
            return Err(Error::new(ErrorCode::EmptyUpload));
        }
        // One user holds at most a quarter of the pool's places, so a flood
        // from one account waits (or is OVERLOADED) on its own share.
        let (bytes, loan) = upload.into_parts();
        let clean = self
            .sanitizing
            .run_for(Some(owner.user_id.to_string().into()), move |limits| {
                sanitize(bytes, limits)
            })
            .await??;
        let key = ImageKey::for_image(owner.user_id, &clean)?.to_string();
        if let Some(existing) = self
            .images
            .find_by_hash(owner.user_id, &clean.sha256)
            .await?
            && self.store.exists(&existing.key).await?
        {
            return Ok(existing);
        }
        let image = StoredImage {
            id: Uuid::now_v7(),
            owner_id: owner.user_id,
            key: key.clone(),
            content_type: clean.format.content_type().to_owned(),
            size_bytes: clean.bytes.len() as u64,
            width: clean.width,
            height: clean.height,
            sha256: clean.sha256.clone(),
            created_at: self.clock.now(),
        };
        // The buffer goes back to its pool once the store has sent it.
        let body = match loan {
            Some(loan) => loan.recycled(clean.bytes),
            None => bytes::Bytes::from(clean.bytes),
        };
        self.store
            .put(&key, body, clean.format.content_type(), Some(&clean.sha256))
            .await?;
        match self.images.insert(&image, &self.quota).await {
            Ok(stored) if stored.key != key => {
                // A concurrent upload of the same image won: its row and
                // object stand, and this one's object goes.
                if let Err(e) = self.store.delete(&key).await {
                    tracing::error!(key = %key, error = %e, "an object without metadata was left in the store");
                }
                Ok(stored)
            }
            Ok(stored) => {
                tracing::info!(owner = %owner.user_id, image = %stored.id, key = %stored.key, size = stored.size_bytes, "image stored");
                Ok(stored)
            }
            Err(error) => {
                // The object is removed unless a row (a concurrent upload of
                // the same image) now refers to it.
                let referenced = matches!(
                    self.images.find_by_hash(owner.user_id, &image.sha256).await,
                    Ok(Some(row)) if row.key == key
                );
                if !referenced && let Err(e) = self.store.delete(&key).await {
                    tracing::error!(key = %key, error = %e, "an object without metadata was left in the store");
                }
                Err(error)
            }
        }
    }

    /// An image for anyone to read (public delivery): `key` must be of the
    /// shape the library writes, and the object must exist; `NOT_FOUND`
    /// otherwise.
    pub async fn open_public(&self, key: &str) -> Result<StoredObject, Error> {
        let key = ImageKey::parse(key)?.to_string();
        self.store
            .get(&key)
            .await?
            .ok_or_else(|| Error::with_message(ErrorCode::NotFound, "no such image"))
    }

    /// A page of images, newest first: the caller's, or (for an admin) any
    /// owner's.
    pub async fn list(
        &self,
        principal: &Principal,
        owner: Option<UserId>,
        page_size: u32,
        before: Option<Uuid>,
    ) -> Result<(Vec<StoredImage>, Option<Uuid>), Error> {
        let owner = match owner {
            Some(owner) if owner != principal.user_id && principal.role != Role::Admin => {
                return Err(Error::with_message(
                    ErrorCode::Forbidden,
                    "only admins may list another user's images",
                ));
            }
            Some(owner) => owner,
            None => principal.user_id,
        };
        self.page(owner, page_size, before).await
    }

    /// `owner`'s images for a client's own token with scope `images:read`
    /// (a client has no images of its own, so `owner` is required).
    pub async fn list_for_client(
        &self,
        client: &crate::token::ClientPrincipal,
        owner: Option<UserId>,
        page_size: u32,
        before: Option<Uuid>,
    ) -> Result<(Vec<StoredImage>, Option<Uuid>), Error> {
        client.require_scope("images:read")?;
        let owner = owner.ok_or_else(|| {
            Error::with_message(
                ErrorCode::InvalidRequest,
                "owner_id is required with a client's token: a client has no images of its own",
            )
        })?;
        self.page(owner, page_size, before).await
    }

    async fn page(
        &self,
        owner: UserId,
        page_size: u32,
        before: Option<Uuid>,
    ) -> Result<(Vec<StoredImage>, Option<Uuid>), Error> {
        let limit = if page_size == 0 {
            DEFAULT_PAGE
        } else {
            page_size.min(MAX_PAGE)
        };
        let mut page = self.images.list(owner, before, limit + 1).await?;
        let next = if page.len() > limit as usize {
            page.truncate(limit as usize);
            page.last().map(|i| i.id)
        } else {
            None
        };
        Ok((page, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_and_nothing_else_parses() {
        let hash = "a".repeat(64);
        let owner = "0190b0c4-52a1-7a3c-9d2e-1f2a3b4c5d6e";
        let raw = format!("users/{owner}/{hash}.png");
        let key = ImageKey::parse(&raw).unwrap();
        assert_eq!(key.to_string(), raw, "the older, content-named shape");
        let random = format!("users/{owner}/{}.png", "0f".repeat(16));
        assert_eq!(ImageKey::parse(&random).unwrap().to_string(), random);
        assert_eq!(key.format(), ImageFormat::Png);
        assert_eq!(key.owner().to_string(), owner);
        for format in ImageFormat::ALL {
            let raw = format!("users/{owner}/{hash}.{}", format.extension());
            assert_eq!(ImageKey::parse(&raw).unwrap().format(), format);
        }
        for bad in [
            format!("users/{owner}/{hash}.svg"),
            format!("users/{owner}/../{hash}.png"),
            format!("users/not-a-uuid/{hash}.png"),
            format!("users/{owner}/{}.png", "A".repeat(64)),
            format!("users/{owner}/{}.png", "a".repeat(63)),
            format!("users/{owner}/{}.png", "a".repeat(31)),
            format!("other/{owner}/{hash}.png"),
            format!("users/{owner}/x/{hash}.png"),
            format!("users/{owner}/{hash}"),
            "users".to_owned(),
        ] {
            let err = ImageKey::parse(&bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::NotFound, "{bad}");
        }
    }
}
