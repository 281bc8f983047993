//! Records the commit of the sources the program is built from (`CLEANSE_COMMIT`), which the
//! results archive writes into every run's manifest: `git rev-parse HEAD`, with `+changes` when
//! the tracked sources differ from it, `unknown` outside a git checkout.

use std::path::Path;
use std::process::Command;

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = ["core", "native", "shaders", "Cargo.toml", "Cargo.lock"];
    for p in sources
        .iter()
        .chain(&[".git/HEAD", ".git/index", ".git/logs/HEAD"])
    {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let commit = match git(&root, &["rev-parse", "HEAD"]) {
        Some(c) => {
            let mut args = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            args.extend(sources);
            let changed = git(&root, &args).is_none_or(|s| !s.is_empty());
            format!("{c}{}", if changed { "+changes" } else { "" })
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=CLEANSE_COMMIT={commit}");
}
