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

/// `s` quoted for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
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
    let (binary, spec, out) = (absolute(binary)?, absolute(spec)?, absolute(out)?);
    let archive = match &s.archive {
        Some(a) => format!(" --archive {}", quote(&absolute(a)?.display().to_string())),
        None => String::new(),
    };
    let logs = out.join("slurm").join("logs");
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
    cleanse_core::io::create_dir_all(&dir.join("logs"))?;
    for (file, text) in scripts(&binary, spec, out, &name, s)? {
        cleanse_core::io::write_atomic(&dir.join(file), text.as_bytes())?;
    }
    eprintln!(
        "protocol: {} runs in {} groups over {} array tasks; scripts in {}",
        plan.runs.len(),
        plan.groups().len(),
        s.tasks,
        dir.display()
    );
    if plan.groups().len() < s.tasks {
        eprintln!(
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
        println!("sh {}", quote(&dir.join("submit.sh").display().to_string()));
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
        let zero = SlurmSettings { tasks: 0, ..s };
        assert!(scripts(Path::new("a"), Path::new("b"), Path::new("c"), "n", &zero).is_err());
    }
}
