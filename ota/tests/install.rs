//! The device-side install (the updater, no broker, no `tolk` process) against the threat rows
//! of `deploy/README.md`; each row's test names its number. The `tolk ota install` rows (11, 13)
//! are in `runtime/tests/ota_install.rs`, the MQTT rows in `ota/tests/mqtt.rs`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tolk_config::bundle::{sign_bundle_dir, BundleInfo, MANIFEST_FILE};
use tolk_config::protocol::{Block, JobDocument, JobStatus, Transfer};
use tolk_ota::{LlamaProbe, Updater};

fn last(u: &Updater) -> (JobStatus, String) {
    let r = u.state().last_job.clone().expect("a job finished");
    (r.status, r.reason)
}

#[test]
fn row01_unsigned_unknown_key_and_flipped_bytes_are_rejected() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let good = bundle(&t.path().join("good"), 2, &k);
    type Mutate = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Mutate, &str)> = vec![
        (
            "unsigned",
            Box::new(|d: &Path| {
                std::fs::write(d.join("manifest.sig"), br#"{"signatures":[]}"#).unwrap()
            }),
            "unsigned",
        ),
        (
            "unknown key",
            Box::new(|d: &Path| {
                sign_bundle_dir(d, &info(2), &[&key(9)]).unwrap();
            }),
            "untrusted key",
        ),
        (
            "flipped manifest byte",
            Box::new(|d: &Path| flip(&d.join(MANIFEST_FILE), 40)),
            "does not match the manifest",
        ),
        (
            "flipped weight byte",
            Box::new(|d: &Path| flip(&d.join("model/model.safetensors"), 200)),
            "sha256",
        ),
        (
            "flipped tokenizer byte",
            Box::new(|d: &Path| flip(&d.join("tokenizer.json"), 2)),
            "sha256",
        ),
        (
            "truncated weights",
            Box::new(|d: &Path| {
                let p = d.join("model/model.safetensors");
                let n = std::fs::metadata(&p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(n - 10)
                    .unwrap();
            }),
            "signed size",
        ),
        (
            "garbage signature file",
            Box::new(|d: &Path| std::fs::write(d.join("manifest.sig"), b"\xff\x00").unwrap()),
            "malformed",
        ),
    ];
    for (i, (name, mutate, want)) in cases.iter().enumerate() {
        let dir = t.path().join(format!("case{i}"));
        copy_dir(&good, &dir);
        mutate(&dir);
        let mut u = device_updater(&root, &[&k]);
        u.install_dir(&format!("bad-{i}"), &dir).unwrap();
        let (status, reason) = last(&u);
        assert_eq!(status, JobStatus::Failed, "{name}");
        assert!(
            reason.contains(want),
            "{name}: reason {reason:?} lacks {want:?}"
        );
        assert_active(&root, &k, 1);
        println!("row 1 {name}: FAILED {reason}");
    }
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

#[test]
fn row02_rollback_is_refused_across_restarts() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let b3 = bundle(&t.path().join("b3"), 3, &k);
    let b2 = bundle(&t.path().join("b2"), 2, &k);
    device_updater(&root, &[&k])
        .install_dir("job-3", &b3)
        .unwrap();
    assert_active(&root, &k, 3);
    // "Power loss": a fresh Updater reads only what was persisted.
    let mut u = device_updater(&root, &[&k]);
    assert_eq!(u.state().highest_version, 3);
    u.install_dir("job-2", &b2).unwrap();
    let (s, r) = last(&u);
    assert_eq!(s, JobStatus::Failed);
    assert!(r.contains("rollback refused"), "{r}");
    // The same version again under a new job id is refused too.
    u.install_dir("job-3-again", &b3).unwrap();
    assert!(last(&u).1.contains("rollback refused"));
    assert_active(&root, &k, 3);
}

#[test]
fn row03_expired_manifest_is_stale_and_replays_change_nothing() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let dir = t.path().join("old");
    write_model(&dir, 5);
    sign_bundle_dir(
        &dir,
        &BundleInfo {
            expires: now() - 3600,
            ..info(2)
        },
        &[&k],
    )
    .unwrap();
    let mut u = device_updater(&root, &[&k]);
    u.install_dir("expired", &dir).unwrap();
    let (s, r) = last(&u);
    assert_eq!(s, JobStatus::Failed);
    assert!(r.contains("stale"), "{r}");
    assert!(u.device_state().stale, "stale is surfaced in the state");
    // Replay of a captured, already finished job: reported again, nothing changes.
    let before = u.state().clone();
    u.take_reports();
    u.install_dir("job-1", &bundle(&t.path().join("b1again"), 1, &k))
        .unwrap();
    let reports = u.take_reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].job_id, "job-1");
    assert_eq!(reports[0].status, JobStatus::Succeeded);
    assert_eq!(u.state().active, before.active);
    // Row 4 (policy): a clock far in the future sees a valid manifest as expired, an epoch clock
    // accepts it (expiry cannot be enforced without time; the signature and version still are).
    let b2 = bundle(&t.path().join("b2"), 2, &k);
    let mut u = device_updater(&root, &[&k]);
    u.set_clock(Box::new(|| now() + 10 * 365 * 86_400));
    u.install_dir("future", &b2).unwrap();
    assert!(last(&u).1.contains("expired"));
    let mut u = device_updater(&root, &[&k]);
    u.set_clock(Box::new(|| 0));
    u.install_dir("epoch", &b2).unwrap();
    assert_eq!(last(&u).0, JobStatus::Succeeded);
    assert_active(&root, &k, 2);
}

#[test]
fn row06_mixed_files_and_newer_runtime_are_refused() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let v1 = bundle(&t.path().join("v1"), 1, &k);
    let mixed = bundle(&t.path().join("mixed"), 2, &k);
    std::fs::copy(v1.join("tokenizer.json"), mixed.join("tokenizer.json")).unwrap();
    let mut u = device_updater(&root, &[&k]);
    u.install_dir("mixed", &mixed).unwrap();
    let (s, r) = last(&u);
    assert_eq!(s, JobStatus::Failed);
    assert!(r.contains("tokenizer.json") && r.contains("sha256"), "{r}");
    let newer = t.path().join("newer");
    write_model(&newer, 3);
    sign_bundle_dir(
        &newer,
        &BundleInfo {
            min_runtime: "99.0.0".into(),
            ..info(3)
        },
        &[&k],
    )
    .unwrap();
    u.install_dir("newer", &newer).unwrap();
    assert!(
        last(&u).1.contains("needs runtime 99.0.0"),
        "{:?}",
        last(&u)
    );
    assert_active(&root, &k, 1);
}

#[test]
fn row07_other_hardware_is_refused() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let d = t.path().join("other");
    write_model(&d, 2);
    sign_bundle_dir(
        &d,
        &BundleInfo {
            compatible: "other-board".into(),
            ..info(2)
        },
        &[&k],
    )
    .unwrap();
    let mut u = device_updater(&root, &[&k]);
    u.install_dir("other", &d).unwrap();
    let (s, r) = last(&u);
    assert_eq!(s, JobStatus::Failed);
    assert!(r.contains("other-board"), "{r}");
    assert_active(&root, &k, 1);
}

#[test]
fn row08_endless_data_huge_metadata_and_disk_full() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    // More bytes than signed: the read is capped and the job fails.
    let long = bundle(&t.path().join("long"), 2, &k);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(long.join("tokenizer.json"))
        .unwrap();
    std::io::Write::write_all(&mut f, &vec![b' '; 1 << 20]).unwrap();
    let mut u = device_updater(&root, &[&k]);
    u.install_dir("long", &long).unwrap();
    assert!(
        last(&u).1.contains("more bytes than the signed size"),
        "{:?}",
        last(&u)
    );
    // Huge metadata: refused before parsing.
    let huge = bundle(&t.path().join("huge"), 2, &k);
    std::fs::write(huge.join(MANIFEST_FILE), vec![b' '; 70_000]).unwrap();
    u.install_dir("huge", &huge).unwrap();
    assert!(last(&u).1.contains("limit"), "{:?}", last(&u));
    // Disk full: a signed manifest declaring 1 PiB is refused by the free-space check before
    // any byte is written.
    let big = bundle(&t.path().join("big"), 2, &k);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(big.join(MANIFEST_FILE)).unwrap()).unwrap();
    m["files"][0]["size"] = serde_json::json!(1u64 << 50);
    let mb = serde_json::to_vec(&m).unwrap();
    let sig = serde_json::to_vec(&tolk_config::bundle::Signatures {
        signatures: vec![k.sign(&mb)],
    })
    .unwrap();
    let doc = JobDocument::install("big", &mb, &sig, Transfer::Mqtt { block_size: 4096 });
    u.handle_job(&doc).unwrap();
    let (s, r) = last(&u);
    assert_eq!(s, JobStatus::Failed);
    assert!(r.contains("not enough free space"), "{r}");
    assert!(
        std::fs::read_dir(root.join("staging"))
            .unwrap()
            .next()
            .is_none(),
        "staging left empty"
    );
    // Oversize data-plane packet: refused by the decoder.
    let blk = Block {
        job_id: "j".into(),
        file: 0,
        index: 0,
        data: vec![0; 200_000],
    }
    .encode();
    assert!(Block::decode(&blk).is_err());
    assert_active(&root, &k, 1);
}

/// Row 9 in process: blocks dropped, reordered and duplicated, with a restart in the middle;
/// the install happens once and the files match the signed hashes.
#[test]
fn row09_blocks_dropped_reordered_duplicated_and_resumed() {
    use rand::seq::SliceRandom;
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let b2 = bundle(&t.path().join("b2"), 2, &k);
    let (mb, sb) = tolk_config::bundle::read_metadata(&b2).unwrap();
    let m = tolk_config::bundle::Manifest::parse(&mb).unwrap();
    let bs = 1024u64;
    let doc = JobDocument::install(
        "blocks",
        &mb,
        &sb,
        Transfer::Mqtt {
            block_size: bs as u32,
        },
    );
    let mut blocks = Vec::new();
    for (fi, f) in m.files.iter().enumerate() {
        let data = std::fs::read(b2.join(&f.path)).unwrap();
        for (i, c) in data.chunks(bs as usize).enumerate() {
            blocks.push(Block {
                job_id: "blocks".into(),
                file: fi as u32,
                index: i as u32,
                data: c.to_vec(),
            });
        }
    }
    let mut rng = rand::rng();
    blocks.shuffle(&mut rng);
    let n = blocks.len();
    let mut u = device_updater(&root, &[&k]);
    u.handle_job(&doc).unwrap();
    // First half, each block twice, then a "crash".
    for b in &blocks[..n / 2] {
        u.handle_block(b).unwrap();
        u.handle_block(b).unwrap();
    }
    drop(u);
    let mut u = device_updater(&root, &[&k]);
    u.handle_job(&doc).unwrap();
    let missing: usize = u
        .job()
        .unwrap()
        .missing(usize::MAX)
        .iter()
        .map(|(_, b)| b.len())
        .sum();
    assert_eq!(missing, n - n / 2, "resume keeps what was received");
    // Second half with every 5th block dropped: never activated while incomplete.
    for (i, b) in blocks[n / 2..].iter().enumerate() {
        if i % 5 != 0 {
            u.handle_block(b).unwrap();
        }
    }
    assert!(!u.install_if_complete().unwrap());
    assert_active(&root, &k, 1);
    // The dropped ones, again shuffled, plus a corrupt block of the right length (wrong data):
    // the file then fails its hash, is cleared and re-requested.
    let (f0, missing0) = u.job().unwrap().missing(usize::MAX)[0].clone();
    let idx = missing0[0];
    let good = blocks
        .iter()
        .find(|b| b.file == f0 && b.index == idx)
        .unwrap()
        .clone();
    let mut bad = good.clone();
    bad.data.iter_mut().for_each(|x| *x = x.wrapping_add(1));
    u.handle_block(&bad).unwrap();
    let mut rest: Vec<&Block> = blocks.iter().collect();
    rest.shuffle(&mut rng);
    for b in rest {
        u.handle_block(b).unwrap();
    }
    // The corrupt block made file f0 fail its hash; a second full pass completes it.
    for b in &blocks {
        u.handle_block(b).unwrap();
    }
    assert!(u.install_if_complete().unwrap());
    assert_eq!(last(&u).0, JobStatus::Succeeded, "{:?}", last(&u));
    assert_active(&root, &k, 2);
    println!(
        "row 9: {n} blocks, {} duplicates, {} dropped, 1 corrupt, 1 restart",
        n / 2,
        (n - n / 2).div_ceil(5)
    );
}

#[test]
fn row12_unhealthy_models_are_reverted_with_the_reason() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    // NaN weights.
    let nan = t.path().join("nan");
    let m = write_model(&nan, 2);
    for (name, mut tensor) in m.named_tensors() {
        if name == "model.norm.weight" {
            let _ = tensor.fill_(f64::NAN);
        }
    }
    m.save(&nan.join("model")).unwrap();
    sign_bundle_dir(&nan, &info(2), &[&k]).unwrap();
    // A missing tensor.
    let missing = t.path().join("missing");
    let m = write_model(&missing, 3);
    let kept: Vec<(String, tch::Tensor)> = m
        .named_tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.norm.weight")
        .collect();
    tch::Tensor::write_safetensors(&kept, missing.join("model/model.safetensors")).unwrap();
    sign_bundle_dir(&missing, &info(3), &[&k]).unwrap();
    for (dir, want) in [(&nan, "NaN"), (&missing, "model.norm.weight")] {
        let mut u = device_updater(&root, &[&k]);
        u.install_dir(dir.file_name().unwrap().to_str().unwrap(), dir)
            .unwrap();
        let (s, r) = last(&u);
        assert_eq!(s, JobStatus::Failed);
        assert!(r.contains(want), "{r}");
        assert!(u.state().pending.is_none());
        assert_active(&root, &k, 1);
        println!("row 12: FAILED {r}");
    }
    // Latency regression: a budget no model meets.
    let slow = bundle(&t.path().join("slow"), 4, &k);
    let mut u = Updater::open(
        &root,
        device_settings(&[&k]),
        Box::new(LlamaProbe::new(Duration::from_nanos(1))),
    )
    .unwrap();
    u.install_dir("slow", &slow).unwrap();
    let (s, r) = last(&u);
    assert_eq!(s, JobStatus::Failed);
    assert!(r.contains("latency"), "{r}");
    assert_active(&root, &k, 1);
}

#[test]
fn row15_one_job_at_a_time_idempotent_and_cancel() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let b2 = bundle(&t.path().join("b2"), 2, &k);
    let b3 = bundle(&t.path().join("b3"), 3, &k);
    let doc = |id: &str, b: &Path| {
        let (m, s) = tolk_config::bundle::read_metadata(b).unwrap();
        JobDocument::install(id, &m, &s, Transfer::Mqtt { block_size: 4096 })
    };
    let mut u = device_updater(&root, &[&k]);
    u.handle_job(&doc("a", &b2)).unwrap();
    u.handle_job(&doc("a", &b2)).unwrap(); // duplicate: nothing new
    u.handle_job(&doc("b", &b3)).unwrap(); // concurrent: refused while a runs
    let reports = u.take_reports();
    let statuses: Vec<(String, JobStatus)> = reports
        .iter()
        .map(|r| (r.job_id.clone(), r.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("a".into(), JobStatus::Queued),
            ("a".into(), JobStatus::Downloading),
            ("b".into(), JobStatus::Failed)
        ]
    );
    assert!(reports[2].reason.contains("busy"));
    let cancel = JobDocument {
        job_id: "a".into(),
        operation: tolk_config::protocol::Operation::Cancel,
        manifest: String::new(),
        signatures: String::new(),
        transfer: None,
    };
    u.handle_job(&cancel).unwrap();
    u.handle_job(&cancel).unwrap();
    assert_eq!(last(&u).0, JobStatus::Canceled);
    assert!(u.job().is_none());
    // After the cancel, b runs to the end (URL transfer).
    u.install_dir("b", &b3).unwrap();
    assert_eq!(last(&u).0, JobStatus::Succeeded);
    // b again: idempotent.
    u.install_dir("b", &b3).unwrap();
    assert_active(&root, &k, 3);
    // A canceled job id is finished: sending it again does not restart it.
    u.handle_job(&doc("a", &b2)).unwrap();
    assert!(u.job().is_none());
}

#[test]
fn row17_key_rotation() {
    let (old, new) = (key(1), key(2));
    let (t, root) = device_with_v1(&old);
    // During the rotation bundles carry both signatures; the device trusts both keys.
    let b2 = t.path().join("b2");
    write_model(&b2, 2);
    sign_bundle_dir(&b2, &info(2), &[&old, &new]).unwrap();
    let mut u = device_updater(&root, &[&old, &new]);
    u.install_dir("b2", &b2).unwrap();
    assert_eq!(last(&u).0, JobStatus::Succeeded);
    // After the rotation the device trusts only the new key: the old one is rejected.
    let b3 = bundle(&t.path().join("b3"), 3, &old);
    let mut u = device_updater(&root, &[&new]);
    u.install_dir("b3", &b3).unwrap();
    assert!(last(&u).1.contains("untrusted"), "{:?}", last(&u));
    let b4 = bundle(&t.path().join("b4"), 4, &new);
    u.install_dir("b4", &b4).unwrap();
    assert_eq!(last(&u).0, JobStatus::Succeeded);
}

#[test]
fn row05_huge_version_recovers_by_full_key_rotation() {
    let (compromised, fresh) = (key(1), key(2));
    let (t, root) = device_with_v1(&compromised);
    // A leaked key pushes the largest version the anti-rollback counter will ever see.
    let huge = bundle(&t.path().join("huge"), 1 << 63, &compromised);
    let mut u = device_updater(&root, &[&compromised]);
    u.install_dir("huge", &huge).unwrap();
    assert_eq!(last(&u).0, JobStatus::Succeeded);
    assert_eq!(u.state().highest_version, 1 << 63);
    // While the leaked key stays trusted (also beside a new one), nothing lower installs.
    let b2 = bundle(&t.path().join("b2"), 2, &fresh);
    let mut u = device_updater(&root, &[&compromised, &fresh]);
    u.install_dir("b2", &b2).unwrap();
    assert!(last(&u).1.contains("rollback refused"), "{:?}", last(&u));
    // The operator rotates fully: only the fresh key is trusted. N + 1 from it installs, and
    // the floor binds to the fresh key from then on (across restarts).
    let mut u = device_updater(&root, &[&fresh]);
    u.install_dir("b2-after-rotation", &b2).unwrap();
    assert_eq!(last(&u).0, JobStatus::Succeeded, "{:?}", last(&u));
    assert_active(&root, &fresh, 2);
    let mut u = device_updater(&root, &[&fresh]);
    assert_eq!(u.state().highest_version, 2);
    let b1 = bundle(&t.path().join("fresh-v1"), 1, &fresh);
    u.install_dir("b1", &b1).unwrap();
    assert!(last(&u).1.contains("rollback refused"), "{:?}", last(&u));
    let b3 = bundle(&t.path().join("b3"), 3, &fresh);
    u.install_dir("b3", &b3).unwrap();
    assert_eq!(last(&u).0, JobStatus::Succeeded);
}

// ---- fuzzing the device-side MQTT payload handlers ----

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Hostile job documents and blocks fed to the device's handlers (decode, then handle):
    /// never a panic, never an activation, the active slot keeps verifying.
    #[test]
    fn hostile_payloads_never_activate(
        docs in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 1..4),
        blocks in proptest::collection::vec((0u32..4, 0u32..40, proptest::bool::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..1100)), 1..40),
        garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
    ) {
        let (t, root) = fuzz_device();
        let k = key(1);
        let mut u = device_updater(&root, &[&k]);
        // A valid, in-progress job so that blocks reach the writer.
        let (m, s) = tolk_config::bundle::read_metadata(&t.join("b2")).unwrap();
        u.handle_job(&JobDocument::install("fuzz", &m, &s, Transfer::Mqtt { block_size: 1024 })).unwrap();
        for d in &docs {
            if let Ok(doc) = JobDocument::decode(d) { u.handle_job(&doc).unwrap(); }
        }
        let _ = Block::decode(&garbage);
        for (file, index, full, mut data) in blocks {
            if full { data.resize(1024, 0); }
            let enc = Block { job_id: "fuzz".into(), file, index, data }.encode();
            if let Ok(b) = Block::decode(&enc) { u.handle_block(&b).unwrap(); }
            u.install_if_complete().unwrap();
        }
        proptest::prop_assert_eq!(u.state().active.as_ref().unwrap().version, 1);
        assert_active(&root, &k, 1);
    }
}

/// One device with v1 active and a signed v2 next to it, shared by the fuzz cases.
fn fuzz_device() -> (PathBuf, PathBuf) {
    use std::sync::OnceLock;
    static DEV: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (t, root) = DEV.get_or_init(|| {
        let k = key(1);
        let (t, root) = device_with_v1(&k);
        bundle(&t.path().join("b2"), 2, &k);
        (t, root)
    });
    (t.path().to_path_buf(), root.clone())
}
