//! `sideload-sign`: the offline signing tool.
//!
//! Runs on an air-gapped machine. It makes keys, signs statements and checks signatures against
//! a trust policy; it has no network code at all. Everything it does is a call into the
//! `sideload_signing` library; this file only parses arguments, reads and writes the files it is
//! told to, and maps outcomes to exit codes.

use std::error::Error;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use sideload_signing::summary::statement_summary;
use sideload_signing::{
    key_entry_toml, parse_statement, verify_statement, write_keypair, PublicKey, RepositoryPattern,
    Signature, SigningKey, TrustPolicy, VerifyContext, MAX_STATEMENT_LEN,
};

/// Exit code when `check` refuses the statement (0 = ok, 1 = error, 2 = usage).
const EXIT_REFUSED: u8 = 3;

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 error (unreadable file, bad key or policy), 2 usage error,
3 statement refused by `check`.

This tool never touches the network. Only statements (a few KiB) and signatures cross the
air gap; bundle payloads never need to.";

const LONG_ABOUT: &str = "\
Offline signing tool for sideload bundle statements.

Typical flow: `keygen` once per signer (keep NAME.key on the air-gapped machine, paste the
printed [[keys]] entry into the devices' trust policy); for every bundle, carry its statement
file over, `sign` it, carry the .sig file back; `check` tells whether a set of signatures
satisfies a policy.";

/// Command line of the offline signing tool.
#[derive(Parser)]
#[command(
    name = "sideload-sign",
    version,
    about = "Offline signing tool for sideload bundle statements",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(
        about = "Generate an Ed25519 key pair: NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub (PEM)",
        long_about = "Generate an Ed25519 key pair: NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub (PEM).\n\n\
                      Prints the key id and a [[keys]] entry ready to paste into a trust policy.\n\
                      Existing files are never overwritten."
    )]
    Keygen {
        /// Base name of the key files (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// Directory to write the key files into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Repository patterns for the printed policy entry: "*", "PREFIX/*" or an exact name.
        #[arg(long, num_args = 1.., value_name = "PATTERN", default_value = "*")]
        repositories: Vec<String>,
        /// Comment for the printed policy entry (e.g. "release key 2026 (alice)").
        #[arg(long)]
        comment: Option<String>,
    },
    /// Sign a statement file with a private key.
    ///
    /// Prints a summary of what is being signed to stderr, then writes one signature (JSON) to
    /// OUT. Refuses a statement that is not in canonical form or has an unknown format version.
    Sign {
        /// Private key file (PEM PKCS#8, as written by `keygen` or `openssl genpkey -algorithm ed25519`).
        #[arg(long, value_name = "NAME.key")]
        key: PathBuf,
        /// The statement, as written by the bundle builder.
        #[arg(value_name = "STATEMENT_FILE")]
        statement: PathBuf,
        #[arg(
            short = 'o',
            long = "output",
            value_name = "OUT",
            help = "Where to write the signature (\"-\" for stdout). Default: STATEMENT_FILE.<keyid>.sig"
        )]
        output: Option<PathBuf>,
    },
    #[command(about = "Print the trust-policy [[keys]] entry for a key")]
    Pubkey {
        /// A public key (NAME.pub) or private key (NAME.key) file.
        #[arg(value_name = "NAME.key|NAME.pub")]
        file: PathBuf,
        /// Repository patterns the key may sign for: "*", "PREFIX/*" or an exact name.
        #[arg(long, num_args = 1.., value_name = "PATTERN", default_value = "*")]
        repositories: Vec<String>,
        /// Comment for the entry.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Check signatures on a statement against a trust policy, as a device would.
    ///
    /// Uses the current time and no recorded sequence (the rollback check needs the device's
    /// state). Prints OK, or the refusal and what to do. Exit 0 accepted, 3 refused.
    Check {
        /// Trust policy file (TOML).
        #[arg(long, value_name = "POLICY.toml")]
        policy: PathBuf,
        /// The statement file.
        #[arg(value_name = "STATEMENT_FILE")]
        statement: PathBuf,
        /// Signature files, one signature each.
        #[arg(value_name = "SIG_FILE", required = true)]
        signatures: Vec<PathBuf>,
    },
    /// Write man pages and shell completions into DIR (for packagers; see scripts/deb.sh).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write `man/` and `completions/` into.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            // Each cause once: a message often quotes its source already.
            let mut lines = sideload_signing::report::cause_lines(err.as_ref()).into_iter();
            eprintln!("sideload-sign: error: {}", lines.next().unwrap_or_default());
            for cause in lines {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<ExitCode, Box<dyn Error>> {
    match command {
        Command::GenerateDocs { dir } => {
            generate_docs(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen {
            name,
            dir,
            repositories,
            comment,
        } => {
            let patterns = parse_patterns(&repositories)?;
            let id = write_keypair(&dir, &name)?;
            let public = PublicKey::read_pem_file(&dir.join(format!("{name}.pub")))?;
            println!("key id: {id}");
            println!(
                "wrote {} (private, keep offline) and {}",
                dir.join(format!("{name}.key")).display(),
                dir.join(format!("{name}.pub")).display()
            );
            println!();
            println!("# trust policy entry:");
            print!("{}", key_entry_toml(&public, &patterns, comment.as_deref()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign {
            key,
            statement,
            output,
        } => {
            let key = SigningKey::read_pem_file(&key)?;
            let bytes = read_statement(&statement)?;
            let parsed = parse_statement(&bytes).map_err(|refusal| {
                format!(
                    "{}: will not sign: {refusal} ({})",
                    statement.display(),
                    refusal.advice()
                )
            })?;
            eprintln!("signing with key {}:", key.key_id());
            eprint!("{}", statement_summary(&parsed, &bytes));
            let signature = key.sign_statement(&bytes);
            let output = output.unwrap_or_else(|| {
                let mut name = statement.as_os_str().to_owned();
                name.push(format!(".{}.sig", key.key_id()));
                PathBuf::from(name)
            });
            if output.as_os_str() == "-" {
                std::io::stdout().write_all(signature.to_json().as_bytes())?;
            } else {
                std::fs::write(&output, signature.to_json())
                    .map_err(|e| format!("{}: {e}", output.display()))?;
                eprintln!("signature written to {}", output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pubkey {
            file,
            repositories,
            comment,
        } => {
            let patterns = parse_patterns(&repositories)?;
            let public = PublicKey::read_from_either_file(&file)?;
            print!("{}", key_entry_toml(&public, &patterns, comment.as_deref()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            policy,
            statement,
            signatures,
        } => {
            let policy = TrustPolicy::load(&policy)?;
            let bytes = read_statement(&statement)?;
            let signatures = signatures
                .iter()
                .map(|p| Signature::read_file(p))
                .collect::<Result<Vec<_>, _>>()?;
            let ctx = VerifyContext::at_system_time(None);
            match verify_statement(&bytes, &signatures, &policy, &ctx) {
                Ok(s) => {
                    println!(
                        "OK: {} sequence {} ({}) is acceptable under this policy",
                        s.target.repository,
                        s.sequence,
                        s.digest()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(refusal) => {
                    println!("REFUSED [{}]: {refusal}", refusal.code());
                    println!("what to do: {}", refusal.advice());
                    Ok(ExitCode::from(EXIT_REFUSED))
                }
            }
        }
    }
}

fn parse_patterns(patterns: &[String]) -> Result<Vec<RepositoryPattern>, Box<dyn Error>> {
    patterns
        .iter()
        .map(|p| {
            p.parse()
                .map_err(|reason| format!("bad repository pattern {p:?}: {reason}").into())
        })
        .collect()
}

/// Reads a statement file, refusing anything larger than a statement can be.
fn read_statement(path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    let context = |e: std::io::Error| format!("{}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(context)?;
    let mut bytes = Vec::new();
    file.take(u64::from(MAX_STATEMENT_LEN) + 1)
        .read_to_end(&mut bytes)
        .map_err(context)?;
    if bytes.len() > MAX_STATEMENT_LEN as usize {
        return Err(format!(
            "{}: larger than {MAX_STATEMENT_LEN} bytes; not a statement",
            path.display()
        )
        .into());
    }
    Ok(bytes)
}

/// Writes `DIR/man/` (one page per visible subcommand) and `DIR/completions/` for bash, zsh and
/// fish, from the clap definitions above (the same as `sideload generate-docs`).
fn generate_docs(dir: &Path) -> Result<(), Box<dyn Error>> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut Cli::command(), "sideload-sign", &completions)?;
    }
    Ok(())
}
