//! A clone of this repository must stand alone: nothing in it may read a path outside it. The
//! one exception is the optional reading, in place, of the public charts' renders beside the
//! clone (`tests/kubectl_parity.rs`): third-party material that never enters the repository,
//! skipped with one line when absent.
use std::path::Path;
use std::process::Command;

/// Every file git tracks or would track (untracked but not ignored), so a new file counts too.
fn repository_files(root: &Path) -> Vec<String> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "-z",
        ])
        .current_dir(root)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git ls-files failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn nothing_reads_a_path_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = repository_files(root);
    assert!(
        files.iter().any(|f| f == "Cargo.toml"),
        "the walk must see the repository's files"
    );
    // Spelled in pieces so that this file does not match itself.
    let outside = [
        concat!("..", "/shared"),
        concat!("..", "\\shared"),
        concat!("/work", "/shared"),
    ];
    let mut offenders = Vec::new();
    for file in &files {
        // Deleted in the work tree but still in the index.
        let Ok(text) = std::fs::read(root.join(file)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        for (n, line) in text.lines().enumerate() {
            for pattern in outside {
                for (at, _) in line.match_indices(pattern) {
                    let rest = &line[at + pattern.len()..];
                    // The optional reading of the public charts' renders, in place.
                    if rest.starts_with("/fixtures/charts") {
                        continue;
                    }
                    offenders.push(format!("{file}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "paths outside the repository (copy what you need into tests/fixtures/):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_readme_examples_use_the_repository_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut referenced = 0;
    for word in readme.split(|c: char| c.is_whitespace() || "`'\"()@".contains(c)) {
        if let Some(at) = word.find("tests/fixtures/") {
            // A `FILE:LINE` names the file.
            let path = word[at..].trim_end_matches([',', '.', ':', ';']);
            let path = match path.rsplit_once(':') {
                Some((file, line)) if line.chars().all(|c| c.is_ascii_digit()) => file,
                _ => path,
            };
            assert!(
                root.join(path).exists(),
                "README.md names {path}, which is not in the repository"
            );
            referenced += 1;
        }
    }
    assert!(
        referenced >= 3,
        "the README's examples should post the repository's own fixtures"
    );
}

/// docs/operations.md's flag table and `serve --help` name the same flags, with the same
/// environment variables.
#[test]
fn the_flag_table_is_what_serve_help_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_stateful-guard"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let tokens = |text: &str, prefix: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|w| {
                w.starts_with(prefix)
                    && w[prefix.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
            })
            .map(str::to_owned)
            .collect()
    };
    let table: String = doc
        .lines()
        .skip_while(|l| !l.starts_with("| Flag | Env |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').take(3).collect::<Vec<_>>().join("|") + "\n")
        .collect();
    assert!(!table.is_empty(), "docs/operations.md has no flag table");
    let in_help: std::collections::BTreeSet<String> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', '=']).next())
        .map(|f| format!("--{f}"))
        .filter(|f| f != "--help")
        .collect();
    assert_eq!(
        tokens(&table, "--"),
        in_help,
        "flags: docs/operations.md vs serve --help"
    );
    let env_in_help: std::collections::BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect();
    let env_in_table: std::collections::BTreeSet<String> = tokens(&table, "SG_")
        .into_iter()
        .chain(tokens(&table, "POD_"))
        .collect();
    assert_eq!(
        env_in_table, env_in_help,
        "environment: docs/operations.md vs serve --help"
    );
}
