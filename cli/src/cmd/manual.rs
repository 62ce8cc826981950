//! The `completions` and `man` subcommands: shell completion scripts and
//! manual pages, generated from the clap definitions of [`crate::args`]
//! (`clap_complete`, `clap_mangen`), so they name exactly the commands and
//! options the parser takes.

use std::io::Write as _;

use anyhow::Context;

use crate::args::{self, CompletionsArgs, ManArgs};
use crate::exit::Outcome;

/// The program's name in the scripts and pages.
const NAME: &str = "safe-switch";

/// Runs `completions SHELL`: the script on standard output.
pub(crate) fn completions(a: CompletionsArgs) -> anyhow::Result<Outcome> {
    let mut cmd = args::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, NAME, &mut script);
    if a.shell == clap_complete::Shell::Bash {
        script = fix_bash(&script);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(Outcome::Ok)
}

/// Mends clap_complete's bash script for a program whose name has a
/// hyphen (clap-rs/clap#6421): it names the state of `safe-switch plan`
/// `safe__switch__subcmd__plan` while completing the words, but labels the
/// case that completes its options `safe__subcmd__switch__subcmd__plan`, so
/// no option of any command was ever offered. The labels are renamed to
/// the state's spelling.
fn fix_bash(script: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let wrong = format!("{}__subcmd__", NAME.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", NAME.replace('-', "__"));
    text.replace(&wrong, &right).into_bytes()
}

/// Runs `man`: the page of `safe-switch` on standard output, or with
/// `--dir` the pages of every command written there.
pub(crate) fn man(a: ManArgs) -> anyhow::Result<Outcome> {
    let pages = pages()?;
    let Some(dir) = a.dir else {
        // The first page is the program's own, which lists the commands.
        let mut out = std::io::stdout().lock();
        out.write_all(pages.first().map(|(_, text)| text.as_slice()).unwrap_or_default())?;
        out.flush()?;
        return Ok(Outcome::Ok);
    };
    crate::report::as_invoking_user(|| std::fs::create_dir_all(&dir))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, text) in &pages {
        let path = dir.join(file);
        crate::report::write_atomically(&path, text)
            .with_context(|| format!("cannot write the manual page {}", path.display()))?;
    }
    say!("wrote {} manual pages to {}", pages.len(), dir.display());
    Ok(Outcome::Ok)
}

/// Every manual page, as (file name, roff text): `safe-switch.1` first,
/// then one per command and nested command (`safe-switch-plan.1`), hidden
/// ones left out, as `clap_mangen::generate_to` names them.
fn pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = args::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    let mut todo = vec![cmd];
    while let Some(cmd) = todo.pop() {
        let man = clap_mangen::Man::new(cmd.clone());
        let mut text = Vec::new();
        man.render(&mut text).context("cannot render a manual page")?;
        pages.push((man.get_filename(), text));
        let subs: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
        todo.extend(subs.into_iter().rev());
    }
    Ok(pages)
}
