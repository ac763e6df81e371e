//! Image sanitizing: what an uploaded image must pass before it is stored.
//!
//! The client's claims (file name, content type) are hints and decide
//! nothing. The type comes from the magic bytes; the dimensions are read
//! from the header and checked before anything is decoded, so a small file
//! that declares a huge canvas (a decompression bomb) costs nothing; then
//! the image is decoded, which proves its data well-formed, and its
//! container is rewritten from an allow-list around that same data
//! (`container`): EXIF and GPS, comments, text chunks and anything appended
//! after the image's end (a script, a zip) do not survive it.

use std::io::Cursor;

use bytes::Bytes;
use image::{DynamicImage, ImageFormat as Codec, ImageReader, Limits};
use sha2::{Digest, Sha256};

use crate::container::PngRows;
use crate::error::{Error, ErrorCode};

/// The formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Gif,
    WebP,
}

impl ImageFormat {
    /// The format the bytes are, by their magic numbers; `None` for
    /// anything else (SVG and every text format included).
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(Self::Gif)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::WebP)
        } else {
            None
        }
    }

    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::WebP => "image/webp",
        }
    }

    /// Every format accepted.
    pub const ALL: [ImageFormat; 4] = [Self::Png, Self::Jpeg, Self::Gif, Self::WebP];

    /// The format whose [`Self::extension`] is `extension`.
    pub fn from_extension(extension: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.extension() == extension)
    }

    pub const fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Gif => "gif",
            Self::WebP => "webp",
        }
    }

    const fn codec(self) -> Codec {
        match self {
            Self::Png => Codec::Png,
            Self::Jpeg => Codec::Jpeg,
            Self::Gif => Codec::Gif,
            Self::WebP => Codec::WebP,
        }
    }
}

/// What an upload may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Bytes one upload may carry.
    pub max_bytes: usize,
    /// Pixels (width x height) the header may declare.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 50_000_000,
        }
    }
}

/// An upload's bytes as they arrive, refused the moment they pass the limit.
/// Each chunk is copied into the upload's one buffer as it comes and let go
/// at once, so the transport fills the same receive buffer again instead
/// of a fresh one per message; the buffer itself comes from a
/// [`BufferPool`] and goes back to it when the upload is stored or refused.
/// It grows at most to the limit, never past it.
#[derive(Debug)]
pub struct UploadBuffer {
    bytes: Vec<u8>,
    max: usize,
    loan: Option<Loan>,
}

impl UploadBuffer {
    /// A buffer of its own, not from a pool.
    pub fn new(limits: &ImageLimits) -> Self {
        Self {
            bytes: Vec::new(),
            max: limits.max_bytes,
            loan: None,
        }
    }

    /// A buffer from `pool` (one an earlier upload gave back, when there is
    /// one), given back to it when this upload ends.
    pub fn pooled(limits: &ImageLimits, pool: &BufferPool) -> Self {
        let (bytes, loan) = pool.lend();
        Self {
            bytes,
            max: limits.max_bytes,
            loan: Some(loan),
        }
    }

    /// Adds one chunk; `IMAGE_TOO_LARGE` as soon as the total passes the cap.
    pub fn push(&mut self, chunk: impl AsRef<[u8]>) -> Result<(), Error> {
        let chunk = chunk.as_ref();
        let len = self.bytes.len().saturating_add(chunk.len());
        if len > self.max {
            return Err(Error::with_message(
                ErrorCode::ImageTooLarge,
                format!("the image is larger than the limit of {} bytes", self.max),
            ));
        }
        if len > self.bytes.capacity() {
            // Doubling, as a vector grows, but never past the cap.
            let grown = len
                .max(self.bytes.capacity().saturating_mul(2))
                .min(self.max);
            if self.bytes.is_empty() {
                // A pooled buffer too small for the first chunk: a new one,
                // rather than a reallocation that copies what it held before.
                self.bytes = Vec::with_capacity(grown);
            } else {
                self.bytes.reserve_exact(grown - self.bytes.len());
            }
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes in one piece, and the loan that gives them back to their
    /// pool (none for a buffer of its own).
    pub fn into_parts(mut self) -> (Vec<u8>, Option<Loan>) {
        (std::mem::take(&mut self.bytes), self.loan.take())
    }

    /// The bytes in one piece.
    pub fn into_bytes(self) -> Vec<u8> {
        self.into_parts().0
    }
}

impl Drop for UploadBuffer {
    fn drop(&mut self) {
        if let Some(loan) = self.loan.take() {
            loan.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

/// Upload buffers kept for the next upload, up to a number of bytes. A
/// fresh buffer of a few MiB is faulted in, and zeroed by the kernel, page
/// by page as it is first written, which cost more of an upload's CPU than
/// copying the bytes into it; a buffer given back is written again without
/// either. What it holds is bounded: the idle buffers and those lent out
/// (their capacity when lent; a lent buffer keeps its pages however little
/// the upload holding it has received) stay under `max_bytes` together, and
/// a buffer given back past that is freed.
#[derive(Debug, Clone)]
pub struct BufferPool {
    inner: std::sync::Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    shelf: std::sync::Mutex<Shelf>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Shelf {
    /// Idle buffers, the most recently given back last.
    idle: Vec<Vec<u8>>,
    /// Their capacity in all.
    idle_bytes: usize,
    /// The capacity of the buffers lent out, as it was when each was lent.
    lent_bytes: usize,
}

impl BufferPool {
    /// A pool holding at most `max_bytes` of buffers, idle or lent (0: none).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: std::sync::Arc::new(PoolInner {
                shelf: std::sync::Mutex::new(Shelf::default()),
                max_bytes,
            }),
        }
    }

    fn shelf(&self) -> std::sync::MutexGuard<'_, Shelf> {
        match self.inner.shelf.lock() {
            Ok(shelf) => shelf,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The buffer given back last (its pages still the process's), empty,
    /// or a new one when none is idle; and the loan that gives it back.
    pub fn lend(&self) -> (Vec<u8>, Loan) {
        let mut shelf = self.shelf();
        let buffer = shelf.idle.pop().unwrap_or_default();
        shelf.idle_bytes -= buffer.capacity();
        shelf.lent_bytes += buffer.capacity();
        let loan = Loan {
            pool: self.clone(),
            capacity: buffer.capacity(),
        };
        (buffer, loan)
    }

    /// Bytes of idle buffers kept now (their capacity).
    pub fn idle_bytes(&self) -> usize {
        self.shelf().idle_bytes
    }

    /// Bytes of buffers lent out now (their capacity when lent).
    pub fn lent_bytes(&self) -> usize {
        self.shelf().lent_bytes
    }
}

/// A buffer lent by a [`BufferPool`]. Given back with [`Loan::give_back`]
/// (or through [`Loan::recycled`]), the buffer is kept if the pool has room;
/// dropped, the loan is settled and the buffer is the holder's to free.
#[derive(Debug)]
pub struct Loan {
    pool: BufferPool,
    capacity: usize,
}

impl Loan {
    /// Gives `buffer` back: kept for a later upload while the pool's idle
    /// and lent buffers stay under its bound, freed otherwise.
    pub fn give_back(mut self, mut buffer: Vec<u8>) {
        let lent = std::mem::take(&mut self.capacity);
        let capacity = buffer.capacity();
        buffer.clear();
        let mut shelf = self.pool.shelf();
        shelf.lent_bytes -= lent;
        if capacity > 0
            && shelf.idle_bytes + shelf.lent_bytes + capacity <= self.pool.inner.max_bytes
        {
            shelf.idle_bytes += capacity;
            shelf.idle.push(buffer);
        }
    }

    /// `bytes` as a [`Bytes`] that gives its buffer back when the last of
    /// its clones is dropped (when the store has sent it).
    pub fn recycled(self, bytes: Vec<u8>) -> Bytes {
        Bytes::from_owner(Recycled {
            bytes,
            loan: Some(self),
        })
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if self.capacity > 0 {
            self.pool.shelf().lent_bytes -= self.capacity;
        }
    }
}

/// A buffer on its way back to its pool.
struct Recycled {
    bytes: Vec<u8>,
    loan: Option<Loan>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Some(loan) = self.loan.take() {
            loan.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

/// A clean image, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanitizedImage {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// SHA-256 of `bytes`, lower-case hex: the image's name in the store.
    pub sha256: String,
}

fn corrupt(why: impl std::fmt::Display) -> Error {
    tracing::debug!(reason = %why, "image refused as corrupt");
    Error::new(ErrorCode::CorruptImage)
}

/// Checks an uploaded image and rewrites it from an allow-list, in the
/// upload's own buffer. CPU-bound: run it off the async threads.
pub fn sanitize(bytes: Vec<u8>, limits: &ImageLimits) -> Result<SanitizedImage, Error> {
    if bytes.len() > limits.max_bytes {
        return Err(Error::new(ErrorCode::ImageTooLarge));
    }
    let format =
        ImageFormat::sniff(&bytes).ok_or_else(|| Error::new(ErrorCode::UnsupportedImageType))?;
    // The header alone, parsed without a decoder.
    let size = imagesize::blob_size(&bytes).map_err(corrupt)?;
    let (width, height) = (
        u32::try_from(size.width).map_err(corrupt)?,
        u32::try_from(size.height).map_err(corrupt)?,
    );
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(Error::with_message(
            ErrorCode::ImageTooManyPixels,
            format!(
                "the image is {width} x {height} pixels; at most {} are allowed",
                limits.max_pixels
            ),
        ));
    }
    if width == 0 || height == 0 {
        return Err(corrupt("zero-sized image"));
    }
    // The decoder may allocate what the checked dimensions need, at four
    // bytes per pixel (RGBA8), and a little more; nothing else.
    let max_alloc = u64::from(width) * u64::from(height) * 8 + (1 << 20);
    // The decode is the proof the pixels are well-formed. The image is then
    // rewritten from an allow-list around its own compressed data (no
    // re-encoding: nothing grows, no encoder's CPU); only an animated WebP
    // is re-encoded, its first frame.
    let uploaded = bytes.len();
    let clean = match format {
        ImageFormat::Png => {
            let rows = png_rows(&bytes, (width, height), max_alloc)?;
            crate::container::rewrite_png(&bytes, &rows)?.apply(bytes)
        }
        ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP => {
            let image = decode(&bytes, format, (width, height), max_alloc)?;
            let rewrite = match format {
                ImageFormat::Jpeg => Some(crate::container::rewrite_jpeg(&bytes)?),
                ImageFormat::Gif => Some(crate::container::rewrite_gif(&bytes)?),
                _ => crate::container::rewrite_webp(&bytes)?,
            };
            match rewrite {
                Some(rewrite) => rewrite.apply(bytes),
                None => encode_webp(&image)?,
            }
        }
    };
    refuse_growth(uploaded, clean.len(), limits)?;
    let sha256 = Sha256::digest(&clean)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(SanitizedImage {
        bytes: clean,
        format,
        width,
        height,
        sha256,
    })
}

/// What a PNG's image data must inflate to, from its header as the png
/// crate reads it (IHDR's fields and their combinations, the chunks before
/// the image data and their CRCs, a palette for an indexed image). The rest
/// of the proof, inflating every row, is the rewrite's own pass over the
/// data (`container::rewrite_png`): the pixels are never unfiltered or held.
fn png_rows(bytes: &[u8], (width, height): (u32, u32), max_alloc: u64) -> Result<PngRows, Error> {
    let limits = png::Limits {
        bytes: usize::try_from(max_alloc).unwrap_or(usize::MAX),
    };
    let decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    let reader = decoder.read_info().map_err(corrupt)?;
    let info = reader.info();
    if (info.width, info.height) != (width, height) {
        return Err(corrupt("the header's size changed between two reads"));
    }
    if info.color_type == png::ColorType::Indexed && info.palette.is_none() {
        return Err(corrupt("an indexed image without a palette"));
    }
    Ok(PngRows::new(width, height, info.interlaced, |w| {
        info.raw_row_length_from_width(w)
    }))
}

/// Every other format's proof: the whole image decoded.
fn decode(
    bytes: &[u8],
    format: ImageFormat,
    (width, height): (u32, u32),
    max_alloc: u64,
) -> Result<DynamicImage, Error> {
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(width);
    decoder_limits.max_image_height = Some(height);
    decoder_limits.max_alloc = Some(max_alloc);
    let mut decoding = ImageReader::with_format(Cursor::new(bytes), format.codec());
    decoding.limits(decoder_limits);
    decoding.decode().map_err(corrupt)
}

/// A sanitized image may never be larger than its upload, nor than the
/// upload cap: the rewriters only drop bytes, and the one re-encode left
/// (an animated WebP's first frame) is refused when it would grow.
fn refuse_growth(uploaded: usize, sanitized: usize, limits: &ImageLimits) -> Result<(), Error> {
    if sanitized > uploaded || sanitized > limits.max_bytes {
        return Err(Error::with_message(
            ErrorCode::SanitizedTooLarge,
            format!(
                "sanitized, the image would be {sanitized} bytes, more than the {uploaded} uploaded or the limit of {}",
                limits.max_bytes
            ),
        ));
    }
    Ok(())
}

/// An animated WebP's first frame, re-encoded losslessly from the pixels
/// the decode proved: only they survive.
fn encode_webp(image: &DynamicImage) -> Result<Vec<u8>, Error> {
    use image::codecs::webp::WebPEncoder;
    let mut out = Vec::new();
    DynamicImage::ImageRgba8(image.to_rgba8())
        .write_with_encoder(WebPEncoder::new_lossless(&mut out))
        .map_err(|e| Error::internal(format!("re-encoding an image: {e}")))?;
    Ok(out)
}

#[cfg(any(test, feature = "test-support"))]
pub mod test_support {
    //! Hostile images for tests, made by hand.

    /// A PNG signature and a valid IHDR declaring `width` x `height`, and
    /// nothing else: what a decompression bomb's header looks like.
    pub fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(13u32.to_be_bytes());
        out.extend(&ihdr);
        out.extend(crc32(&ihdr).to_be_bytes());
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn picture(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x * 7) as u8, (y * 13) as u8, ((x + y) * 3) as u8])
        }))
    }

    fn encoded(format: ImageFormat) -> Vec<u8> {
        let image = picture(64, 48);
        let mut out = Cursor::new(Vec::new());
        match format {
            ImageFormat::Jpeg => DynamicImage::ImageRgb8(image.to_rgb8())
                .write_to(&mut out, Codec::Jpeg)
                .unwrap(),
            ImageFormat::Gif | ImageFormat::WebP => DynamicImage::ImageRgba8(image.to_rgba8())
                .write_to(&mut out, format.codec())
                .unwrap(),
            ImageFormat::Png => image.write_to(&mut out, Codec::Png).unwrap(),
        }
        out.into_inner()
    }

    const LIMITS: ImageLimits = ImageLimits {
        max_bytes: 1 << 20,
        max_pixels: 1_000_000,
    };

    #[test]
    fn every_accepted_format_comes_out_in_its_own_format() {
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let clean = sanitize(encoded(format), &LIMITS).unwrap();
            assert_eq!(clean.format, format);
            assert_eq!((clean.width, clean.height), (64, 48));
            assert_eq!(ImageFormat::sniff(&clean.bytes), Some(format));
            assert_eq!(clean.sha256.len(), 64);
            // Sanitizing is stable: clean bytes sanitize to themselves.
            if format != ImageFormat::Jpeg {
                assert_eq!(
                    sanitize(clean.bytes.clone(), &LIMITS).unwrap().sha256,
                    clean.sha256
                );
            }
        }
    }

    /// PNG chunks as `(type, data)`, from after the signature.
    fn png_chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        let mut rest = &png[8..];
        let mut out = Vec::new();
        while rest.len() >= 12 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            out.push((rest[4..8].try_into().unwrap(), rest[8..8 + len].to_vec()));
            rest = &rest[12 + len..];
        }
        out
    }

    fn png_from(chunks: &[([u8; 4], Vec<u8>)], tail: &[u8]) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in chunks {
            out.extend((data.len() as u32).to_be_bytes());
            out.extend(kind);
            out.extend(data);
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend(crc.finalize().to_be_bytes());
        }
        out.extend(tail);
        out
    }

    /// The amplifier: one random row and every other row the same, with the
    /// Up filter, compresses to almost nothing; re-encoded it grew hundreds
    /// of times (past the upload cap). Rewritten, it cannot grow at all.
    #[test]
    fn a_png_that_compresses_well_is_stored_no_larger_than_uploaded() {
        use image::ImageEncoder;
        use image::codecs::png::{CompressionType, FilterType, PngEncoder};
        let (width, height) = (3_000u32, 2_000u32);
        let mut seed = 0x2545_f491_u32;
        let row: Vec<u8> = (0..width * 3)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        let pixels: Vec<u8> = (0..height).flat_map(|_| row.iter().copied()).collect();
        let mut upload = Vec::new();
        PngEncoder::new_with_quality(&mut upload, CompressionType::Best, FilterType::Up)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert!(upload.len() < 100 * 1024, "{}", upload.len());
        let limits = ImageLimits::default();
        let clean = sanitize(upload.to_vec(), &limits).unwrap();
        assert!(
            clean.bytes.len() <= upload.len(),
            "{} bytes stored from {} uploaded",
            clean.bytes.len(),
            upload.len()
        );
        assert_eq!((clean.width, clean.height), (width, height));
    }

    /// Text, EXIF, private chunks, bytes hidden after the zlib stream inside
    /// IDAT and bytes after IEND are all gone; the pixels are the same.
    #[test]
    fn a_rewritten_png_keeps_only_the_allowed_chunks_and_the_same_pixels() {
        let png = encoded(ImageFormat::Png);
        let chunks = png_chunks(&png);
        let mut hostile = vec![chunks[0].clone()];
        hostile.push((*b"tEXt", b"Comment\0<script>alert(1)</script>".to_vec()));
        hostile.push((*b"eXIf", b"MM\0*GPS".to_vec()));
        hostile.push((*b"prIv", b"secret".to_vec()));
        hostile.push((*b"gAMA", 45_455u32.to_be_bytes().to_vec()));
        for (kind, data) in &chunks[1..] {
            if kind == b"IDAT" {
                let mut data = data.clone();
                data.extend(b"PK\x03\x04hidden");
                hostile.push((*kind, data));
            } else {
                hostile.push((*kind, data.clone()));
            }
        }
        let hostile = png_from(&hostile, b"<html>after IEND</html>");
        let clean = sanitize(hostile.to_vec(), &LIMITS).unwrap();
        let kinds: Vec<[u8; 4]> = png_chunks(&clean.bytes)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(kinds, vec![*b"IHDR", *b"gAMA", *b"IDAT", *b"IEND"]);
        for needle in [
            &b"<script>"[..],
            b"GPS",
            b"secret",
            b"PK\x03\x04",
            b"<html>",
        ] {
            assert!(
                !clean.bytes.windows(needle.len()).any(|w| w == needle),
                "{needle:?}"
            );
        }
        let before = image::load_from_memory(&png).unwrap();
        let after = image::load_from_memory(&clean.bytes).unwrap();
        assert_eq!(before.to_rgba8(), after.to_rgba8());
    }

    /// A rewritten JPEG keeps its frame, tables and scan as they were and
    /// nothing else: comments, XMP, IPTC and ICC segments are gone, and it
    /// decodes to exactly the same pixels (the scan's bytes are the same).
    #[test]
    fn a_rewritten_jpeg_keeps_only_the_allowed_segments_and_the_same_pixels() {
        let jpeg = encoded(ImageFormat::Jpeg);
        let segment = |marker: u8, data: &[u8]| {
            let mut out = vec![0xFF, marker];
            out.extend(u16::try_from(data.len() + 2).unwrap().to_be_bytes());
            out.extend(data);
            out
        };
        let mut hostile = jpeg[..2].to_vec();
        hostile.extend(segment(0xFE, b"<script>comment</script>"));
        hostile.extend(segment(
            0xE1,
            b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>GPS</x:xmpmeta>",
        ));
        hostile.extend(segment(0xED, b"Photoshop 3.0\0IPTC byline"));
        hostile.extend(segment(0xE2, b"ICC_PROFILE\0\x01\x01desc secret"));
        hostile.extend(&jpeg[2..]);
        let clean = sanitize(hostile.to_vec(), &LIMITS).unwrap();
        for needle in [
            &b"<script>"[..],
            b"xmpmeta",
            b"IPTC",
            b"ICC_PROFILE",
            b"secret",
        ] {
            assert!(
                !clean.bytes.windows(needle.len()).any(|w| w == needle),
                "{needle:?}"
            );
        }
        assert!(clean.bytes.len() <= hostile.len());
        let before = image::load_from_memory(&jpeg).unwrap();
        let after = image::load_from_memory(&clean.bytes).unwrap();
        assert_eq!(before.to_rgb8(), after.to_rgb8());
    }

    /// The GIF amplifier: a large, plain GIF is a few kilobytes, and its
    /// re-encode cost seconds of colour quantizing. Rewritten, it costs its
    /// LZW decode and stays no larger than uploaded; comments, application
    /// data, later frames and bytes after the first frame are gone.
    #[test]
    fn a_rewritten_gif_is_its_first_frame_and_nothing_else() {
        let (w, h) = (1_500u16, 1_500u16);
        let mut upload = Vec::new();
        {
            let mut encoder =
                gif::Encoder::new(&mut upload, w, h, &[0, 0, 0, 255, 255, 255]).unwrap();
            encoder
                .write_extension(gif::ExtensionData::Repetitions(gif::Repeat::Infinite))
                .unwrap();
            encoder
                .write_raw_extension(gif::AnyExtension(0xFE), &[b"<script>alert(1)</script>"])
                .unwrap();
            let pixels = vec![0u8; usize::from(w) * usize::from(h)];
            encoder
                .write_frame(&gif::Frame::from_indexed_pixels(w, h, pixels, None))
                .unwrap();
            let white = vec![1u8; usize::from(w) * usize::from(h)];
            encoder
                .write_frame(&gif::Frame::from_indexed_pixels(w, h, white, None))
                .unwrap();
        }
        upload.extend(b"PK\x03\x04zipped");
        assert!(upload.len() < 64 * 1024, "{}", upload.len());
        let clean = sanitize(upload.to_vec(), &ImageLimits::default()).unwrap();
        assert!(clean.bytes.len() <= upload.len());
        for needle in [&b"<script>"[..], b"NETSCAPE", b"PK\x03\x04"] {
            assert!(
                !clean.bytes.windows(needle.len()).any(|w| w == needle),
                "{needle:?}"
            );
        }
        let mut decoder = gif::DecodeOptions::new()
            .read_info(Cursor::new(&clean.bytes))
            .unwrap();
        let first = decoder.read_next_frame().unwrap().unwrap();
        assert!(
            first.buffer.iter().all(|&p| p == 0),
            "the first frame, black"
        );
        assert!(
            decoder.read_next_frame().unwrap().is_none(),
            "one frame only"
        );
    }

    /// The zlib stream spread over several IDAT chunks, with bytes hidden
    /// after its end inside the chunk it ends in and whole IDAT chunks after
    /// that: one IDAT holding exactly the stream comes out, and the same
    /// pixels.
    #[test]
    fn a_zlib_stream_across_idat_chunks_is_kept_to_its_last_byte() {
        let png = encoded(ImageFormat::Png);
        let chunks = png_chunks(&png);
        let stream: Vec<u8> = chunks
            .iter()
            .filter(|(k, _)| k == b"IDAT")
            .flat_map(|(_, d)| d.clone())
            .collect();
        let mut split = vec![chunks[0].clone()];
        let third = stream.len() / 3;
        split.push((*b"IDAT", stream[..third].to_vec()));
        split.push((*b"IDAT", Vec::new()));
        let mut last = stream[third..].to_vec();
        last.extend(b"PK\x03\x04hidden");
        split.push((*b"IDAT", last));
        split.push((*b"IDAT", b"<html>more</html>".to_vec()));
        split.push((*b"IEND", Vec::new()));
        let hostile = png_from(&split, b"");
        let clean = sanitize(hostile, &LIMITS).unwrap();
        let out = png_chunks(&clean.bytes);
        let idat: Vec<&Vec<u8>> = out
            .iter()
            .filter(|(k, _)| k == b"IDAT")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(idat, vec![&stream], "one IDAT, exactly the stream");
        let before = image::load_from_memory(&png).unwrap();
        let after = image::load_from_memory(&clean.bytes).unwrap();
        assert_eq!(before.to_rgba8(), after.to_rgba8());
    }

    /// A PNG made by hand: IHDR as given, image data of `rows` (each row
    /// its filter byte and bytes) deflated, then `after` inside the IDAT
    /// past the zlib stream, split over `idat_chunks` chunks.
    fn hand_png(ihdr: [u8; 13], data: &[u8], after: &[u8], idat_chunks: usize) -> Vec<u8> {
        let mut stream = miniz_oxide::deflate::compress_to_vec_zlib(data, 6);
        stream.extend(after);
        let mut chunks = vec![(*b"IHDR", ihdr.to_vec())];
        let size = stream.len().div_ceil(idat_chunks);
        chunks.extend(stream.chunks(size).map(|c| (*b"IDAT", c.to_vec())));
        chunks.push((*b"IEND", Vec::new()));
        png_from(&chunks, b"")
    }

    fn ihdr(width: u32, height: u32, depth: u8, colour: u8, interlace: u8) -> [u8; 13] {
        let mut out = [0u8; 13];
        out[..4].copy_from_slice(&width.to_be_bytes());
        out[4..8].copy_from_slice(&height.to_be_bytes());
        out[8..].copy_from_slice(&[depth, colour, 0, 0, interlace]);
        out
    }

    /// Rows for an image of `width` x `height` at `bits` per pixel,
    /// Adam7's passes when `interlaced`, every row filter `filter`.
    fn rows_for(width: u32, height: u32, bits: u32, interlaced: bool, filter: u8) -> Vec<u8> {
        let passes: Vec<(u32, u32)> = if interlaced {
            [
                (0, 0, 8, 8),
                (4, 0, 8, 8),
                (0, 4, 4, 8),
                (2, 0, 4, 4),
                (0, 2, 2, 4),
                (1, 0, 2, 2),
                (0, 1, 1, 2),
            ]
            .iter()
            .map(|&(x0, y0, dx, dy): &(u32, u32, u32, u32)| {
                (
                    width.saturating_sub(x0).div_ceil(dx),
                    height.saturating_sub(y0).div_ceil(dy),
                )
            })
            .filter(|&(w, h)| w > 0 && h > 0)
            .collect()
        } else {
            vec![(width, height)]
        };
        let mut data = Vec::new();
        for (w, h) in passes {
            for y in 0..h {
                data.push(filter);
                data.extend((0..(w * bits).div_ceil(8)).map(|x| (x * 31 + y * 7) as u8));
            }
        }
        data
    }

    /// Interlaced, sub-byte and 16-bit PNGs, including sizes where some of
    /// Adam7's passes are empty, are proved and kept: the rows the header
    /// declares are exactly the rows the png crate decodes.
    #[test]
    fn interlaced_and_unusual_depths_are_proved_row_by_row() {
        for (width, height, depth, colour, samples) in [
            (1, 1, 8, 2, 3),
            (3, 2, 8, 6, 4),
            (13, 7, 1, 0, 1),
            (33, 17, 16, 6, 4),
            (5, 9, 4, 0, 1),
            (64, 1, 2, 0, 1),
        ] {
            for interlaced in [false, true] {
                let data = rows_for(width, height, depth * samples, interlaced, 0);
                let png = hand_png(
                    ihdr(width, height, depth as u8, colour, u8::from(interlaced)),
                    &data,
                    b"",
                    2,
                );
                let reference = image::load_from_memory(&png).unwrap_or_else(|e| {
                    panic!("{width}x{height} depth {depth} interlaced {interlaced}: {e}")
                });
                let clean = sanitize(png.clone(), &LIMITS).unwrap_or_else(|e| {
                    panic!("{width}x{height} depth {depth} interlaced {interlaced}: {e:?}")
                });
                let after = image::load_from_memory(&clean.bytes).unwrap();
                assert_eq!(reference.into_bytes(), after.into_bytes());
            }
        }
    }

    /// A row with a filter type the format does not define, image data
    /// that stops a row short, or that holds more than its rows (a hiding
    /// place inside the stream itself), is CORRUPT_IMAGE.
    #[test]
    fn image_data_that_is_not_exactly_its_rows_is_refused() {
        let header = ihdr(9, 5, 8, 2, 0);
        let good = rows_for(9, 5, 24, false, 1);
        let mut bad_filter = good.clone();
        bad_filter[28 * 2] = 5;
        let short = &good[..good.len() - 1];
        let mut long = good.clone();
        long.extend(b"PK\x03\x04 inside the stream");
        for data in [&bad_filter[..], short, &long[..]] {
            let err = sanitize(hand_png(header, data, b"", 1), &LIMITS).unwrap_err();
            assert_eq!(err.code(), ErrorCode::CorruptImage);
        }
        assert!(sanitize(hand_png(header, &good, b"", 3), &LIMITS).is_ok());
    }

    /// Bytes after the zlib stream that repeat its checksum make its end
    /// ambiguous to the fast inflater; the end found is still exact.
    #[test]
    fn a_tail_that_repeats_the_checksum_does_not_survive() {
        let data = rows_for(20, 20, 24, false, 0);
        let stream = miniz_oxide::deflate::compress_to_vec_zlib(&data, 6);
        let checksum = stream[stream.len() - 4..].to_vec();
        for tail in [
            checksum.repeat(2),
            [&checksum[1..], &checksum[..]].concat(),
            b"x".to_vec(),
        ] {
            let png = hand_png(ihdr(20, 20, 8, 2, 0), &data, &tail, 2);
            let clean = sanitize(png, &LIMITS).unwrap();
            let idat: Vec<u8> = png_chunks(&clean.bytes)
                .into_iter()
                .filter(|(k, _)| k == b"IDAT")
                .flat_map(|(_, d)| d)
                .collect();
            assert_eq!(idat, stream, "tail {tail:?}");
        }
    }

    /// A chunk whose CRC does not match its bytes is CORRUPT_IMAGE, IDAT
    /// included (the png crate no longer reads the image data itself).
    #[test]
    fn a_wrong_crc_is_refused() {
        let png = hand_png(ihdr(4, 4, 8, 2, 0), &rows_for(4, 4, 24, false, 0), b"", 1);
        let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
        let len = u32::from_be_bytes(png[idat - 4..idat].try_into().unwrap()) as usize;
        let mut broken = png.clone();
        broken[idat + 4 + len] ^= 1;
        let err = sanitize(broken, &LIMITS).unwrap_err();
        assert_eq!(err.code(), ErrorCode::CorruptImage);
    }

    /// A large image is rewritten in the upload's own buffer, not a copy of
    /// it: the stored bytes are the allocation the upload arrived in.
    #[test]
    fn a_large_image_is_rewritten_in_its_own_buffer() {
        let (w, h) = (600u32, 400u32);
        let mut state = 0x2545_f491_u32;
        let noise = RgbImage::from_fn(w, h, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
        });
        let mut png = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(noise)
            .write_to(&mut png, Codec::Png)
            .unwrap();
        let mut chunks = png_chunks(png.get_ref());
        chunks.insert(1, (*b"tEXt", b"Comment\0dropped".to_vec()));
        let upload = png_from(&chunks, b"tail");
        let (address, len) = (upload.as_ptr().addr(), upload.len());
        let clean = sanitize(upload, &ImageLimits::default()).unwrap();
        assert_eq!(clean.bytes.as_ptr().addr(), address, "laid out in place");
        assert!(clean.bytes.len() < len);
        assert!(!clean.bytes.windows(7).any(|w| w == b"dropped"));
        let decoded = image::load_from_memory(&clean.bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (w, h));
    }

    /// An extended WebP with an ICC profile, EXIF and XMP, and bytes past
    /// its RIFF size, comes out as VP8X (flags cleared) and its image chunk.
    #[test]
    fn a_rewritten_webp_keeps_only_the_image() {
        let webp = encoded(ImageFormat::WebP);
        assert_eq!(
            &webp[12..16],
            b"VP8L",
            "the encoder writes a simple lossless WebP"
        );
        let image_chunk = &webp[12..];
        let chunk = |kind: &[u8; 4], data: &[u8]| {
            let mut out = kind.to_vec();
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(data);
            if data.len() % 2 == 1 {
                out.push(0);
            }
            out
        };
        let (w, h) = (64u32 - 1, 48u32 - 1);
        let mut vp8x = vec![0x20 | 0x08 | 0x04, 0, 0, 0];
        vp8x.extend(&w.to_le_bytes()[..3]);
        vp8x.extend(&h.to_le_bytes()[..3]);
        let mut body = b"WEBP".to_vec();
        body.extend(chunk(b"VP8X", &vp8x));
        body.extend(chunk(b"ICCP", b"desc secret profile"));
        body.extend(image_chunk);
        body.extend(chunk(b"EXIF", b"MM\0*GPS"));
        body.extend(chunk(b"XMP ", b"<x:xmpmeta>creator</x:xmpmeta>"));
        let mut hostile = b"RIFF".to_vec();
        hostile.extend((body.len() as u32).to_le_bytes());
        hostile.extend(body);
        hostile.extend(b"<script>after the RIFF</script>");
        let clean = sanitize(hostile.to_vec(), &LIMITS).unwrap();
        for needle in [
            &b"secret"[..],
            b"GPS",
            b"xmpmeta",
            b"<script>",
            b"ICCP",
            b"EXIF",
        ] {
            assert!(
                !clean.bytes.windows(needle.len()).any(|w| w == needle),
                "{needle:?}"
            );
        }
        assert_eq!(&clean.bytes[12..16], b"VP8X");
        assert_eq!(
            clean.bytes[20] & (0x20 | 0x08 | 0x04),
            0,
            "the flags of what was dropped"
        );
        assert_eq!(
            u32::from_le_bytes(clean.bytes[4..8].try_into().unwrap()) as usize,
            clean.bytes.len() - 8
        );
        let before = image::load_from_memory(&webp).unwrap();
        let after = image::load_from_memory(&clean.bytes).unwrap();
        assert_eq!(before.to_rgba8(), after.to_rgba8());
    }

    #[test]
    fn a_sanitized_image_never_grows() {
        let limits = ImageLimits {
            max_bytes: 1_000,
            max_pixels: 1,
        };
        assert!(refuse_growth(500, 500, &limits).is_ok());
        assert_eq!(
            refuse_growth(500, 501, &limits).unwrap_err().code(),
            ErrorCode::SanitizedTooLarge
        );
        assert_eq!(
            refuse_growth(2_000, 1_001, &limits).unwrap_err().code(),
            ErrorCode::SanitizedTooLarge
        );
    }

    #[test]
    fn exif_and_appended_payloads_do_not_survive() {
        let jpeg = encoded(ImageFormat::Jpeg);
        // A valid EXIF APP1 segment with a GPS IFD (GPSLatitudeRef = "N"),
        // right after the SOI marker.
        let tiff: Vec<u8> = [
            &b"II*\0"[..],
            &8u32.to_le_bytes(),
            &1u16.to_le_bytes(),
            &0x8825u16.to_le_bytes(),
            &4u16.to_le_bytes(),
            &1u32.to_le_bytes(),
            &26u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &1u16.to_le_bytes(),
            &1u16.to_le_bytes(),
            &2u16.to_le_bytes(),
            &2u32.to_le_bytes(),
            b"N\0\0\0",
            &0u32.to_le_bytes(),
        ]
        .concat();
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend(&tiff);
        let mut with_exif = jpeg[..2].to_vec();
        with_exif.extend([0xFF, 0xE1]);
        with_exif.extend(u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
        with_exif.extend(&app1);
        with_exif.extend(&jpeg[2..]);
        with_exif.extend(b"<script>alert(1)</script>PK\x03\x04zipped");
        let clean = sanitize(with_exif.to_vec(), &LIMITS).unwrap();
        let contains =
            |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
        assert!(contains(&with_exif, b"Exif\0\0"));
        assert!(!contains(&clean.bytes, b"Exif"));
        assert!(!contains(&clean.bytes, b"<script>"));
        assert!(!contains(&clean.bytes, b"PK\x03\x04"));
        assert!(
            clean.bytes.ends_with(&[0xFF, 0xD9]),
            "ends at the JPEG's end"
        );

        let mut png = encoded(ImageFormat::Png);
        png.extend(b"<script>alert(1)</script>");
        let clean = sanitize(png.to_vec(), &LIMITS).unwrap();
        assert!(!contains(&clean.bytes, b"<script>"));
    }

    #[test]
    fn the_bytes_decide_the_type_not_the_name() {
        let cases: [(&[u8], ErrorCode); 4] = [
            (
                b"just some text, named photo.png",
                ErrorCode::UnsupportedImageType,
            ),
            (
                b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
                ErrorCode::UnsupportedImageType,
            ),
            (b"%PDF-1.7", ErrorCode::UnsupportedImageType),
            // An empty upload never gets here: the library refuses it first.
            (b"", ErrorCode::UnsupportedImageType),
        ];
        for (bytes, code) in cases {
            assert_eq!(sanitize(bytes.to_vec(), &LIMITS).unwrap_err().code(), code);
        }
    }

    #[test]
    fn truncated_and_bomb_images_are_refused_before_decoding() {
        let png = encoded(ImageFormat::Png);
        let truncated = &png[..png.len() / 2];
        assert_eq!(
            sanitize(truncated.to_vec(), &LIMITS).unwrap_err().code(),
            ErrorCode::CorruptImage
        );
        let bomb = test_support::png_header(60_000, 60_000);
        let err = sanitize(bomb.to_vec(), &ImageLimits::default()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ImageTooManyPixels);
        assert!(err.message().contains("60000 x 60000"), "{}", err.message());
    }

    #[test]
    fn the_buffer_refuses_the_chunk_that_passes_the_cap() {
        let mut buffer = UploadBuffer::new(&ImageLimits {
            max_bytes: 10,
            max_pixels: 1,
        });
        buffer.push(b"12345").unwrap();
        buffer.push(b"67890").unwrap();
        assert_eq!(
            buffer.push(b"x").unwrap_err().code(),
            ErrorCode::ImageTooLarge
        );
        assert_eq!(buffer.len(), 10);
        assert_eq!(buffer.into_bytes(), b"1234567890");
    }

    #[test]
    fn a_buffer_grows_by_doubling_but_never_past_the_cap() {
        let limits = ImageLimits {
            max_bytes: 3000,
            max_pixels: 1,
        };
        let mut buffer = UploadBuffer::new(&limits);
        buffer.push([1u8; 1000]).unwrap();
        buffer.push([2u8; 1000]).unwrap();
        buffer.push([3u8; 1000]).unwrap();
        let bytes = buffer.into_bytes();
        assert_eq!(bytes.len(), 3000);
        assert_eq!(bytes.capacity(), 3000, "grown to the cap, not past it");
        assert!(bytes[..1000].iter().all(|&b| b == 1) && bytes[2000..].iter().all(|&b| b == 3));
    }

    #[test]
    fn a_pooled_buffer_comes_back_when_its_bytes_are_dropped() {
        let limits = ImageLimits::default();
        let pool = BufferPool::new(1 << 20);
        let mut first = UploadBuffer::pooled(&limits, &pool);
        first.push(vec![7u8; 100_000]).unwrap();
        let (bytes, back_to) = first.into_parts();
        let at = bytes.as_ptr();
        assert_eq!(pool.idle_bytes(), 0, "taken while in use");
        let sent = back_to.unwrap().recycled(bytes);
        let clone = sent.clone();
        drop(sent);
        assert_eq!(pool.idle_bytes(), 0, "a clone still holds it");
        assert_eq!(&clone[..3], &[7, 7, 7]);
        drop(clone);
        assert!(
            pool.idle_bytes() >= 100_000,
            "given back once the last clone went"
        );
        let mut second = UploadBuffer::pooled(&limits, &pool);
        assert_eq!(pool.idle_bytes(), 0);
        second.push(b"new").unwrap();
        assert_eq!(second.len(), 3, "given back empty");
        // A refused upload's buffer goes back too, and it is the same
        // allocation: its pages are not faulted in again.
        drop(second);
        assert_eq!(pool.lent_bytes(), 0);
        let (again, _loan) = pool.lend();
        assert_eq!(again.as_ptr(), at);
    }

    #[test]
    fn a_pool_holds_no_more_than_its_bytes_idle_and_lent_together() {
        let pool = BufferPool::new(250_000);
        let fresh: Vec<_> = (0..3).map(|_| pool.lend()).collect();
        for (buffer, loan) in fresh {
            assert_eq!(buffer.capacity(), 0, "nothing idle yet");
            loan.give_back(Vec::with_capacity(100_000));
        }
        assert_eq!(pool.idle_bytes(), 200_000, "the third would pass the bound");
        let (a, loan_a) = pool.lend();
        let (b, loan_b) = pool.lend();
        assert_eq!((pool.idle_bytes(), pool.lent_bytes()), (0, 200_000));
        // Lent buffers keep their pages: they count against the bound, so a
        // buffer given back meanwhile finds no room.
        let (_, loan_c) = pool.lend();
        loan_c.give_back(Vec::with_capacity(100_000));
        assert_eq!(pool.idle_bytes(), 0);
        // A buffer its holder freed settles its loan.
        drop(a);
        drop(loan_a);
        assert_eq!(pool.lent_bytes(), 100_000);
        loan_b.give_back(b);
        assert_eq!((pool.idle_bytes(), pool.lent_bytes()), (100_000, 0));
        let none = BufferPool::new(0);
        let (_, loan) = none.lend();
        loan.give_back(Vec::with_capacity(10));
        assert_eq!(none.idle_bytes(), 0);
    }
}
