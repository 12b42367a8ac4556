//! `tolk-train score`: scores two line-aligned files, prints a signature, and rejects
//! mismatched or unreadable input with a clear message.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tolk-train"))
        .arg("score")
        .args(args)
        .output()
        .expect("running tolk-train")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn scores_files_with_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let hyp = write(
        dir.path(),
        "hyp.txt",
        "the cat sat on the mat\nhello there\n",
    );
    let same = write(
        dir.path(),
        "same.txt",
        "the cat sat on the mat\nhello there\n",
    );
    let reference = write(
        dir.path(),
        "ref.txt",
        "the cat is on the mat\nhello there\n",
    );

    let out = stdout(&run(&["--metric", "bleu", "--hyp", &hyp, "--ref", &same]));
    assert!(
        out.starts_with("BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:tolk-"),
        "{out}"
    );
    assert!(out.contains(" = 100.00 "), "{out}");

    // Hand-worked: 1-grams 7/8, 2-grams 4/6, 3-grams 1/4, 4-grams 0/3 (exp smoothing: 100/(2*3)).
    let out = stdout(&run(&[
        "--metric", "bleu", "--hyp", &hyp, "--ref", &reference,
    ]));
    let want =
        ((87.5f64.ln() + (400.0f64 / 6.0).ln() + 25f64.ln() + (100.0f64 / 6.0).ln()) / 4.0).exp();
    assert!(
        out.contains(&format!(" = {want:.2} ")),
        "{out} (want {want:.2})"
    );

    let out = stdout(&run(&["--metric", "chrf", "--hyp", &hyp, "--ref", &same]));
    assert!(
        out.starts_with("chrF2|nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|"),
        "{out}"
    );
    assert!(out.contains(" = 100.00"), "{out}");

    // WER: one substitution over 8 reference words.
    let out = stdout(&run(&[
        "--metric", "wer", "--hyp", &hyp, "--ref", &reference,
    ]));
    assert!(out.starts_with("WER|"), "{out}");
    assert!(out.contains(" = 0.1250 "), "{out}");

    let out = stdout(&run(&[
        "--metric", "meteor", "--hyp", &same, "--ref", &same,
    ]));
    assert!(out.starts_with("METEOR|"), "{out}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let two = write(dir.path(), "two.txt", "a\nb\n");
    let three = write(dir.path(), "three.txt", "a\nb\nc\n");
    let o = run(&["--metric", "bleu", "--hyp", &two, "--ref", &three]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("has 2 lines") && err.contains("has 3") && err.contains("three.txt"),
        "{err}"
    );

    let missing = dir.path().join("missing.txt");
    let o = run(&[
        "--metric",
        "wer",
        "--hyp",
        missing.to_str().unwrap(),
        "--ref",
        &two,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot read") && err.contains("missing.txt"),
        "{err}"
    );

    let binary = dir.path().join("bin.txt");
    std::fs::write(&binary, [0x61, 0xff, 0x0a]).unwrap();
    let o = run(&[
        "--metric",
        "chrf",
        "--hyp",
        binary.to_str().unwrap(),
        "--ref",
        &two,
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not UTF-8"));

    let o = run(&["--metric", "rouge", "--hyp", &two, "--ref", &two]);
    assert!(!o.status.success());
}
