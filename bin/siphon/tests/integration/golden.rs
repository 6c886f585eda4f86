//! Golden tests of `siphon -c` diagnostics: each `tests/golden/NAME.cfg` is
//! checked and its stderr compared with `NAME.stderr`. Set UPDATE_GOLDEN=1
//! to rewrite the expected files (then read every change).

use std::path::Path;

#[test]
fn diagnostics_match_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/golden");
    let mut cfgs: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cfg"))
        .collect();
    cfgs.sort();
    assert!(
        cfgs.len() >= 15,
        "need at least 15 golden cases, have {}",
        cfgs.len()
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for cfg in &cfgs {
        let rel = cfg.strip_prefix(root).expect("under the crate");
        let out = crate::harness::siphon_command()
            .current_dir(root)
            .arg("-c")
            .arg("-f")
            .arg(rel)
            .output()
            .expect("run siphon");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{} must fail the check",
            rel.display()
        );
        let got = String::from_utf8_lossy(&out.stderr).into_owned();
        let expected_path = cfg.with_extension("stderr");
        if update {
            std::fs::write(&expected_path, &got).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            mismatches.push(format!(
                "--- {} expected:\n{expected}\n--- got:\n{got}",
                rel.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
