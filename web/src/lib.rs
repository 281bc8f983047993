//! The cleanse browser app (demo and report viewer). For now: the viewer's report loading,
//! shared with the native crates and tested natively.

use cleanse_core::report::Report;

/// Parses several report files; each result names its file in the error.
pub fn load_reports<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<Result<Report, String>> {
    files
        .into_iter()
        .map(|(name, text)| Report::from_json(name, text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_foreign_files_name_the_file() {
        let r = load_reports([
            ("a.json", "{"),
            ("b.json", "{\"x\":1}"),
            ("c.json", "{\"schema_version\":99}"),
        ]);
        let errs: Vec<String> = r.into_iter().map(|x| x.expect_err("must fail")).collect();
        assert!(errs[0].starts_with("a.json: not JSON"), "{}", errs[0]);
        assert!(
            errs[1].starts_with("b.json: not a cleanse report"),
            "{}",
            errs[1]
        );
        assert!(
            errs[2].contains("c.json") && errs[2].contains("99"),
            "{}",
            errs[2]
        );
    }
}
