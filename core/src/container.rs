//! Rewriting an image's container from an allow-list, after the decode has
//! proved its pixels well-formed: the original compressed data is kept (no
//! re-encoding, so no amplification and no encoder's CPU), and everything
//! the allow-list does not name is gone: text, time, EXIF and private
//! chunks, and whatever follows the image's end. A PNG's image data is
//! proved here, in the same pass that finds its end (`prove_png_data`).
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

use std::ops::Range;

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

/// Kept parts shorter than this are copied into the plan rather than
/// referred to.
const MIN_KEPT_SPAN: usize = 4096;

/// One piece of a rewritten image: a span of the upload kept as it is, or
/// a few bytes made anew (a length, a checksum, a trailer).
#[derive(Debug)]
enum Piece {
    Kept(Range<usize>),
    New(Vec<u8>),
}

/// A rewrite, planned while the upload is only read and then laid out in
/// the upload's own buffer: kept spans only ever move towards its start, so
/// an 8 MiB image is rewritten without a second 8 MiB allocation.
#[derive(Debug)]
pub(crate) struct Rewrite {
    base: usize,
    pieces: Vec<Piece>,
    len: usize,
}

impl Rewrite {
    fn of(bytes: &[u8]) -> Self {
        Self {
            base: bytes.as_ptr().addr(),
            pieces: Vec::new(),
            len: 0,
        }
    }

    /// Keeps `part`, a slice of the bytes the rewrite was made `of`. Short
    /// parts are copied into the plan instead, so a flood of tiny chunks
    /// costs no more than the bytes themselves.
    fn keep(&mut self, part: &[u8]) {
        if part.len() < MIN_KEPT_SPAN {
            self.add(part);
            return;
        }
        let start = part.as_ptr().addr() - self.base;
        self.len += part.len();
        match self.pieces.last_mut() {
            Some(Piece::Kept(last)) if last.end == start => last.end += part.len(),
            _ => self.pieces.push(Piece::Kept(start..start + part.len())),
        }
    }

    fn add(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        match self.pieces.last_mut() {
            Some(Piece::New(last)) => last.extend_from_slice(bytes),
            _ => self.pieces.push(Piece::New(bytes.to_vec())),
        }
    }

    /// A PNG chunk around `data` (slices of the upload, in order).
    fn chunk(&mut self, kind: &[u8; 4], data: &[&[u8]]) -> Result<(), Error> {
        let len: usize = data.iter().map(|d| d.len()).sum();
        let len = u32::try_from(len).map_err(|_| corrupt("a chunk is too large"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        let mut header = len.to_be_bytes().to_vec();
        header.extend(kind);
        self.add(&header);
        for part in data {
            crc.update(part);
            self.keep(part);
        }
        self.add(&crc.finalize().to_be_bytes());
        Ok(())
    }

    /// The rewritten image, laid out in `buffer` (the bytes the rewrite was
    /// planned `of`), or in a new buffer when a made-anew piece would land
    /// on bytes still to be moved.
    pub(crate) fn apply(self, mut buffer: Vec<u8>) -> Vec<u8> {
        debug_assert_eq!(buffer.as_ptr().addr(), self.base);
        if !self.fits_in_place(buffer.len()) {
            let mut out = Vec::with_capacity(self.len);
            for piece in &self.pieces {
                match piece {
                    Piece::Kept(range) => out.extend_from_slice(&buffer[range.clone()]),
                    Piece::New(bytes) => out.extend_from_slice(bytes),
                }
            }
            return out;
        }
        let mut at = 0;
        for piece in &self.pieces {
            match piece {
                Piece::Kept(range) => {
                    if range.start != at {
                        buffer.copy_within(range.clone(), at);
                    }
                    at += range.len();
                }
                Piece::New(bytes) => {
                    buffer[at..at + bytes.len()].copy_from_slice(bytes);
                    at += bytes.len();
                }
            }
        }
        buffer.truncate(at);
        buffer
    }

    /// Whether every piece lands at or before where it is read from, and
    /// every made-anew piece before the next kept span starts.
    fn fits_in_place(&self, len: usize) -> bool {
        let mut at = 0;
        // The next kept span's start, found once per span: linear in pieces.
        let mut next = 0;
        for (i, piece) in self.pieces.iter().enumerate() {
            match piece {
                Piece::Kept(range) if range.start < at => return false,
                Piece::Kept(range) => at += range.len(),
                Piece::New(bytes) => {
                    next = next.max(i + 1);
                    while next < self.pieces.len() && matches!(self.pieces[next], Piece::New(_)) {
                        next += 1;
                    }
                    let limit = match self.pieces.get(next) {
                        Some(Piece::Kept(range)) => range.start,
                        _ => len,
                    };
                    at += bytes.len();
                    if at > limit {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// The rows a PNG's image data must inflate to, as its header declares
/// them: for each pass (one, or Adam7's seven), how many rows and how many
/// bytes each, its filter-type byte included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PngRows {
    passes: Vec<(u64, usize)>,
}

impl PngRows {
    /// The rows of a `width` x `height` image whose rows of `w` pixels take
    /// `row_len(w)` bytes (filter byte included), Adam7-interlaced or not.
    pub(crate) fn new(
        width: u32,
        height: u32,
        interlaced: bool,
        row_len: impl Fn(u32) -> usize,
    ) -> Self {
        // Adam7's passes: first column and row, then the step between them.
        const ADAM7: [(u32, u32, u32, u32); 7] = [
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        ];
        let passes = if interlaced {
            ADAM7
                .iter()
                .filter_map(|&(x0, y0, dx, dy)| {
                    let w = width.saturating_sub(x0).div_ceil(dx);
                    let h = height.saturating_sub(y0).div_ceil(dy);
                    // An empty pass has no rows, not even filter bytes.
                    (w > 0 && h > 0).then(|| (u64::from(h), row_len(w)))
                })
                .collect()
        } else {
            vec![(u64::from(height), row_len(width))]
        };
        Self { passes }
    }
}

/// Checks inflated image data as it comes: every row starts with a filter
/// type the format defines (0 to 4), and there are exactly the rows the
/// header declares, no fewer and no more (bytes past the last row would
/// be a hiding place inside the compressed stream itself).
struct RowCheck<'a> {
    passes: std::slice::Iter<'a, (u64, usize)>,
    rows_left: u64,
    row_len: usize,
    /// Bytes to the next row's filter byte.
    to_next_row: usize,
}

impl<'a> RowCheck<'a> {
    fn new(rows: &'a PngRows) -> Self {
        let mut check = Self {
            passes: rows.passes.iter(),
            rows_left: 0,
            row_len: 0,
            to_next_row: 0,
        };
        check.next_pass();
        check
    }

    fn next_pass(&mut self) {
        if let Some(&(rows, len)) = self.passes.next() {
            (self.rows_left, self.row_len) = (rows, len);
        }
    }

    fn done(&self) -> bool {
        self.rows_left == 0 && self.to_next_row == 0 && self.passes.as_slice().is_empty()
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), Error> {
        loop {
            if self.to_next_row >= data.len() {
                self.to_next_row -= data.len();
                return Ok(());
            }
            data = &data[self.to_next_row..];
            if self.rows_left == 0 {
                self.next_pass();
                if self.rows_left == 0 {
                    return Err(corrupt("the image data holds more than its rows"));
                }
            }
            if data[0] > 4 {
                return Err(corrupt("a row has an unknown filter type"));
            }
            self.rows_left -= 1;
            self.to_next_row = self.row_len;
        }
    }
}

/// Inflated output is written here; back-references reach 32 KiB behind.
const WINDOW: usize = 32 * 1024;
const INFLATE_BUFFER: usize = WINDOW + 256 * 1024;

/// The PNG's proof and the end of its zlib stream, in one pass: the image
/// data laid across `parts` (the IDAT chunks' data, in order) is inflated
/// (fdeflate, the png crate's own inflater, checking the Adler-32) into a
/// small rolling buffer, and every row is checked against the header. The
/// answer is the part the stream ends in and how many of its bytes it takes.
fn prove_png_data(parts: &[&[u8]], rows: &PngRows) -> Result<(usize, usize), Error> {
    let mut inflater = fdeflate::Decompressor::new();
    let mut out = vec![0u8; INFLATE_BUFFER];
    let mut at_out = 0;
    let mut adler = simd_adler32::Adler32::new();
    let mut check = RowCheck::new(rows);
    let mut consumed_total = 0usize;
    for (i, part) in parts.iter().enumerate() {
        let mut at = 0;
        loop {
            if at_out == out.len() {
                out.copy_within(INFLATE_BUFFER - WINDOW.., 0);
                at_out = WINDOW;
            }
            let last = i + 1 == parts.len();
            let (consumed, produced) = inflater
                .read(&part[at..], &mut out, at_out, last)
                .map_err(|_| corrupt("the image data is not a zlib stream"))?;
            let inflated = &out[at_out..at_out + produced];
            check.feed(inflated)?;
            adler.write(inflated);
            at += consumed;
            at_out += produced;
            if inflater.is_done() {
                if !check.done() {
                    return Err(corrupt("the image data ends early"));
                }
                return exact_end(parts, i, consumed_total + at, adler.finish());
            }
            if consumed == 0 && produced == 0 {
                if at == part.len() {
                    break; // the next part, with the output buffer just full
                }
                return Err(corrupt("the image data ends early"));
            }
            if at == part.len() && at_out < out.len() {
                break;
            }
        }
        consumed_total += part.len();
    }
    Err(corrupt("the image data ends early"))
}

/// fdeflate may read a few bytes past the stream's end into its bit buffer
/// before it says it is done, so `read` (through part `part`) overshoots
/// by at most 8. The stream ends with its Adler-32, big-endian: when exactly
/// one position in that reach is preceded by it, that is the end; when the
/// bytes make it ambiguous (a tail repeating the checksum), miniz_oxide,
/// which reads no further than it needs, finds the end instead.
fn exact_end(
    parts: &[&[u8]],
    part: usize,
    read: usize,
    adler: u32,
) -> Result<(usize, usize), Error> {
    let starts: Vec<usize> = parts
        .iter()
        .scan(0, |start, p| {
            let at = *start;
            *start += p.len();
            Some(at)
        })
        .collect();
    let byte = |k: usize| -> Option<u8> {
        let i = starts.partition_point(|&s| s <= k).checked_sub(1)?;
        parts[i].get(k - starts[i]).copied()
    };
    let want = adler.to_be_bytes();
    let candidates: Vec<usize> = (read.saturating_sub(8).max(6)..=read)
        .filter(|&end| (0..4).all(|j| byte(end - 4 + j) == Some(want[j])))
        .collect();
    match candidates[..] {
        [end] => {
            // Back to (part, bytes of it); the end may lie in an earlier
            // part than the one the overshoot reached.
            let i = starts[..=part]
                .partition_point(|&s| s < end)
                .saturating_sub(1);
            Ok((i, end - starts[i]))
        }
        _ => zlib_stream_end(parts),
    }
}

/// Where the zlib stream laid across `parts` ends, found by miniz_oxide:
/// slower than fdeflate, but it never reads past the stream's end.
fn zlib_stream_end(parts: &[&[u8]]) -> Result<(usize, usize), Error> {
    let mut state = InflateState::new_boxed(DataFormat::Zlib);
    let mut sink = vec![0u8; 64 * 1024];
    for (i, part) in parts.iter().enumerate() {
        let mut consumed = 0;
        loop {
            let last = i + 1 == parts.len();
            let result = inflate(&mut state, &part[consumed..], &mut sink, MZFlush::None);
            consumed += result.bytes_consumed;
            match result.status {
                Ok(MZStatus::StreamEnd) => return Ok((i, consumed)),
                Ok(_) if consumed == part.len() && (!last || result.bytes_written == 0) => break,
                Ok(_) if result.bytes_consumed == 0 && result.bytes_written == 0 => {
                    return Err(corrupt("the image data ends early"));
                }
                Ok(_) => {}
                Err(_) => return Err(corrupt("the image data is not a zlib stream")),
            }
        }
    }
    Err(corrupt("the image data ends early"))
}

/// The PNG in `bytes`, its image data proved against `rows`, rebuilt from
/// the allow-list. Every chunk's CRC is checked.
pub(crate) fn rewrite_png(bytes: &[u8], rows: &PngRows) -> Result<Rewrite, Error> {
    let mut rest = bytes
        .strip_prefix(SIGNATURE)
        .ok_or_else(|| corrupt("no PNG signature"))?;
    let mut out = Rewrite::of(bytes);
    out.keep(&bytes[..SIGNATURE.len()]);
    let mut idat: Vec<&[u8]> = Vec::new();
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
        let crc = rest
            .get(8 + len..12 + len)
            .ok_or_else(|| corrupt("a chunk runs past the end"))?;
        let kept = matches!(&kind, b"IHDR" | b"IDAT" | b"PLTE")
            || (PNG_KEPT.contains(&&kind) && idat.is_empty());
        if kept {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&kind);
            hasher.update(data);
            if hasher.finalize().to_be_bytes() != crc {
                return Err(corrupt("a chunk's CRC is wrong"));
            }
        }
        rest = &rest[12 + len..];
        match &kind {
            b"IHDR" => seen_ihdr = true,
            b"IDAT" => {
                idat.push(data);
                continue;
            }
            b"IEND" => break,
            _ => {}
        }
        if kept {
            out.chunk(&kind, &[data])?;
        }
    }
    if !seen_ihdr || idat.iter().all(|d| d.is_empty()) {
        return Err(corrupt("no IHDR or no image data"));
    }
    let (last, taken) = prove_png_data(&idat, rows)?;
    idat.truncate(last + 1);
    idat[last] = &idat[last][..taken];
    out.chunk(b"IDAT", &idat)?;
    out.add(&[0, 0, 0, 0]);
    out.add(b"IEND");
    out.add(&crc32fast::hash(b"IEND").to_be_bytes());
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
pub(crate) fn rewrite_jpeg(bytes: &[u8]) -> Result<Rewrite, Error> {
    let mut rest = bytes
        .strip_prefix(&[0xFF, 0xD8])
        .ok_or_else(|| corrupt("no JPEG start"))?;
    let mut out = Rewrite::of(bytes);
    out.keep(&bytes[..2]);
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
            loop {
                end += memchr::memchr(0xFF, &rest[end..])
                    .ok_or_else(|| corrupt("a JPEG scan runs past the end"))?;
                match rest.get(end + 1) {
                    None => return Err(corrupt("a JPEG scan runs past the end")),
                    Some(0x00 | 0xD0..=0xD7) => end += 1,
                    Some(_) => break,
                }
            }
            out.add(&[0xFF, 0xDA]);
            out.keep(segment);
            out.keep(&rest[..end]);
            rest = &rest[end..];
            scans += 1;
        } else if jpeg_kept(marker, &segment[2..]) {
            out.add(&[0xFF, marker]);
            out.keep(segment);
        }
    }
    if scans == 0 {
        return Err(corrupt("the JPEG has no scan"));
    }
    out.add(&[0xFF, 0xD9]);
    Ok(out)
}

/// The GIF in `bytes`, rebuilt from the allow-list: its first frame only.
pub(crate) fn rewrite_gif(bytes: &[u8]) -> Result<Rewrite, Error> {
    let header = bytes
        .get(..13)
        .filter(|h| h.starts_with(b"GIF87a") || h.starts_with(b"GIF89a"))
        .ok_or_else(|| corrupt("no GIF header"))?;
    let mut out = Rewrite::of(bytes);
    out.keep(header);
    let mut at = 13;
    // The global colour table, when the screen descriptor says there is one.
    let flags = header[10];
    if flags & 0x80 != 0 {
        let table = 3 * (1usize << ((flags & 0x07) + 1));
        out.keep(
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
                    out.keep(control);
                }
                out.keep(&bytes[at..end]);
                out.add(&[0x3B]);
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
pub(crate) fn rewrite_webp(bytes: &[u8]) -> Result<Option<Rewrite>, Error> {
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
    // A VP8X chunk is kept with flags changed; the other chunks as they are.
    let mut kept: Vec<([u8; 4], std::borrow::Cow<'_, [u8]>)> = Vec::new();
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
                kept.push((kind, data.into()));
            }
            b"ALPH" => kept.push((kind, data.into())),
            b"VP8 " | b"VP8L" => {
                kept.push((kind, data.into()));
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
    let size: usize = 4 + kept
        .iter()
        .map(|(_, data)| 8 + data.len() + data.len() % 2)
        .sum::<usize>();
    let size = u32::try_from(size).map_err(|_| corrupt("the WebP is too large"))?;
    let mut out = Rewrite::of(bytes);
    out.add(b"RIFF");
    out.add(&size.to_le_bytes());
    out.add(b"WEBP");
    for (kind, data) in &kept {
        out.add(kind);
        let len = u32::try_from(data.len()).map_err(|_| corrupt("a WebP chunk is too large"))?;
        out.add(&len.to_le_bytes());
        match data {
            std::borrow::Cow::Borrowed(data) => out.keep(data),
            std::borrow::Cow::Owned(data) => out.add(data),
        }
        if data.len() % 2 == 1 {
            out.add(&[0]);
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload() -> Vec<u8> {
        (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Spans moving towards the start, with bytes made anew between them,
    /// are laid out in the upload's own allocation.
    #[test]
    fn a_plan_that_only_moves_bytes_back_is_laid_out_in_place() {
        let bytes = upload();
        let mut plan = Rewrite::of(&bytes);
        plan.add(b"head");
        plan.keep(&bytes[100..5_000]);
        plan.add(b"mid");
        plan.keep(&bytes[9_000..20_000]);
        let mut expected = b"head".to_vec();
        expected.extend(&bytes[100..5_000]);
        expected.extend(b"mid");
        expected.extend(&bytes[9_000..]);
        let address = bytes.as_ptr().addr();
        let out = plan.apply(bytes);
        assert_eq!(out, expected);
        assert_eq!(out.as_ptr().addr(), address);
    }

    /// Bytes made anew that would land on a span still to be moved send
    /// the layout to a new buffer, and the result is the same.
    #[test]
    fn a_plan_that_would_overwrite_what_it_needs_is_laid_out_anew() {
        let bytes = upload();
        let mut plan = Rewrite::of(&bytes);
        plan.add(&[1; 10]);
        plan.keep(&bytes[4..8_196]);
        plan.add(&[2; 3]);
        let mut expected = vec![1; 10];
        expected.extend(&bytes[4..8_196]);
        expected.extend([2; 3]);
        assert_eq!(plan.apply(bytes), expected);
    }

    /// A flood of tiny chunks costs a plan no more than their bytes: short
    /// kept parts are copied into one piece, not listed one by one.
    #[test]
    fn short_kept_parts_are_copied_not_listed() {
        let bytes = upload();
        let mut plan = Rewrite::of(&bytes);
        for i in 0..1_000 {
            plan.add(b"len!");
            plan.keep(&bytes[i * 20..i * 20 + 8]);
        }
        assert_eq!(plan.pieces.len(), 1);
        assert_eq!(plan.len, 12_000);
    }
}
