//! Shell completions and manual pages, generated from the command line's
//! clap definitions: every command and nested command is named by the
//! completion script of each shell and has a manual page that its parent's
//! page lists; bash's script, loaded into a real bash, offers them.

use std::path::Path;
use std::process::Command;

use crate::support::BIN;

/// Every command's path below `safe-switch` (`["plan"]`, `["report",
/// "merge"]`), hidden ones and clap's own `help` left out, read from the
/// definition the binary parses with.
fn command_paths() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_owned());
            out.push(path.clone());
            walk(sub, &path, out);
        }
    }
    let mut cmd = safe_switch_cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, &[], &mut out);
    out
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "safe-switch {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `word` occurs in `text` with no name character on either side.
fn has_word(text: &str, word: &str) -> bool {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(name_char) && !after.is_some_and(name_char)
    })
}

#[test]
fn every_shell_s_completions_name_every_command() {
    let paths = command_paths();
    for expected in ["diff", "plan", "check", "switch", "apply", "pending", "settle", "completions", "man"] {
        assert!(paths.iter().any(|p| p == &[expected]), "{expected} is not a command: {paths:?}");
    }
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = run(&["completions", shell]);
        for path in &paths {
            for name in path {
                assert!(has_word(&script, name), "the {shell} completions do not name {path:?}");
            }
        }
    }
    let out = Command::new(BIN).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error: {out:?}");
}

/// bash's completion function, loaded into bash, completes the word after
/// `safe-switch` (and after each command that has commands of its own) to
/// the commands there are, and `--` after each command to its options.
#[test]
fn bash_completes_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("safe-switch.bash");
    std::fs::write(&script, run(&["completions", "bash"])).unwrap();
    let complete = |words: &[&str], cur: &str| -> Vec<String> {
        // The line typed so far, with the cursor at the end of `cur`.
        let mut line: Vec<&str> = vec!["safe-switch"];
        line.extend_from_slice(words);
        line.push(cur);
        let quoted: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{}'\nCOMP_POINT=${{#COMP_LINE}}\n\
             _safe__switch safe-switch '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            script.display(),
            quoted.join(" "),
            line.len() - 1,
            line.join(" "),
            cur,
            line[line.len() - 2],
        );
        let out = Command::new("bash").args(["--norc", "--noprofile", "-c", &program]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
    };
    let paths = command_paths();
    let mut parents: Vec<Vec<String>> = vec![vec![]];
    parents.extend(paths.iter().filter(|p| paths.iter().any(|q| q.len() == p.len() + 1 && q.starts_with(p))).cloned());
    for parent in parents {
        let words: Vec<&str> = parent.iter().map(String::as_str).collect();
        let offered = complete(&words, "");
        for path in paths.iter().filter(|p| p.len() == parent.len() + 1 && p.starts_with(&parent)) {
            let name = path.last().unwrap();
            assert!(
                offered.contains(name),
                "`safe-switch {} <TAB>` does not offer {name}: {offered:?}",
                words.join(" ")
            );
        }
    }
    // Each command's own options, from its definition.
    let mut root = safe_switch_cli::command();
    root.build();
    for path in &paths {
        let mut cmd = &root;
        for name in path {
            cmd = cmd.find_subcommand(name).unwrap();
        }
        let words: Vec<&str> = path.iter().map(String::as_str).collect();
        let offered = complete(&words, "--");
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                let option = format!("--{long}");
                assert!(
                    offered.contains(&option),
                    "`safe-switch {} --<TAB>` does not offer {option}: {offered:?}",
                    words.join(" ")
                );
            }
        }
    }
}

/// `man --dir` writes one page per command, named as `man` looks them up
/// (`safe-switch-plan.1`), each a roff page titled with its command; every
/// page lists the commands below it, and `man` alone prints the first page.
#[test]
fn a_manual_page_per_command_and_each_listed_by_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let page = |path: &[String]| -> String {
        let mut name = vec!["safe-switch".to_owned()];
        name.extend(path.iter().cloned());
        let file = dir.path().join(format!("{}.1", name.join("-")));
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    };
    let top = page(&[]);
    assert_eq!(run(&["man"]), top, "`man` prints the program's page");
    let roff = |s: &str| s.replace('-', "\\-");
    let paths = command_paths();
    for path in &paths {
        let text = page(path);
        let name = format!("safe-switch-{}", path.join("-"));
        assert!(text.contains(&format!(".TH {name} 1")), "{name}.1 has no title line:\n{text}");
        assert!(text.contains(".SH NAME") && text.contains(".SH SYNOPSIS"), "{name}.1:\n{text}");
        let parent = page(&path[..path.len() - 1]);
        assert!(parent.contains(&format!("{}(1)", roff(&name))), "the parent's page does not list {name}");
    }
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, paths.len() + 1, "a page per command and the program's own");
    assert!(!Path::new(&dir.path().join("safe-switch-help.1")).exists());
}
