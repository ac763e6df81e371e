//! What the benchmarks share: the run length, and driving the C load
//! generators (wrk for HTTP, pgbench for SQL) that measure a figure and its
//! baseline side by side.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const RUN: Duration = Duration::from_secs(8);

/// A tool on PATH or in PostgreSQL's bin directory (where pgbench lives).
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        dirs.extend(entries.flatten().map(|e| e.path().join("bin")));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found: scripts/bench installs it"))
}

/// (requests per second, p99 in ms) from wrk's report with --latency.
pub fn parse_wrk(report: &str) -> (f64, f64) {
    let rate = report
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate in wrk's report:\n{report}"));
    let p99 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (num, unit) =
                v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
            let num: f64 = num.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => num / 1000.0,
                "s" => num * 1000.0,
                _ => num,
            }
        })
        .unwrap_or(f64::NAN);
    (rate, p99)
}

/// wrk with 32 connections for [`RUN`]; `script` is an optional Lua file
/// (for a POST body). Every response must be 2xx.
pub fn wrk(url: &str, headers: &[String], script: Option<&Path>) -> (f64, f64) {
    let mut cmd = Command::new(tool("wrk"));
    let secs = format!("{}s", RUN.as_secs());
    cmd.args(["-t", "2", "-c", "32", "-d", &secs, "--latency"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd.arg(url).output().unwrap();
    assert!(out.status.success(), "wrk failed");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !report.contains("Non-2xx"),
        "every request must succeed:\n{report}"
    );
    parse_wrk(&report)
}

/// (transactions per second, p99 in ms) of one prepared statement run by
/// pgbench with 32 connections for [`RUN`]; `vars` are `-D name=value`.
pub fn pgbench(database_url: &str, sql: &str, vars: &[(&str, String)]) -> (f64, f64) {
    let dir = hub_testkit::scratch_dir();
    let script = dir.join("bench.sql");
    std::fs::write(&script, format!("{sql}\n")).unwrap();
    let mut cmd = Command::new(tool("pgbench"));
    cmd.current_dir(&dir).args([
        "-n",
        "-c",
        "32",
        "-j",
        "2",
        "-T",
        &RUN.as_secs().to_string(),
        "-M",
        "prepared",
        "-l",
    ]);
    for (name, value) in vars {
        cmd.arg("-D").arg(format!("{name}={value}"));
    }
    let out = cmd
        .arg("-f")
        .arg(&script)
        .arg(database_url)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = report
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's report:\n{report}"));
    // Per-transaction log lines: client_id transaction_no time_us script_no epoch us
    let mut latencies: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgbench_log"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    latencies.sort_unstable();
    let p99 = latencies
        .get(((latencies.len() as f64 - 1.0) * 0.99) as usize)
        .map_or(f64::NAN, |us| *us as f64 / 1000.0);
    (tps, p99)
}
