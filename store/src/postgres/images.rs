//! Image metadata in PostgreSQL.

use async_trait::async_trait;
use hub_core::{Error, ErrorCode, ImageQuota, ImageRepository, StoredImage, UserId};
use sqlx::postgres::PgPool;
use sqlx::{FromRow, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;

/// Image metadata in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgImageRepository {
    pool: PgPool,
}

impl PgImageRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct ImageRow {
    id: Uuid,
    owner_id: Uuid,
    object_key: String,
    content_type: String,
    size_bytes: i64,
    width: i32,
    height: i32,
    sha256: String,
    created_at: OffsetDateTime,
}

impl TryFrom<ImageRow> for StoredImage {
    type Error = Error;

    fn try_from(row: ImageRow) -> Result<Self, Error> {
        let corrupt =
            |field: &str| Error::internal(format!("images row {} has a bad {field}", row.id));
        Ok(StoredImage {
            id: row.id,
            owner_id: UserId::try_from(row.owner_id).map_err(|_| corrupt("owner_id"))?,
            key: row.object_key,
            content_type: row.content_type,
            size_bytes: u64::try_from(row.size_bytes).map_err(|_| corrupt("size_bytes"))?,
            width: u32::try_from(row.width).map_err(|_| corrupt("width"))?,
            height: u32::try_from(row.height).map_err(|_| corrupt("height"))?,
            sha256: row.sha256,
            created_at: row.created_at,
        })
    }
}

/// The columns every image query returns.
macro_rules! columns {
    () => {
        "id, owner_id, object_key, content_type, size_bytes, width, height, sha256, created_at"
    };
}

#[async_trait]
impl ImageRepository for PgImageRepository {
    /// One call of `store_image` (a migration), one round trip: the owner's
    /// row locked (so two uploads of one user are decided one after the
    /// other), an existing image with the same hash returned as it is, else
    /// the quota checked, then the row stored, all in one transaction.
    async fn insert(&self, image: &StoredImage, quota: &ImageQuota) -> Result<StoredImage, Error> {
        let row =
            sqlx::query("SELECT * FROM store_image($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
                .bind(image.id)
                .bind(image.owner_id.as_uuid())
                .bind(&image.key)
                .bind(&image.content_type)
                .bind(i64::try_from(image.size_bytes).unwrap_or(i64::MAX))
                .bind(i32::try_from(image.width).unwrap_or(i32::MAX))
                .bind(i32::try_from(image.height).unwrap_or(i32::MAX))
                .bind(&image.sha256)
                .bind(image.created_at)
                .bind(i64::try_from(quota.max_images).unwrap_or(i64::MAX))
                .bind(i64::try_from(quota.max_bytes).unwrap_or(i64::MAX))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| classify("storing image metadata", e))?;
        let read = |e| classify("reading what storing image metadata answered", e);
        let outcome: String = row.try_get("outcome").map_err(read)?;
        if outcome == "quota" {
            let count: i64 = row.try_get("used_images").map_err(read)?;
            let bytes: i64 = row.try_get("used_bytes").map_err(read)?;
            tracing::info!(owner = %image.owner_id, count, bytes, "upload refused: the user's image quota is full");
            return Err(Error::with_message(
                ErrorCode::QuotaExceeded,
                format!(
                    "the quota is {} images and {} bytes; {count} images and {bytes} bytes are stored",
                    quota.max_images, quota.max_bytes
                ),
            ));
        }
        StoredImage::try_from(ImageRow::from_row(&row).map_err(read)?)
    }

    async fn find_by_hash(
        &self,
        owner: UserId,
        sha256: &str,
    ) -> Result<Option<StoredImage>, Error> {
        sqlx::query_as::<_, ImageRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM images WHERE owner_id = $1 AND sha256 = $2"
        ))
        .bind(owner.as_uuid())
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading image metadata", e))?
        .map(StoredImage::try_from)
        .transpose()
    }

    async fn list(
        &self,
        owner: UserId,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<StoredImage>, Error> {
        sqlx::query_as::<_, ImageRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM images WHERE owner_id = $1 AND ($2::uuid IS NULL OR id < $2) \
              ORDER BY id DESC LIMIT $3"
        ))
        .bind(owner.as_uuid())
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("listing images", e))?
        .into_iter()
        .map(StoredImage::try_from)
        .collect()
    }
}
