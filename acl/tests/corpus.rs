//! The golden corpus: `tests/corpus/valid/*.hujson` must load, and each line `SRC DST PROTO`
//! of the matching `.expect` file must get the verdict written after `=>`;
//! `tests/corpus/invalid/*.hujson` must fail with exactly the errors of the `.errors` file
//! (`FILE:LINE:COL: message`, one per line). These files are also the test of the error
//! message texts.
//!
//! After an intended change, `BLESS=1 cargo test -p postern-acl --test corpus` rewrites the
//! expectations; review the diff before committing.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)] // test helpers may panic

use std::fs;
use std::path::{Path, PathBuf};

use postern_acl::Policy;

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hujson"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no policies in {}", dir.display());
    files
}

fn bless() -> bool {
    std::env::var_os("BLESS").is_some()
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn valid_policies_load_and_give_the_expected_verdicts() {
    let mut failures = Vec::new();
    for path in corpus("valid") {
        let text = fs::read_to_string(&path).unwrap();
        let policy = match Policy::parse(&name(&path), &text) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{} should load but failed:\n{e}", name(&path)));
                continue;
            }
        };
        let expect_path = path.with_extension("expect");
        let expect = fs::read_to_string(&expect_path).unwrap();
        let mut blessed = String::new();
        for line in expect.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                blessed.push_str(line);
                blessed.push('\n');
                continue;
            }
            let (query, want) = match line.split_once(" => ") {
                Some((q, w)) => (q, Some(w)),
                None => (line, None),
            };
            let parts: Vec<&str> = query.split_whitespace().collect();
            let [src, dst, proto] = parts[..] else {
                panic!("{}: bad line {line:?}", expect_path.display());
            };
            let got = match policy.test_access(src, dst, proto) {
                Ok(verdict) => verdict.to_string(),
                Err(e) => format!("error: {e}"),
            };
            if want != Some(got.as_str()) {
                failures.push(format!(
                    "{}: {query}: expected {want:?}, got {got:?}",
                    name(&path)
                ));
            }
            blessed.push_str(&format!("{query} => {got}\n"));
        }
        if bless() {
            fs::write(&expect_path, blessed).unwrap();
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_policies_fail_with_the_expected_errors() {
    let mut failures = Vec::new();
    for path in corpus("invalid") {
        let text = fs::read_to_string(&path).unwrap();
        let got = match Policy::parse(&name(&path), &text) {
            Ok(_) => {
                failures.push(format!("{} should fail but loaded", name(&path)));
                continue;
            }
            Err(e) => format!("{e}\n"),
        };
        let errors_path = path.with_extension("errors");
        if bless() {
            fs::write(&errors_path, &got).unwrap();
        }
        let want = fs::read_to_string(&errors_path).unwrap_or_default();
        if want != got {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                name(&path)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
