//! `tolk-train gpu-check`: without a CUDA device it says so, writes its JSON and exits 0; with
//! `--device cpu` every row runs CPU against CPU, which checks the machinery the CUDA run uses
//! (same seeded weights on both sides, so the f32 rows differ by exactly 0).

use std::process::Command;

fn gpu_check(args: &[&str], json: &std::path::Path) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tolk-train"))
        .args(["gpu-check", "--threads", "2", "--json"])
        .arg(json)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    (report, stdout)
}

#[test]
fn gpu_check_skips_without_cuda_and_its_rows_hold_cpu_against_cpu() {
    let d = tempfile::tempdir().unwrap();
    let (r, stdout) = gpu_check(&[], &d.path().join("cuda.json"));
    if r["cuda_available"] == false {
        assert!(
            stdout.contains("gpu-check: skipped: libtorch sees no CUDA device"),
            "{stdout}"
        );
        assert!(r["skipped"].is_string());
        assert_eq!(r["rows"].as_array().unwrap().len(), 0);
    } else {
        assert!(r["skipped"].is_null());
    }

    let (r, stdout) = gpu_check(&["--device", "cpu", "--quick"], &d.path().join("cpu.json"));
    println!("{stdout}");
    let rows = r["rows"].as_array().unwrap();
    let parity: Vec<_> = rows.iter().filter(|r| r["bound"].is_number()).collect();
    assert_eq!(parity.len(), 7, "{r}");
    for row in &parity {
        assert_eq!(row["passed"], true, "{row}");
        if !row["name"].as_str().unwrap().contains("bf16") {
            assert_eq!(row["rel_diff"], 0.0, "{row}");
        }
    }
    let decode = rows
        .iter()
        .find(|r| r["name"].as_str().unwrap().ends_with("bf16 decode"))
        .unwrap();
    assert!(decode["detail"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(rows.iter().any(|r| r["detail"]["not_built"]
        .as_str()
        .is_some_and(|s| s.contains("CUDA graph"))));
}
