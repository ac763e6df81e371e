//! `hub users import FILE`: legacy users, read as a stream (constant memory
//! whatever the file's size), checked and stored `import.batch_size` at a
//! time through hub-core's [`hub_core::Importer`]. Refused lines are printed
//! with their number as they are met; a summary ends the run.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;

use anyhow::Context;
use hub_core::{ImportRecord, ImportReport, Importer};

use crate::Hub;

/// How an import file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// One JSON object per line: `username`, `email`, `password_hash`,
    /// optional `role` and `created_at` (RFC 3339).
    Jsonl,
    /// A header line, then `username,email,password_hash[,role,created_at]`.
    Csv,
}

impl ImportFormat {
    fn of(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Ok(Self::Csv),
            Some("jsonl" | "ndjson" | "json") => Ok(Self::Jsonl),
            _ => anyhow::bail!(
                "cannot tell the format of {} from its name: give --format jsonl or --format csv",
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

/// Numbered records, or the number and reason of a line that is not one.
type Line = (u64, Result<ImportRecord, String>);

fn jsonl(file: File) -> impl Iterator<Item = anyhow::Result<Line>> {
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

fn csv_rows(file: File) -> impl Iterator<Item = anyhow::Result<Line>> {
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

/// Reads `path` and imports every user in it; prints each refused line
/// and a summary.
pub async fn run(
    hub: &Hub,
    path: &Path,
    format: Option<ImportFormat>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let format = match format {
        Some(format) => format,
        None => ImportFormat::of(path)?,
    };
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let lines: Box<dyn Iterator<Item = anyhow::Result<Line>>> = match format {
        ImportFormat::Jsonl => Box::new(jsonl(file)),
        ImportFormat::Csv => Box::new(csv_rows(file)),
    };
    let report = import(
        &hub.importer(),
        lines,
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

/// Feeds `lines` to `importer` a batch at a time, printing refusals as
/// they come and progress every 10,000 lines (on one line on a terminal).
pub async fn import(
    importer: &Importer,
    lines: impl Iterator<Item = anyhow::Result<Line>>,
    batch_size: usize,
    dry_run: bool,
) -> anyhow::Result<ImportReport> {
    let batch_size = batch_size.max(1);
    let mut report = ImportReport::default();
    let mut batch = Vec::with_capacity(batch_size);
    let (mut read, terminal) = (0u64, std::io::stderr().is_terminal());
    let flush = async |batch: &mut Vec<(u64, ImportRecord)>,
                       report: &mut ImportReport|
           -> anyhow::Result<()> {
        let done = importer
            .import_batch(std::mem::take(batch), dry_run)
            .await
            .map_err(anyhow::Error::new)?;
        let mut out = std::io::stdout().lock();
        for (line, why) in &done.rejected {
            writeln!(out, "line {line}: rejected: {why}")?;
        }
        report.add(done);
        Ok(())
    };
    for line in lines {
        let (number, record) = line?;
        read += 1;
        match record {
            Ok(record) => batch.push((number, record)),
            Err(why) => {
                println!("line {number}: rejected: {why}");
                report.rejected.push((number, why));
            }
        }
        if batch.len() >= batch_size {
            flush(&mut batch, &mut report).await?;
        }
        if read % 10_000 == 0 {
            if terminal {
                eprint!("\r{read} lines read, {} imported", report.imported);
            } else {
                eprintln!("{read} lines read, {} imported", report.imported);
            }
        }
    }
    if !batch.is_empty() {
        flush(&mut batch, &mut report).await?;
    }
    if terminal && read >= 10_000 {
        eprintln!();
    }
    report.rejected.sort_by_key(|(line, _)| *line);
    Ok(report)
}
