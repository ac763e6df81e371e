//! `hub users import FILE`: legacy users, read as a stream (constant memory
//! whatever the file's size), checked and stored `import.batch_size` at a
//! time through hub-core's [`hub_core::Importer`]. Refused lines are printed
//! with their number as they are met (the user's place in a Keycloak
//! export's `users`); a summary ends the run.
//!
//! The file is someone else's text: whatever of it is printed (a refusal
//! quotes a field's name, a hash's format, a path) goes through
//! [`printable`] first, so it cannot drive the operator's terminal.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use hub_core::{ImportRecord, ImportReport, Importer};

use crate::Hub;

/// Whether `c` acts on a terminal instead of showing: C0 (newline and tab
/// included: a refusal is one line), DEL, C1 (which holds CSI and OSC), the
/// bidi controls that reorder a line (U+061C, U+200E, U+200F, U+202A to
/// U+202E, U+2066 to U+2069), and the line and paragraph separators.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{61c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` as an operator's terminal may show it: every character that
/// would act on the terminal is written as a `\u{..}` escape, the rest as is.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acts_on_terminal(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// How an import file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// One JSON object per line: `username`, `email`, `password_hash`,
    /// optional `role` and `created_at` (RFC 3339).
    Jsonl,
    /// A header line, then `username,email,password_hash[,role,created_at]`.
    Csv,
    /// A Keycloak realm export (`kc.sh export`): its `users`, each with its
    /// password credential, read one user at a time.
    Keycloak,
}

impl ImportFormat {
    fn of(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Ok(Self::Csv),
            Some("jsonl" | "ndjson") => Ok(Self::Jsonl),
            Some("json") => Ok(Self::Keycloak),
            _ => anyhow::bail!(
                "cannot tell the format of {} from its name: give --format jsonl, csv or keycloak",
                path.display()
            ),
        }
    }
}

/// A CSV row, every field a string as the file has it.
#[derive(serde::Deserialize)]
struct CsvRow {
    username: String,
    email: String,
    password_hash: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
}

impl TryFrom<CsvRow> for ImportRecord {
    type Error = String;

    fn try_from(row: CsvRow) -> Result<Self, String> {
        let created_at = match row.created_at.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("bad created_at {text:?}: {e}"))?,
            ),
        };
        Ok(ImportRecord {
            username: row.username,
            email: row.email,
            password_hash: row.password_hash,
            role: row.role.filter(|r| !r.trim().is_empty()),
            created_at,
        })
    }
}

/// The file, counting the bytes read from it, for the progress shown.
struct Counted {
    file: File,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// How far through the file the import is.
#[derive(Debug, Clone)]
pub struct Progress {
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    total: u64,
}

impl Progress {
    /// `[#####.....]  52%` of the file's bytes read.
    fn bar(&self) -> String {
        let read = self.read.load(std::sync::atomic::Ordering::Relaxed);
        let percent = (read.min(self.total) * 100)
            .checked_div(self.total)
            .map_or(100, |p| p as usize);
        let filled = percent / 5;
        format!(
            "[{}{}] {percent:>3}%",
            "#".repeat(filled),
            ".".repeat(20 - filled)
        )
    }
}

/// Numbered records, or the number and reason of a line that is not one.
type Line = (u64, Result<ImportRecord, String>);

fn jsonl(file: Counted) -> impl Iterator<Item = anyhow::Result<Line>> {
    BufReader::new(file)
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let number = i as u64 + 1;
            match line {
                Err(e) => Some(Err(
                    anyhow::Error::new(e).context(format!("reading line {number}"))
                )),
                Ok(text) if text.trim().is_empty() => None,
                Ok(text) => Some(Ok((
                    number,
                    serde_json::from_str::<ImportRecord>(&text)
                        .map_err(|e| format!("not a user record: {e}")),
                ))),
            }
        })
}

fn csv_rows(file: Counted) -> impl Iterator<Item = anyhow::Result<Line>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(BufReader::new(file));
    let mut records = csv::StringRecord::new();
    let headers = reader.headers().cloned();
    std::iter::from_fn(move || {
        let headers = match &headers {
            Ok(headers) => headers,
            Err(e) => return Some(Err(anyhow::anyhow!("reading the CSV header: {e}"))),
        };
        match reader.read_record(&mut records) {
            Ok(false) => None,
            Ok(true) => {
                let number = records.position().map_or(0, csv::Position::line);
                let row = records
                    .deserialize::<CsvRow>(Some(headers))
                    .map_err(|e| format!("not a user record: {e}"))
                    .and_then(ImportRecord::try_from);
                Some(Ok((number, row)))
            }
            Err(e) => Some(Err(anyhow::anyhow!("reading the CSV file: {e}"))),
        }
    })
}

/// One user of a Keycloak realm export, as far as an import needs it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeycloakUser {
    username: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    credentials: Vec<KeycloakCredential>,
    #[serde(default)]
    realm_roles: Vec<String>,
    #[serde(default)]
    created_timestamp: Option<i64>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeycloakCredential {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    secret_data: String,
    #[serde(default)]
    credential_data: String,
}

#[derive(serde::Deserialize)]
struct SecretData {
    value: String,
    salt: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialData {
    hash_iterations: u32,
    algorithm: String,
}

impl TryFrom<KeycloakUser> for ImportRecord {
    type Error = String;

    /// Keycloak's PBKDF2 credentials (`pbkdf2`, which is SHA-1,
    /// `pbkdf2-sha256`, `pbkdf2-sha512`) become the PHC string of the same
    /// derivation: the salt and value are the bytes Keycloak hashed with.
    fn try_from(user: KeycloakUser) -> Result<Self, String> {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        let credential = user
            .credentials
            .iter()
            .find(|c| c.kind == "password")
            .ok_or("no password credential")?;
        let secret: SecretData = serde_json::from_str(&credential.secret_data)
            .map_err(|e| format!("bad secretData: {e}"))?;
        let data: CredentialData = serde_json::from_str(&credential.credential_data)
            .map_err(|e| format!("bad credentialData: {e}"))?;
        let scheme = match data.algorithm.as_str() {
            "pbkdf2" => "pbkdf2-sha1",
            "pbkdf2-sha256" => "pbkdf2-sha256",
            "pbkdf2-sha512" => "pbkdf2-sha512",
            other => return Err(format!("unknown password hash format: Keycloak {other:?}")),
        };
        let decode = |v: &str, what: &str| {
            STANDARD
                .decode(v)
                .map_err(|_| format!("bad base64 in the credential's {what}"))
        };
        let (salt, value) = (
            decode(&secret.salt, "salt")?,
            decode(&secret.value, "value")?,
        );
        let password_hash = format!(
            "${scheme}$i={},l={}${}${}",
            data.hash_iterations,
            value.len(),
            STANDARD_NO_PAD.encode(salt),
            STANDARD_NO_PAD.encode(&value)
        );
        let created_at = user.created_timestamp.and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        });
        Ok(ImportRecord {
            username: user.username,
            email: user.email.unwrap_or_default(),
            password_hash,
            role: Some(
                if user.realm_roles.iter().any(|r| r == "admin") {
                    "admin"
                } else {
                    "user"
                }
                .to_owned(),
            ),
            created_at,
        })
    }
}

/// The users of a realm export, numbered by their place in `users`, read
/// by a thread of their own and handed over a bounded channel: one user in
/// memory at a time, whatever the export's size.
fn keycloak(file: Counted) -> impl Iterator<Item = anyhow::Result<Line>> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    type Sink = std::sync::mpsc::SyncSender<anyhow::Result<Line>>;

    struct Users<'a>(&'a Sink);

    impl<'de> Visitor<'de> for Users<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of users")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut number = 0u64;
            loop {
                number += 1;
                let user = match seq.next_element::<serde_json::Value>()? {
                    None => return Ok(()),
                    Some(value) => serde_json::from_value::<KeycloakUser>(value)
                        .map_err(|e| format!("not a Keycloak user: {e}"))
                        .and_then(ImportRecord::try_from),
                };
                if self.0.send(Ok((number, user))).is_err() {
                    return Ok(()); // the importer stopped
                }
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Users<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    struct Realm<'a>(&'a Sink);

    impl<'de> Visitor<'de> for Realm<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a Keycloak realm export")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "users" {
                    map.next_value_seed(Users(self.0))?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }

    let (sink, source) = std::sync::mpsc::sync_channel(1_024);
    std::thread::spawn(move || {
        let mut reader = serde_json::Deserializer::from_reader(BufReader::new(file));
        if let Err(e) = reader.deserialize_map(Realm(&sink)) {
            let _ = sink.send(Err(anyhow::anyhow!("reading the realm export: {e}")));
        }
    });
    source.into_iter()
}

/// Reads `path` and imports every user in it; prints each refused line
/// and a summary. An error that stops it is returned [`printable`]: its
/// chain may quote the file or its name.
pub async fn run(
    hub: &Hub,
    path: &Path,
    format: Option<ImportFormat>,
    dry_run: bool,
    allow_insecure: bool,
) -> anyhow::Result<()> {
    import_file(hub, path, format, dry_run, allow_insecure)
        .await
        .map_err(|e| anyhow::anyhow!("{}", printable(&format!("{e:#}"))))
}

async fn import_file(
    hub: &Hub,
    path: &Path,
    format: Option<ImportFormat>,
    dry_run: bool,
    allow_insecure: bool,
) -> anyhow::Result<()> {
    if allow_insecure {
        let until = hub.config().import.insecure_until.context(
            "--allow-insecure needs import.insecure_until (POLYHUB_IMPORT__INSECURE_UNTIL, RFC 3339): \
             the date after which insecure hashes stop logging in",
        )?;
        eprintln!(
            "insecure hashes are imported; they log in until {until} and are upgraded at that login"
        );
    }
    let format = match format {
        Some(format) => format,
        None => ImportFormat::of(path)?,
    };
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = std::sync::Arc::default();
    let progress = Progress {
        read: std::sync::Arc::clone(&read),
        total,
    };
    let file = Counted { file, read };
    let (lines, unit): (Box<dyn Iterator<Item = anyhow::Result<Line>>>, _) = match format {
        ImportFormat::Jsonl => (Box::new(jsonl(file)), "line"),
        ImportFormat::Csv => (Box::new(csv_rows(file)), "line"),
        ImportFormat::Keycloak => (Box::new(keycloak(file)), "user"),
    };
    let report = import(
        &hub.importer().allowing_insecure(allow_insecure),
        lines,
        unit,
        Some(&progress),
        hub.config().import.batch_size,
        dry_run,
    )
    .await?;
    let verb = if dry_run { "would import" } else { "imported" };
    println!(
        "{verb} {}, already present {}, rejected {}",
        report.imported,
        report.already_present,
        report.rejected.len()
    );
    if report.imported == 0 && report.rejected.is_empty() && report.already_present > 0 {
        println!("nothing to do: every user in the file is already here");
    }
    Ok(())
}

/// Batches checked and stored at once: PostgreSQL does most of an
/// import's work, and four keep both of a small machine's cores busy.
const IN_FLIGHT: usize = 4;

async fn finished(
    task: tokio::task::JoinHandle<Result<ImportReport, hub_core::Error>>,
) -> anyhow::Result<ImportReport> {
    task.await
        .context("an import batch stopped")?
        .map_err(anyhow::Error::new)
}

/// Feeds `lines` to `importer` a batch at a time, printing refusals as
/// they come and progress every 10,000 records (a bar of the file's bytes
/// read, redrawn in place on a terminal; plain lines otherwise).
pub async fn import(
    importer: &Importer,
    lines: impl Iterator<Item = anyhow::Result<Line>>,
    unit: &str,
    progress: Option<&Progress>,
    batch_size: usize,
    dry_run: bool,
) -> anyhow::Result<ImportReport> {
    let batch_size = batch_size.max(1);
    let mut report = ImportReport::default();
    let mut batch = Vec::with_capacity(batch_size);
    let (mut read, terminal) = (0u64, std::io::stderr().is_terminal());
    // Up to IN_FLIGHT batches are checked and stored at once (each on a
    // connection of its own), while the next is read: the reader, the
    // checks and PostgreSQL overlap. Results are taken in order.
    let mut in_flight = std::collections::VecDeque::new();
    let settle = |done: ImportReport, report: &mut ImportReport| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        for (line, why) in &done.rejected {
            writeln!(out, "{unit} {line}: rejected: {}", printable(why))?;
        }
        report.add(done);
        Ok(())
    };
    let spawn = |batch: Vec<(u64, ImportRecord)>| {
        let importer = importer.clone();
        tokio::spawn(async move { importer.import_batch(batch, dry_run).await })
    };
    for line in lines {
        let (number, record) = line?;
        read += 1;
        match record {
            Ok(record) => batch.push((number, record)),
            Err(why) => {
                println!("{unit} {number}: rejected: {}", printable(&why));
                report.rejected.push((number, why));
            }
        }
        if batch.len() >= batch_size {
            if in_flight.len() >= IN_FLIGHT
                && let Some(oldest) = in_flight.pop_front()
            {
                settle(finished(oldest).await?, &mut report)?;
            }
            in_flight.push_back(spawn(std::mem::replace(
                &mut batch,
                Vec::with_capacity(batch_size),
            )));
        }
        if read % 10_000 == 0 {
            let bar = progress.map(Progress::bar).unwrap_or_default();
            if terminal {
                eprint!("\r{bar} {read} read, {} imported", report.imported);
            } else {
                eprintln!("{bar} {read} read, {} imported", report.imported);
            }
        }
    }
    if !batch.is_empty() {
        in_flight.push_back(spawn(batch));
    }
    while let Some(oldest) = in_flight.pop_front() {
        settle(finished(oldest).await?, &mut report)?;
    }
    if terminal && read >= 10_000 {
        eprintln!();
    }
    report.rejected.sort_by_key(|(line, _)| *line);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_acts_on_a_terminal_and_keeps_the_rest() {
        assert!(matches!(
            printable("bad role \"king\": user or admin"),
            Cow::Borrowed(_)
        ));
        assert_eq!(printable("naïve 名前 ✓"), "naïve 名前 ✓");
        assert_eq!(
            printable("\u{1b}]0;owned\u{7}\u{1b}[2J"),
            "\\u{1b}]0;owned\\u{7}\\u{1b}[2J"
        );
        assert_eq!(
            printable("a\tb\nc\rd\u{7f}e\u{85}f\u{9b}g"),
            "a\\u{9}b\\u{a}c\\u{d}d\\u{7f}e\\u{85}f\\u{9b}g"
        );
        for bidi in [
            '\u{61c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}',
            '\u{2028}', '\u{2029}',
        ] {
            assert_eq!(
                printable(&format!("x{bidi}y")),
                format!("x\\u{{{:x}}}y", u32::from(bidi))
            );
        }
    }
}
