//! The defense family is named in one place (core's `Defense`): every member is a `defend`
//! subcommand whose help shows core's defaults, a protocol column, and a table column under its
//! own name, with nothing else to register.

use cleanse_core::defend::Defense;
use std::path::Path;
use std::process::Command;

fn cleanse(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cleanse"))
        .args(args)
        .output()
        .expect("run cleanse");
    assert!(
        out.status.success(),
        "cleanse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn every_member_of_the_defense_family_is_a_command_a_protocol_column_and_a_table_column() {
    let family = Defense::paper_family(Path::new("runs/x"), true);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut spec = String::from(
        "[protocol]\ndataset = \"cifar10\"\ndata = \"data\"\n[[attack]]\nkind = \"badnets\"\n",
    );
    for d in &family {
        spec += &format!("[[defense]]\nmethod = \"{}\"\n", d.method());
    }
    let spec_path = tmp.path().join("family.toml");
    std::fs::write(&spec_path, spec).expect("spec");
    let out = tmp.path().join("out");
    let plan = cleanse(&[
        "protocol",
        "run",
        spec_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dry-run",
    ]);
    for d in &family {
        let c = d.common();
        let help = cleanse(&["defend", d.method(), "--help"]);
        // The help's defaults are the method's own: its batch size and learning rate appear
        // either as the shared default or under its column name.
        for value in [c.batch_size.to_string(), c.lr.to_string()] {
            assert!(
                help.contains(&value),
                "{}: {value} not in\n{help}",
                d.method()
            );
        }
        assert!(
            plan.contains(&format!("cleanse defend {} --model", d.method())),
            "{}: not planned in\n{plan}",
            d.method()
        );
        // At its defaults a member's table column is its name alone.
        assert_eq!(d.label(), d.display_name());
    }
    let mut positions: Vec<usize> = family.iter().map(Defense::table_position).collect();
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), family.len(), "two members share a column");
}
