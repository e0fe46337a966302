//! Man pages and shell completions made from the clap definitions themselves, so they never
//! drift from `--help`. Run through the hidden `generate-docs DIR` subcommand when the Debian
//! package is made (`scripts/deb.sh`); `sideload-sign` has the same subcommand.

use std::path::Path;

use anyhow::Context;
use clap_complete::Shell;

/// Writes `DIR/man/NAME.1` (and one page per visible subcommand, `NAME-SUB.1`) and
/// `DIR/completions/` for bash, zsh and fish.
pub fn generate(mut cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    let name = cmd.get_name().to_owned();
    let man = dir.join("man");
    let completions = dir.join("completions");
    for sub in [&man, &completions] {
        std::fs::create_dir_all(sub).with_context(|| format!("cannot create {}", sub.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("cannot write man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions).with_context(|| {
            format!(
                "cannot write {shell} completions into {}",
                completions.display()
            )
        })?;
    }
    Ok(())
}
