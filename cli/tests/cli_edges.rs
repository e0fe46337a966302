//! The CLI at its edges: a FIFO where a bundle should be, a file that is not an image, and the
//! counts in `sideload push`'s report.

use sideload_test_support::registry as support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{bundle, stdout_json, BundleSpec, Daemon, DaemonOptions, Registry};

fn sideload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args(args)
        .output()
        .expect("sideload runs")
}

/// Runs `sideload ARGS`, killed after `limit`; `None` when it had to be killed.
fn sideload_within(args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sideload runs");
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn commands_that_read_a_bundle_refuse_a_fifo_or_a_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("app.bundle");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let fifo = fifo.to_str().unwrap();
    let statement = dir.path().join("s.json");
    let statement = statement.to_str().unwrap();
    for args in [
        vec!["inspect", fifo],
        vec!["inspect", fifo, "--json"],
        vec!["statement", fifo, "-o", statement],
        vec!["inspect", dir.path().to_str().unwrap()],
    ] {
        let out = sideload_within(&args, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("sideload {args:?} still waits after 20 s"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{args:?}: {stderr}");
        assert!(stderr.contains("what to do:"), "{args:?}: {stderr}");
    }
    let out = sideload(&["inspect", fifo]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("FIFO"));
}

/// True when `text` is what a terminal shows as it is: UTF-8 with no control characters but
/// line ends.
fn printable(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    match text.chars().find(|c| c.is_control() && *c != '\n') {
        Some(c) => Err(format!("control character {c:?}")),
        None => Ok(()),
    }
}

#[test]
fn build_errors_on_binary_input_show_escaped_text_not_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // What a wrong file looks like: a PNG head, every byte value, a terminal escape, a NUL.
    let mut junk = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    junk.extend(0u8..=255);
    junk.extend_from_slice(b"\x1b[2J\x1b[31mred\x07\xff\xfe");
    junk.extend(std::iter::repeat_n(0xA5u8, 4096));
    let cases = [
        ("image.tar", junk.clone()),
        // Names inside a tar come from the input too.
        ("named.tar", {
            let mut header = [0u8; 512];
            header[..11].copy_from_slice(b"\x1b[31m\xff\x01bad\x07");
            header[100..107].copy_from_slice(b"0000644");
            header[124..135].copy_from_slice(b"00000000004");
            header[156] = b'0';
            header[257..263].copy_from_slice(b"ustar\0");
            header[263..265].copy_from_slice(b"00");
            header[148..156].copy_from_slice(b"        ");
            let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
            header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            let mut tar = header.to_vec();
            tar.extend_from_slice(b"\x1b[2J");
            tar.resize(512 * 4, 0);
            tar
        }),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let out_path = dir.path().join(format!("{name}.bundle"));
        for target in [
            format!("docker-archive:{}", path.display()),
            path.display().to_string(),
        ] {
            let out = sideload(&[
                "build",
                &target,
                "-o",
                out_path.to_str().unwrap(),
                "--repository",
                "edge/app",
                "--tag",
                "v1",
            ]);
            assert_eq!(out.status.code(), Some(1), "{target}");
            if let Err(why) = printable(&out.stderr) {
                panic!(
                    "sideload build {target}: the error has {why}: {:?}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                out.stderr.len() < 2000,
                "{} bytes of error: {:?}",
                out.stderr.len(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn push_reports_count_upload_and_status_requests_apart_and_agree_with_the_lines() {
    let registry = Registry::start();
    support::seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let path = bundle(BundleSpec::default());
    let out = sideload(&[
        "push",
        path.to_str().unwrap(),
        "--to",
        &format!("http://{}", daemon.addr),
        "--wait",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = &stdout_json(&out)["bundles"][0];
    assert_eq!(r["state"], "applied", "{r:#}");
    // The summary line after the upload: "..., N upload requests, M retries, ...".
    let number_before = |text: &str, what: &str| -> Option<u64> {
        let at = text.find(what)?;
        text[..at]
            .split_whitespace()
            .last()?
            .trim_start_matches('(')
            .parse()
            .ok()
    };
    let summary = stderr
        .lines()
        .find(|l| l.contains("queued for apply"))
        .unwrap_or_else(|| panic!("no summary line: {stderr}"));
    let upload_requests = number_before(summary, " upload requests")
        .or_else(|| number_before(summary, " requests"))
        .unwrap();
    assert_eq!(
        r["requests"].as_u64(),
        Some(upload_requests),
        "{summary}\n{r:#}"
    );
    assert_eq!(
        r["retries"].as_u64(),
        number_before(summary, " retries"),
        "{summary}"
    );
    // The line after the wait counts the status polls, as the report does.
    let polls = r["status_requests"]
        .as_u64()
        .expect("status_requests in the report");
    assert!(polls >= 1, "{r:#}");
    let waited = stderr
        .lines()
        .find(|l| l.contains(": applied") && l.contains("status requests"))
        .unwrap_or_else(|| panic!("no line after the wait: {stderr}"));
    assert_eq!(
        number_before(waited, " status requests"),
        Some(polls),
        "{waited}"
    );
}
