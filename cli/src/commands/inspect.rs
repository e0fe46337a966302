//! `sideload inspect`, `sideload statement`: the bundle's front, untrusted.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use sideload_bundle::{open_bundle, Limits};
use sideload_signing::parse_statement;
use sideload_signing::summary::{rfc3339, statement_summary};

use super::print_json;

/// Arguments of `sideload inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// Print JSON on stdout (the statement as signed, plus signatures and file facts).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `sideload statement`.
#[derive(Args)]
pub struct StatementArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// Where to write the statement (`-` for stdout). Carry this file to the signing machine.
    #[arg(long, short = 'o')]
    output: PathBuf,
}

/// Runs `sideload inspect`. Trusts nothing: shows what the bundle claims and who signed it.
pub fn run_inspect(args: InspectArgs) -> Result<ExitCode> {
    let (head, file) = open_bundle(&args.bundle, &Limits::default())?;
    let file_size = file.metadata()?.len();
    let statement = parse_statement(&head.statement_bytes).map_err(|refusal| {
        sideload_bundle::Error::Refused {
            bundle: head.name.clone(),
            refusal,
        }
    })?;
    let key_ids: Vec<&str> = head.signatures.iter().map(|s| s.key_id.as_str()).collect();
    if args.json {
        let statement_value: serde_json::Value = serde_json::from_slice(&head.statement_bytes)?;
        print_json(&serde_json::json!({
            "bundle": head.name,
            "file_size": file_size,
            "statement_digest": statement.digest(),
            "signature_slot": head.signature_slot,
            "signed_by": key_ids,
            "statement": statement_value,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("bundle {} ({file_size} bytes)", head.name);
    print!("{}", statement_summary(&statement, &head.statement_bytes));
    println!(
        "  {:<18} {}",
        "signed by",
        if key_ids.is_empty() {
            "nobody yet".to_owned()
        } else {
            key_ids.join(", ")
        }
    );
    println!("  {:<18} {}", "requires", statement.requires.len());
    for d in &statement.requires {
        println!("    {d}");
    }
    println!("  layers:");
    for (i, l) in statement.target.layers.iter().enumerate() {
        let how = if statement.requires.contains(&l.diff_id) {
            "on device"
        } else {
            "in payload"
        };
        println!(
            "    {i} {} {:>12} bytes  {how}, {}",
            l.diff_id,
            l.size,
            super::build::storage_text(&l.storage, None)
        );
    }
    println!(
        "  {:<18} {}, window 2^{}, decodes to {} bytes, scratch {} bytes",
        "decoding",
        statement.payload.codec,
        statement.payload.window_log,
        statement.payload.decoded_size,
        statement.payload.scratch_bytes
    );
    if statement.expires_at < super::now() {
        println!("  note: expired at {}", rfc3339(statement.expires_at));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `sideload statement`.
pub fn run_statement(args: StatementArgs) -> Result<ExitCode> {
    let (head, _) = open_bundle(&args.bundle, &Limits::default())?;
    if args.output.as_os_str() == "-" {
        std::io::stdout().write_all(&head.statement_bytes)?;
    } else {
        std::fs::write(&args.output, &head.statement_bytes)
            .with_context(|| format!("writing {}", args.output.display()))?;
        eprintln!(
            "wrote {} ({} bytes); sign it with: sideload-sign sign --key KEY {}",
            args.output.display(),
            head.statement_bytes.len(),
            args.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
