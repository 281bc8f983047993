//! Records the commit of the sources the program is built from (`CLEANSE_COMMIT`), which the
//! results archive writes into every run's manifest: `git rev-parse HEAD`, with `+changes` when
//! the tracked sources differ from it, `unknown` outside a git checkout.

use std::path::Path;
use std::process::Command;

/// `git -C root ARGS`'s output, or what went wrong; tried three times (a build once recorded
/// `unknown` in a checkout where the same command succeeded a minute later).
fn git(root: &Path, args: &[&str]) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..3 {
        match Command::new("git").arg("-C").arg(root).args(args).output() {
            Ok(out) if out.status.success() => {
                return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
            Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Err(last)
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
    // Outside a checkout (a source archive) there is no commit to read, nor tries to wait for.
    let head = match root.join(".git").exists() {
        true => git(&root, &["rev-parse", "HEAD"]),
        false => Err("not a git checkout".to_string()),
    };
    let commit = match head {
        Ok(c) => {
            let mut args = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            args.extend(sources);
            let changed = git(&root, &args).map_or(true, |s| !s.is_empty());
            format!("{c}{}", if changed { "+changes" } else { "" })
        }
        Err(why) => {
            // Inside a checkout `unknown` would leave the manifests of the runs this build
            // archives without their commit, so say so.
            if root.join(".git").exists() {
                println!(
                    "cargo:warning=the commit of {} could not be read ({why}): runs archived by \
                     this build record the commit `unknown`; build again",
                    root.display()
                );
            }
            "unknown".to_string()
        }
    };
    println!("cargo:rustc-env=CLEANSE_COMMIT={commit}");
}
