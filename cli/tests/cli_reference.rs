//! Keeps `docs/cli.md` in step with the command line: every subcommand `postern --help`
//! lists (recursively) must appear in the reference as `postern SUB`, and every long flag
//! its `--help` shows must appear there too. A flag added without documentation fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test code

use std::collections::BTreeSet;
use std::process::Command;

/// `postern ARGS --help`, as text.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "postern {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands a help page lists under "Commands:" (without `help`).
fn subcommands(page: &str) -> Vec<String> {
    let mut in_commands = false;
    let mut found = Vec::new();
    for line in page.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if !line.starts_with("  ") {
                break;
            }
            // "  name   description"; continuation lines are indented further.
            if line.starts_with("   ") {
                continue;
            }
            if let Some(name) = line.split_whitespace().next()
                && name != "help"
            {
                found.push(name.to_owned());
            }
        }
    }
    found
}

/// The long flags a help page shows (`--name`), without `--help` and `--version`.
fn long_flags(page: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in page.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for word in line.split([' ', ',', '=', '<', '[']) {
            if let Some(name) = word.strip_prefix("--")
                && !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit())
                && name != "help"
                && name != "version"
            {
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

#[test]
fn every_subcommand_and_flag_is_in_the_cli_reference() {
    let reference = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md"))
        .expect("docs/cli.md");
    let mut missing = Vec::new();
    let mut checked = 0;
    let mut queue: Vec<Vec<String>> = subcommands(&help(&[]))
        .into_iter()
        .map(|name| vec![name])
        .collect();
    assert!(
        queue.len() >= 8,
        "postern --help lists too few commands: {queue:?}"
    );
    while let Some(path) = queue.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let page = help(&args);
        let command = format!("postern {}", path.join(" "));
        checked += 1;
        if !reference.contains(&command) {
            missing.push(format!("the command `{command}`"));
        }
        for flag in long_flags(&page) {
            if !reference.contains(&flag) {
                missing.push(format!("`{flag}` of `{command}`"));
            }
        }
        for sub in subcommands(&page) {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
    }
    assert!(checked >= 15, "only {checked} commands were checked");
    assert!(
        missing.is_empty(),
        "docs/cli.md lacks:\n  {}",
        missing.join("\n  ")
    );
}
