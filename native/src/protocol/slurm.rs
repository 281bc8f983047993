//! `cleanse protocol slurm`: the protocol as a Slurm job array (one shard per task) and the
//! table as a job that waits for the array (`--dependency=afterok`). The scripts go into
//! `OUT/slurm/`; `submit.sh` submits both, and one task is re-submitted after a node failure
//! with `sbatch --array=K OUT/slurm/protocol.sbatch` (complete runs are skipped, unfinished ones
//! resume).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The job's settings.
#[derive(Clone, Debug)]
pub(crate) struct SlurmSettings {
    pub tasks: usize,
    pub partition: Option<String>,
    pub gres: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: usize,
    pub mem: Option<String>,
    /// Further `#SBATCH` lines, verbatim (e.g. `--account=abc`).
    pub extra: Vec<String>,
    /// Runs at a time in each task (`protocol run --jobs`).
    pub jobs: usize,
    /// The results archive every task restores from and writes into (`protocol run --archive`).
    pub archive: Option<PathBuf>,
}

use super::shell_quote as quote;

/// Refuses a string with a control character (a newline would end the line it is written on and
/// start a command of its own), naming where it comes from.
fn no_control(what: &str, s: &str) -> Result<()> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        bail!(
            "{what} `{}` holds the control character {c:?}; it cannot go into a job script",
            s.escape_debug()
        );
    }
    Ok(())
}

/// Refuses a value for an `#SBATCH` line that Slurm would not read as one word: `#SBATCH` lines
/// are not shell, so a value is refused rather than quoted when it holds a space, a quote, a
/// backslash or a control character.
fn directive_value(what: &str, s: &str) -> Result<()> {
    no_control(what, s)?;
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || "'\"\\".contains(*c))
    {
        bail!(
            "{what} `{s}` holds {c:?}, which an #SBATCH line cannot hold; choose a value (or, for \
             a path, a folder) without spaces, quotes or backslashes"
        );
    }
    Ok(())
}

/// A Slurm job name made of letters, digits, `.`, `_` and `-` only (anything else becomes `_`),
/// at most 64 characters.
fn job_name(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .take(64)
        .collect()
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: cannot make it absolute", p.display()))
}

/// The three scripts: `protocol.sbatch` (the array), `table.sbatch` and `submit.sh`.
pub(crate) fn scripts(
    binary: &Path,
    spec: &Path,
    out: &Path,
    name: &str,
    s: &SlurmSettings,
) -> Result<Vec<(&'static str, String)>> {
    if s.tasks == 0 {
        bail!("--tasks: expected at least 1");
    }
    if s.jobs == 0 {
        bail!("--jobs: expected at least 1");
    }
    if s.cpus_per_task == 0 {
        bail!("--cpus-per-task: expected at least 1");
    }
    let (binary, spec, out) = (absolute(binary)?, absolute(spec)?, absolute(out)?);
    no_control("the cleanse binary's path", &binary.display().to_string())?;
    no_control("the spec's path", &spec.display().to_string())?;
    no_control("--out", &out.display().to_string())?;
    for (flag, v) in [
        ("--partition", &s.partition),
        ("--gres", &s.gres),
        ("--time", &s.time),
        ("--mem", &s.mem),
    ] {
        if let Some(v) = v {
            directive_value(flag, v)?;
        }
    }
    for e in &s.extra {
        no_control("--sbatch", e)?;
        if !e.starts_with('-') {
            bail!("--sbatch `{e}`: expected an sbatch option, e.g. --sbatch=--account=lab");
        }
    }
    let name = job_name(name);
    let archive = match &s.archive {
        Some(a) => {
            let a = absolute(a)?.display().to_string();
            no_control("--archive", &a)?;
            format!(" --archive {}", quote(&a))
        }
        None => String::new(),
    };
    let logs = out.join("slurm").join("logs");
    directive_value(
        "--out (its logs go into an #SBATCH line)",
        &logs.display().to_string(),
    )?;
    let head = |job: String, array: bool| {
        let mut h = format!("#!/bin/bash\n#SBATCH --job-name={job}\n");
        if array {
            h.push_str(&format!("#SBATCH --array=0-{}\n", s.tasks - 1));
            h.push_str(&format!("#SBATCH --output={}/%A_%a.out\n", logs.display()));
        } else {
            h.push_str(&format!("#SBATCH --output={}/%j.out\n", logs.display()));
        }
        h.push_str(&format!("#SBATCH --cpus-per-task={}\n", s.cpus_per_task));
        for (flag, v) in [
            ("partition", &s.partition),
            ("time", &s.time),
            ("mem", &s.mem),
        ] {
            if let Some(v) = v {
                h.push_str(&format!("#SBATCH --{flag}={v}\n"));
            }
        }
        if array && let Some(g) = &s.gres {
            h.push_str(&format!("#SBATCH --gres={g}\n"));
        }
        for e in &s.extra {
            h.push_str(&format!("#SBATCH {e}\n"));
        }
        h.push_str("set -euo pipefail\n");
        h
    };
    let protocol = format!(
        "{}# Shard K of {n}: the K-th of every {n} attack models with their defenses.\n\
         exec {} protocol run {} --out {} --shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\"{jobs}{archive}\n",
        head(name.to_string(), true),
        quote(&binary.display().to_string()),
        quote(&spec.display().to_string()),
        quote(&out.display().to_string()),
        n = s.tasks,
        jobs = if s.jobs > 1 {
            format!(" --jobs {}", s.jobs)
        } else {
            String::new()
        },
    );
    let table = format!(
        "{}exec {} protocol table {}\n",
        head(format!("{name}-table"), false),
        quote(&binary.display().to_string()),
        quote(&out.display().to_string()),
    );
    let dir = out.join("slurm");
    let submit = format!(
        "#!/bin/sh\n# Submits the protocol's job array, then the table once every task has ended \
         well.\nset -eu\ncd {dir}\narray=$(sbatch --parsable protocol.sbatch)\narray=${{array%%;*}}\n\
         table=$(sbatch --parsable --dependency=afterok:$array table.sbatch)\n\
         echo \"array job $array, table job ${{table%%;*}}\"\n",
        dir = quote(&dir.display().to_string()),
    );
    Ok(vec![
        ("protocol.sbatch", protocol),
        ("table.sbatch", table),
        ("submit.sh", submit),
    ])
}

/// Writes the scripts into `OUT/slurm/` and, with `submit`, runs `submit.sh`.
pub(crate) fn run(spec: &Path, out: &Path, s: &SlurmSettings, submit: bool) -> Result<()> {
    // The whole plan is checked here, before anything is queued.
    let (_, plan) = super::runner::checked_plan(spec, out)?;
    let binary = std::env::current_exe().context("the path of this cleanse binary")?;
    let name = format!(
        "cleanse-{}",
        spec.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "protocol".into())
    );
    let dir = out.join("slurm");
    // Every setting is checked (by making the scripts) before anything is written.
    let files = scripts(&binary, spec, out, &name, s)?;
    cleanse_core::io::create_dir_all(&dir.join("logs"))?;
    for (file, text) in files {
        cleanse_core::io::write_atomic(&dir.join(file), text.as_bytes())?;
    }
    errln!(
        "protocol: {} runs in {} groups over {} array tasks; scripts in {}",
        plan.runs.len(),
        plan.groups().len(),
        s.tasks,
        dir.display()
    );
    if plan.groups().len() < s.tasks {
        errln!(
            "protocol: note: {} tasks for {} groups; the extra tasks have nothing to do",
            s.tasks,
            plan.groups().len()
        );
    }
    if submit {
        let status = std::process::Command::new("sh")
            .arg(dir.join("submit.sh"))
            .status()
            .context("running submit.sh (is Slurm's sbatch on the PATH?)")?;
        if !status.success() {
            bail!("{}: {status}", dir.join("submit.sh").display());
        }
    } else {
        outln!("sh {}", quote(&dir.join("submit.sh").display().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_array_runs_one_shard_per_task_and_the_table_waits_for_it() {
        let s = SlurmSettings {
            tasks: 4,
            partition: Some("gpu".into()),
            gres: Some("gpu:1".into()),
            time: Some("02:00:00".into()),
            cpus_per_task: 8,
            mem: None,
            extra: vec!["--account=lab".into()],
            jobs: 1,
            archive: None,
        };
        let files = scripts(
            Path::new("/opt/cleanse"),
            Path::new("/p/spec's.toml"),
            Path::new("/runs/x"),
            "cleanse-x",
            &s,
        )
        .expect("scripts");
        let (_, array) = &files[0];
        assert!(array.contains("#SBATCH --array=0-3\n"), "{array}");
        assert!(array.contains("#SBATCH --gres=gpu:1\n#SBATCH --account=lab\n"));
        assert!(array.contains("#SBATCH --partition=gpu\n#SBATCH --time=02:00:00\n"));
        assert!(array.contains(
            "exec '/opt/cleanse' protocol run '/p/spec'\\''s.toml' --out '/runs/x' --shard \"${SLURM_ARRAY_TASK_ID}/4\""
        ));
        let (_, table) = &files[1];
        assert!(table.contains("protocol table '/runs/x'") && !table.contains("--gres"));
        let (_, submit) = &files[2];
        assert!(submit.contains("--dependency=afterok:$array table.sbatch"));
        let pooled = SlurmSettings {
            jobs: 3,
            archive: Some("/repo/results/x".into()),
            ..s.clone()
        };
        let files = scripts(
            Path::new("c"),
            Path::new("s"),
            Path::new("/o"),
            "n",
            &pooled,
        );
        let (_, array) = &files.expect("scripts")[0];
        assert!(
            array.contains(
                "--shard \"${SLURM_ARRAY_TASK_ID}/4\" --jobs 3 --archive '/repo/results/x'\n"
            ),
            "{array}"
        );
        let zero = SlurmSettings {
            tasks: 0,
            ..s.clone()
        };
        assert!(scripts(Path::new("a"), Path::new("b"), Path::new("c"), "n", &zero).is_err());
        let no_cpus = SlurmSettings {
            cpus_per_task: 0,
            ..s
        };
        let e = scripts(
            Path::new("a"),
            Path::new("b"),
            Path::new("c"),
            "n",
            &no_cpus,
        );
        assert!(
            e.expect_err("0 cpus")
                .to_string()
                .contains("--cpus-per-task")
        );
    }

    /// Hostile names for the spec file, the output folder and the settings: each is refused with
    /// an error naming it, or the scripts parse (`bash -n`) and, run with `sbatch` stubbed and
    /// the binary standing in for an `echo`, execute nothing injected and pass the names on
    /// whole.
    #[test]
    fn hostile_names_are_refused_or_quoted_and_nothing_is_injected() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        // `sbatch` prints a job id; the "binary" prints its arguments one per line.
        let stub = |name: &str, body: &str| {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("stub");
            let mut perm = std::fs::metadata(&p).expect("meta").permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            std::fs::set_permissions(&p, perm).expect("chmod");
            p
        };
        stub("sbatch", "echo 42");
        let cleanse = stub("cleanse", "for a in \"$@\"; do echo \"arg:$a\"; done");
        let s = SlurmSettings {
            tasks: 2,
            partition: None,
            gres: None,
            time: None,
            cpus_per_task: 1,
            mem: None,
            extra: Vec::new(),
            jobs: 1,
            archive: None,
        };
        let long = "x".repeat(200);
        let names = [
            "new\nline",
            "quote'd",
            "dq\"uote",
            "$(touch PWNED1)",
            "`touch PWNED2`",
            "semi;touch PWNED3",
            "with space",
            long.as_str(),
        ];
        let mut refused = 0;
        for (i, name) in names.iter().enumerate() {
            for as_out in [false, true] {
                let case = root.join(format!("case{i}-{as_out}"));
                std::fs::create_dir_all(&case).expect("mkdir");
                let (spec, out) = match as_out {
                    false => (case.join(format!("{name}.toml")), case.join("out")),
                    true => (case.join("spec.toml"), case.join(name)),
                };
                let job = format!(
                    "cleanse-{}",
                    spec.file_stem().expect("stem").to_string_lossy()
                );
                match scripts(&cleanse, &spec, &out, &job, &s) {
                    Err(e) => {
                        let e = e.to_string();
                        assert!(
                            (name.contains('\n') && e.contains("control character"))
                                || (as_out && e.contains("--out")),
                            "{name:?}: {e}"
                        );
                        refused += 1;
                    }
                    Ok(files) => {
                        let dir = out.join("slurm");
                        std::fs::create_dir_all(dir.join("logs")).expect("mkdir");
                        for (f, text) in &files {
                            std::fs::write(dir.join(f), text).expect("write");
                            let n = std::process::Command::new("bash")
                                .arg("-n")
                                .arg(dir.join(f))
                                .status()
                                .expect("bash -n");
                            assert!(n.success(), "{name:?}: {f} does not parse:\n{text}");
                            // Directives stay one block at the top: nothing before them ends it.
                            let directives: Vec<&str> =
                                text.lines().take_while(|l| l.starts_with('#')).collect();
                            if *f == "protocol.sbatch" {
                                assert!(
                                    directives.iter().any(|l| l.starts_with("#SBATCH --array"))
                                );
                            }
                        }
                        let path = format!("{}:/usr/bin:/bin", bin.display());
                        for f in ["submit.sh", "protocol.sbatch", "table.sbatch"] {
                            let o = std::process::Command::new("bash")
                                .arg(dir.join(f))
                                .current_dir(&case)
                                .env("PATH", &path)
                                .env("SLURM_ARRAY_TASK_ID", "1")
                                .output()
                                .expect("run");
                            assert!(o.status.success(), "{name:?}: {f}: {o:?}");
                            let said = String::from_utf8_lossy(&o.stdout);
                            if f == "protocol.sbatch" {
                                let whole = if as_out {
                                    out.display().to_string()
                                } else {
                                    spec.display().to_string()
                                };
                                assert!(
                                    said.contains(&format!("arg:{whole}\n")),
                                    "{name:?}: {said}"
                                );
                            }
                        }
                    }
                }
                for p in ["PWNED1", "PWNED2", "PWNED3"] {
                    assert!(
                        !case.join(p).exists() && !root.join(p).exists(),
                        "{name:?}: {p}"
                    );
                }
            }
        }
        // The spaced and quoted output folders cannot go into #SBATCH lines; the others can.
        assert!(refused >= 2, "{refused}");
        // Settings that go into #SBATCH lines are refused with a space, a quote or a newline.
        for (bad, flag) in [
            (
                SlurmSettings {
                    partition: Some("gpu x".into()),
                    ..s.clone()
                },
                "--partition",
            ),
            (
                SlurmSettings {
                    mem: Some("1G\n#SBATCH --x".into()),
                    ..s.clone()
                },
                "--mem",
            ),
            (
                SlurmSettings {
                    extra: vec!["--a\nrm -rf x".into()],
                    ..s.clone()
                },
                "--sbatch",
            ),
            (
                SlurmSettings {
                    extra: vec!["account=x".into()],
                    ..s.clone()
                },
                "--sbatch",
            ),
        ] {
            let e = scripts(&cleanse, &root.join("s.toml"), &root.join("o"), "n", &bad)
                .expect_err(flag)
                .to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
        assert_eq!(job_name("cleanse-a b$(x)`y`\n"), "cleanse-a_b__x__y__");
    }
}
