//! Reference-free speech quality: DNSMOS P.835 (signal, background, overall) and P.808, from the
//! ONNX models of PyPI `speechmos`, through `training/scripts/dnsmos.py` (compiled in, run by
//! the project's Python like [`super::asr`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::asr::{check_answers, check_imports, run_script, write_list};
use super::error::Result;
use crate::toolkit::run_dir::io;

/// The scorer script (`training/scripts/dnsmos.py`).
pub const SCRIPT: &str = include_str!("../../scripts/dnsmos.py");

/// DNSMOS of one clip (mean opinion scores, 1 to 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DnsmosScore {
    pub ovrl: f64,
    pub sig: f64,
    pub bak: f64,
    pub p808: f64,
}

#[derive(Debug, Deserialize)]
struct Row {
    wav: String,
    ovrl: Option<f64>,
    sig: Option<f64>,
    bak: Option<f64>,
    p808: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Output {
    scores: Vec<Row>,
}

/// A Python that can run DNSMOS.
#[derive(Debug, Clone)]
pub struct Dnsmos {
    pub python: PathBuf,
}

impl Dnsmos {
    pub fn new(python: PathBuf) -> Result<Self> {
        check_imports(&python, "speechmos, librosa, onnxruntime", "DNSMOS")?;
        Ok(Self { python })
    }

    /// Scores WAV files in order; `None` for a clip with no speech to score (under 0.1 s).
    pub fn score(&self, wavs: &[PathBuf], work: &Path) -> Result<Vec<Option<DnsmosScore>>> {
        std::fs::create_dir_all(work).map_err(io(work))?;
        let list = work.join("wavs.txt");
        write_list(wavs, &list)?;
        let parsed: Output = run_script(
            &self.python,
            work,
            ("dnsmos.py", SCRIPT),
            &["--list".as_ref(), list.as_os_str()],
            "dnsmos.json",
            "DNSMOS",
        )?;
        check_answers(
            "DNSMOS",
            "scores",
            parsed.scores.iter().map(|r| r.wav.as_str()),
            wavs,
        )?;
        Ok(parsed
            .scores
            .into_iter()
            .map(|r| match (r.ovrl, r.sig, r.bak, r.p808) {
                (Some(ovrl), Some(sig), Some(bak), Some(p808)) => Some(DnsmosScore {
                    ovrl,
                    sig,
                    bak,
                    p808,
                }),
                _ => None,
            })
            .collect())
    }
}

/// Mean overall score of the clips that have one.
pub fn mean_ovrl(scores: &[Option<DnsmosScore>]) -> Option<f64> {
    let v: Vec<f64> = scores.iter().flatten().map(|s| s.ovrl).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}
