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
//!
//! JPEG keeps the frame (SOFn), the tables (DQT, DHT, DAC, DNL, DRI), every scan
//! (SOS and its entropy-coded data, restart markers included), a JFIF APP0
//! and an Adobe APP14 (it says how the colours were transformed, so the
//! pixels decode the same). It drops every other APPn (EXIF and its GPS and
//! orientation, XMP, IPTC, ICC profiles), COM, and anything after EOI. The
//! orientation went with EXIF before too: the decoder never applied it.
//!
//! GIF keeps its header, screen descriptor and colour tables, and its first
//! frame with that frame's graphic control (transparency): the decode that
//! proves the data well-formed reads the first frame only, so only it is
//! kept, as the re-encode did before. Comments, plain text, application
//! extensions (XMP, looping: there is one frame), later frames and anything
//! after the first frame are dropped, and a new trailer ends the file.
//!
//! A still WebP keeps VP8X (its ICC, EXIF and XMP flags cleared), ALPH and
//! the image chunk (VP8 or VP8L), with a RIFF size made anew; ICCP, EXIF,
//! XMP, unknown chunks and anything past the image chunk are dropped. An
//! animated WebP is not rewritten: the decode proved its first frame only,
//! so those pixels are what is kept, re-encoded.

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

/// JPEG marker segments kept, besides SOI, the scans and EOI.
fn jpeg_kept(marker: u8, data: &[u8]) -> bool {
    match marker {
        // SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC) are frames; those
        // three, DQT, DNL and DRI are tables.
        0xC0..=0xCF | 0xDB | 0xDC | 0xDD => marker != 0xC8,
        0xE0 => data.starts_with(b"JFIF\0"),
        0xEE => data.starts_with(b"Adobe"),
        _ => false,
    }
}

/// The JPEG in `bytes`, rebuilt from the allow-list.
pub(crate) fn rewrite_jpeg(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut rest = bytes
        .strip_prefix(&[0xFF, 0xD8])
        .ok_or_else(|| corrupt("no JPEG start"))?;
    let mut out = vec![0xFF, 0xD8];
    let mut scans = 0;
    loop {
        // Fill bytes (0xFF repeated) may precede a marker.
        let at = rest
            .iter()
            .position(|&b| b != 0xFF)
            .ok_or_else(|| corrupt("the JPEG ends before EOI"))?;
        if at == 0 {
            return Err(corrupt("a JPEG segment does not start with a marker"));
        }
        let marker = rest[at];
        rest = &rest[at + 1..];
        match marker {
            0xD9 => break,
            0xD0..=0xD7 | 0x01 => continue, // no length
            _ => {}
        }
        if rest.len() < 2 {
            return Err(corrupt("a JPEG segment is cut short"));
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if len < 2 {
            return Err(corrupt("a JPEG segment has a bad length"));
        }
        let segment = rest
            .get(..len)
            .ok_or_else(|| corrupt("a JPEG segment runs past the end"))?;
        rest = &rest[len..];
        if marker == 0xDA {
            // The scan header, then its entropy-coded data up to the next
            // marker that is neither a stuffed 0xFF00 nor a restart.
            let mut end = 0;
            while end + 1 < rest.len() {
                if rest[end] == 0xFF
                    && rest[end + 1] != 0x00
                    && !(0xD0..=0xD7).contains(&rest[end + 1])
                {
                    break;
                }
                end += 1;
            }
            if end + 1 >= rest.len() {
                return Err(corrupt("a JPEG scan runs past the end"));
            }
            out.extend([0xFF, 0xDA]);
            out.extend(segment);
            out.extend(&rest[..end]);
            rest = &rest[end..];
            scans += 1;
        } else if jpeg_kept(marker, &segment[2..]) {
            out.extend([0xFF, marker]);
            out.extend(segment);
        }
    }
    if scans == 0 {
        return Err(corrupt("the JPEG has no scan"));
    }
    out.extend([0xFF, 0xD9]);
    Ok(out)
}

/// The GIF in `bytes`, rebuilt from the allow-list: its first frame only.
pub(crate) fn rewrite_gif(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let header = bytes
        .get(..13)
        .filter(|h| h.starts_with(b"GIF87a") || h.starts_with(b"GIF89a"))
        .ok_or_else(|| corrupt("no GIF header"))?;
    let mut out = header.to_vec();
    let mut at = 13;
    // The global colour table, when the screen descriptor says there is one.
    let flags = header[10];
    if flags & 0x80 != 0 {
        let table = 3 * (1usize << ((flags & 0x07) + 1));
        out.extend(
            bytes
                .get(at..at + table)
                .ok_or_else(|| corrupt("the GIF's colour table is cut short"))?,
        );
        at += table;
    }
    // Data sub-blocks from `at`: their length, terminator included.
    let sub_blocks = |mut at: usize| -> Result<usize, Error> {
        let start = at;
        loop {
            let len = usize::from(
                *bytes
                    .get(at)
                    .ok_or_else(|| corrupt("a GIF block runs past the end"))?,
            );
            at += 1 + len;
            if len == 0 {
                return Ok(at - start);
            }
            if at > bytes.len() {
                return Err(corrupt("a GIF block runs past the end"));
            }
        }
    };
    let mut control: Option<&[u8]> = None;
    loop {
        match bytes.get(at) {
            Some(0x21) => {
                let label = *bytes
                    .get(at + 1)
                    .ok_or_else(|| corrupt("a GIF extension is cut short"))?;
                let len = 2 + sub_blocks(at + 2)?;
                // Only the graphic control of the frame kept (transparency,
                // disposal); comments, plain text and application data go.
                if label == 0xF9 {
                    control = Some(&bytes[at..at + len]);
                }
                at += len;
            }
            Some(0x2C) => {
                let descriptor = bytes
                    .get(at..at + 10)
                    .ok_or_else(|| corrupt("a GIF image descriptor is cut short"))?;
                let mut end = at + 10;
                let local = descriptor[9];
                if local & 0x80 != 0 {
                    end += 3 * (1usize << ((local & 0x07) + 1));
                }
                // The LZW minimum code size, then the image data.
                end += 1;
                if end > bytes.len() {
                    return Err(corrupt("a GIF image is cut short"));
                }
                end += sub_blocks(end)?;
                if let Some(control) = control {
                    out.extend(control);
                }
                out.extend(&bytes[at..end]);
                out.push(0x3B);
                return Ok(out);
            }
            _ => return Err(corrupt("the GIF has no image")),
        }
    }
}

/// VP8X flags of the parts a rewritten WebP no longer has: ICC profile,
/// EXIF, XMP.
const VP8X_DROPPED: u8 = 0x20 | 0x08 | 0x04;
/// VP8X's animation flag.
const VP8X_ANIMATED: u8 = 0x02;

/// The WebP in `bytes`, rebuilt from the allow-list; `None` for an
/// animation (the decode proved its first frame only, so the caller keeps
/// just those pixels its own way).
pub(crate) fn rewrite_webp(bytes: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return Err(corrupt("no WebP header"));
    }
    let declared = usize::try_from(u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]))
        .map_err(|_| corrupt("a WebP size is too large"))?;
    // Chunks as the RIFF size declares them; anything after is dropped.
    let body = bytes
        .get(12..(8 + declared).min(bytes.len()))
        .ok_or_else(|| corrupt("the WebP is cut short"))?;
    let mut rest = body;
    let mut kept = Vec::new();
    let mut has_image = false;
    while rest.len() >= 8 {
        let kind: [u8; 4] = [rest[0], rest[1], rest[2], rest[3]];
        let len = usize::try_from(u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]))
            .map_err(|_| corrupt("a WebP chunk is too large"))?;
        let data = rest
            .get(8..8 + len)
            .ok_or_else(|| corrupt("a WebP chunk runs past the end"))?;
        rest = rest.get(8 + len + (len & 1)..).unwrap_or(&[]);
        match &kind {
            b"VP8X" => {
                let mut data = data.to_vec();
                let flags = *data
                    .first()
                    .ok_or_else(|| corrupt("a VP8X chunk is empty"))?;
                if flags & VP8X_ANIMATED != 0 {
                    return Ok(None);
                }
                data[0] = flags & !VP8X_DROPPED;
                kept.push((kind, data));
            }
            b"ALPH" => kept.push((kind, data.to_vec())),
            b"VP8 " | b"VP8L" => {
                kept.push((kind, data.to_vec()));
                has_image = true;
                break; // the image is the last chunk a still WebP needs
            }
            b"ANIM" | b"ANMF" => return Ok(None),
            _ => {} // ICCP, EXIF, XMP, unknown: dropped
        }
    }
    if !has_image {
        return Err(corrupt("the WebP has no image chunk"));
    }
    let mut out = b"RIFF\0\0\0\0WEBP".to_vec();
    for (kind, data) in kept {
        out.extend(kind);
        let len = u32::try_from(data.len()).map_err(|_| corrupt("a WebP chunk is too large"))?;
        out.extend(len.to_le_bytes());
        out.extend(&data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
    }
    let size = u32::try_from(out.len() - 8).map_err(|_| corrupt("the WebP is too large"))?;
    out[4..8].copy_from_slice(&size.to_le_bytes());
    Ok(Some(out))
}
