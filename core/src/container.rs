//! Rewriting an image's container from an allow-list, after the decode has
//! proved its pixels well-formed: the original compressed data is kept (no
//! re-encoding, so no amplification and no encoder's CPU), and everything
//! the allow-list does not name is gone: text, time, EXIF and private
//! chunks, and whatever follows the image's end.
//!
//! PNG keeps IHDR, PLTE, tRNS, the colour chunks a viewer needs to show the
//! pixels right (gAMA, cHRM, sRGB, sBIT) and bKGD, then one IDAT holding
//! exactly the zlib stream and IEND. It drops iCCP (an ICC profile can carry
//! free text), pHYs, every text and time chunk, eXIf, APNG's animation
//! chunks (the default image is what is kept), private chunks, anything
//! after the zlib stream's end inside IDAT and anything after IEND.

use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZFlush, MZStatus};

use crate::error::Error;

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Ancillary chunks kept; IHDR, PLTE, IDAT and IEND are handled apart.
const PNG_KEPT: &[&[u8; 4]] = &[b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"bKGD"];

fn corrupt(why: &str) -> Error {
    Error::with_message(
        crate::error::ErrorCode::CorruptImage,
        format!("the image could not be decoded: {why}"),
    )
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) -> Result<(), Error> {
    let len = u32::try_from(data.len()).map_err(|_| corrupt("a chunk is too large"))?;
    out.extend(len.to_be_bytes());
    out.extend(kind);
    out.extend(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend(crc.finalize().to_be_bytes());
    Ok(())
}

/// How many leading bytes of `data` the zlib stream takes, inflated into a
/// small buffer that is thrown away (the decode already made the pixels).
fn zlib_stream_len(data: &[u8]) -> Result<usize, Error> {
    let mut state = InflateState::new_boxed(DataFormat::Zlib);
    let mut sink = vec![0u8; 64 * 1024];
    let mut consumed = 0;
    loop {
        let result = inflate(&mut state, &data[consumed..], &mut sink, MZFlush::None);
        consumed += result.bytes_consumed;
        match result.status {
            Ok(MZStatus::StreamEnd) => return Ok(consumed),
            Ok(_) if result.bytes_consumed == 0 && result.bytes_written == 0 => {
                return Err(corrupt("the image data ends early"));
            }
            Ok(_) => {}
            Err(_) => return Err(corrupt("the image data is not a zlib stream")),
        }
    }
}

/// The PNG in `bytes`, rebuilt from the allow-list.
pub(crate) fn rewrite_png(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut rest = bytes
        .strip_prefix(SIGNATURE)
        .ok_or_else(|| corrupt("no PNG signature"))?;
    let mut out = SIGNATURE.to_vec();
    let mut idat = Vec::new();
    let mut seen_ihdr = false;
    loop {
        if rest.len() < 12 {
            return Err(corrupt("the PNG ends before IEND"));
        }
        let len = usize::try_from(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]))
            .map_err(|_| corrupt("a chunk is too large"))?;
        let kind: [u8; 4] = [rest[4], rest[5], rest[6], rest[7]];
        let data = rest
            .get(8..8 + len)
            .ok_or_else(|| corrupt("a chunk runs past the end"))?;
        rest = rest
            .get(12 + len..)
            .ok_or_else(|| corrupt("a chunk runs past the end"))?;
        match &kind {
            b"IHDR" => {
                chunk(&mut out, &kind, data)?;
                seen_ihdr = true;
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            b"PLTE" => chunk(&mut out, &kind, data)?,
            kept if PNG_KEPT.contains(&kept) && idat.is_empty() => chunk(&mut out, &kind, data)?,
            _ => {} // dropped
        }
    }
    if !seen_ihdr || idat.is_empty() {
        return Err(corrupt("no IHDR or no image data"));
    }
    let stream = zlib_stream_len(&idat)?;
    chunk(&mut out, b"IDAT", &idat[..stream])?;
    chunk(&mut out, b"IEND", &[])?;
    Ok(out)
}
