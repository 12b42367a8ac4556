//! `tolk-train eval`: held-out figures of a translator folder.
//!
//! Every paired entry of the manifest in the asked direction (an entry the other way round is
//! used through [`ManifestEntry::reversed`]) is decoded from its source units (the units file),
//! and the run reports:
//!
//! - **S2TT BLEU** (sacreBLEU corpus BLEU, [`crate::metrics::bleu`]) and **METEOR** of the text
//!   phase against `target_text` (modes with text);
//! - **unit error rate**: Levenshtein distance between the predicted and the reference target
//!   units, both deduplicated, summed over the set and divided by the summed reference length;
//! - **MCD** ([`crate::metrics::mcd::mcd_from_audio`], Kaldi MFCC + DTW) between the synthesized
//!   speech and the reference target speech, averaged over utterances;
//! - **ASR-BLEU** and **ASR-chrF** of the synthesized speech, French or English: Whisper base
//!   ([`whisper`], the default `--asr whisper`) transcribes it, and transcripts and `target_text`
//!   are normalised with Whisper's own normalisers; `--asr pocketsphinx` ([`asr`], English only)
//!   uses [`asr::normalize_for_asr_bleu`] instead. The same recognizer on the reference target
//!   speech gives the **ceiling**;
//! - with `--dnsmos`, the mean **DNSMOS** overall score ([`dnsmos`]) of the synthesized and of the
//!   reference speech;
//! - the decoder's **confidence** per utterance
//!   ([`tolk_models::translator::Confidence`]).
//!
//! Writes `report.md` (a table), `report.json` (figures and per-utterance results), `hyps.txt`
//! and `refs.txt` (line-aligned text), `asr_hyps.txt` / `asr_refs.txt` and `wavs/<id>.wav`
//! (16-bit, 16 kHz).

pub mod asr;
pub mod dnsmos;
pub mod error;
pub mod tiny;
pub mod whisper;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tolk_models::audio::condition::to_mono_16k;
use tolk_models::audio::features::MfccConfig;
use tolk_models::audio::wav::{read_wav, write_wav, WavFormat};
use tolk_models::device::{available_device, parse_dtype};
use tolk_models::prompt::Lang;
use tolk_models::translator::{Confidence, DecodeSession, Direction, Mode, Stop, Translator};

use crate::corpus::manifest::{read_manifest, ManifestEntry, ReadOptions};
use crate::metrics::{bleu, chrf, mcd, meteor, wer};
use crate::toolkit::run_dir::io;
use crate::units::{read_units, UnitsTable};
use dnsmos::DnsmosScore;
pub use error::EvalError;
use error::Result;

/// Arguments of `tolk-train eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Translator folder (tolk-model.json, llm/, units/, vocoder-*/).
    #[arg(long)]
    pub model: PathBuf,
    /// Held-out JSONL manifest (paired entries).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Units file covering the manifest's `audio` and `target_audio` (tolk-train units).
    #[arg(long)]
    pub units: PathBuf,
    /// en-fr or fr-en.
    #[arg(long)]
    pub direction: Direction,
    /// Evaluate the first N entries of the direction only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// com, s2st or s2tt (default: the model's own: com for chain of modality, else s2st).
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Report folder (created).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Python with the recognizer (default: $TOLK_PYTHON, else the project's .venv).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Recognizer of ASR-BLEU: whisper (French and English) or pocketsphinx (English only).
    #[arg(long, value_enum, default_value_t = AsrKind::Whisper)]
    pub asr: AsrKind,
    /// Skip ASR-BLEU (no recognizer needed).
    #[arg(long)]
    pub no_asr: bool,
    /// Also score the synthesized and the reference speech with DNSMOS.
    #[arg(long)]
    pub dnsmos: bool,
}

/// The recognizer of ASR-BLEU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AsrKind {
    Whisper,
    Pocketsphinx,
}

enum Recognizer {
    Whisper(whisper::Whisper),
    PocketSphinx(asr::PocketSphinx),
}

impl Recognizer {
    /// Normalised transcripts of `wavs` and normalised `refs`, and the recognizer's name and
    /// normalisation.
    fn run(
        &mut self,
        wavs: &[PathBuf],
        lang: Lang,
        refs: &[String],
        work: &Path,
    ) -> Result<(Vec<String>, Vec<String>, String, String)> {
        match self {
            Self::Whisper(w) => {
                let t = w.transcribe(wavs, lang, refs, work)?;
                Ok((
                    t.normalized,
                    t.references,
                    w.name.clone().unwrap_or_default(),
                    w.normalization.clone().unwrap_or_default(),
                ))
            }
            Self::PocketSphinx(p) => {
                let h = p.transcribe(wavs, work)?;
                Ok((
                    h.iter().map(|t| asr::normalize_for_asr_bleu(t)).collect(),
                    refs.iter()
                        .map(|t| asr::normalize_for_asr_bleu(t))
                        .collect(),
                    p.name.clone().unwrap_or_default(),
                    "lower-case; characters other than letters, digits and in-word apostrophes \
                     become spaces; whitespace collapsed (both sides)"
                        .to_string(),
                ))
            }
        }
    }
}

/// A translation mode (`com`, `s2st` or `s2tt`): [`Mode`]'s spelling, ASR refused.
fn parse_mode(s: &str) -> Result<Mode> {
    match s.parse::<Mode>()? {
        Mode::Asr => Err(EvalError::NotATranslationMode),
        m => Ok(m),
    }
}

/// One evaluated utterance.
#[derive(Debug, Clone, Serialize)]
pub struct UtteranceResult {
    pub id: String,
    pub reference: String,
    pub hypothesis: String,
    pub units: usize,
    pub reference_units: usize,
    pub unit_edits: usize,
    pub stop: Stop,
    pub text_truncated: bool,
    pub audio_seconds: f64,
    pub mcd: Option<f64>,
    pub asr_hypothesis: Option<String>,
    pub asr_reference: Option<String>,
    pub decode_seconds: f64,
    /// [`Confidence::score`] and its parts.
    pub confidence: f64,
    pub confidence_detail: Confidence,
    pub dnsmos: Option<DnsmosScore>,
    pub dnsmos_reference: Option<DnsmosScore>,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub manifest: String,
    pub direction: Direction,
    pub mode: Mode,
    pub utterances: usize,
    /// Entries of the manifest not in this direction (unpaired or other languages).
    pub skipped_entries: usize,
    pub bleu: Option<f64>,
    pub bleu_signature: Option<String>,
    pub meteor: Option<f64>,
    /// Summed unit edits / summed reference units (deduplicated units).
    pub unit_error_rate: Option<f64>,
    /// Mean MCD in dB over utterances with speech on both sides.
    pub mcd: Option<f64>,
    pub mcd_utterances: usize,
    pub asr_bleu: Option<f64>,
    /// ASR-BLEU of the reference target speech (the recognizer's ceiling).
    pub asr_bleu_reference: Option<f64>,
    /// chrF (sacreBLEU chrF2) of the same normalised transcripts.
    pub asr_chrf: Option<f64>,
    pub asr_chrf_reference: Option<f64>,
    /// Utterances whose synthesized speech is empty.
    pub no_speech: usize,
    /// Mean DNSMOS overall score of the synthesized and of the reference speech (`--dnsmos`).
    pub dnsmos: Option<f64>,
    pub dnsmos_reference: Option<f64>,
    pub asr_recognizer: Option<String>,
    pub asr_normalization: Option<String>,
    /// Decoding real-time factor: decode seconds / source audio seconds (when durations known).
    pub decode_seconds: f64,
    pub per_utterance: Vec<UtteranceResult>,
}

/// The entries of `entries` in `direction`, each turned that way round.
pub fn entries_for(entries: &[ManifestEntry], direction: Direction) -> (Vec<ManifestEntry>, usize) {
    let (src, tgt) = (direction.src().code(), direction.tgt().code());
    let mut out = Vec::new();
    let mut skipped = 0;
    for e in entries {
        let fits = |e: &ManifestEntry| {
            e.language == src
                && e.target_language.as_deref() == Some(tgt)
                && e.target_text.is_some()
        };
        if fits(e) {
            out.push(e.clone());
        } else if let Some(r) = e.reversed().filter(fits) {
            out.push(r);
        } else {
            skipped += 1;
        }
    }
    (out, skipped)
}

fn dedup(units: &[u32]) -> Vec<u32> {
    let mut v = units.to_vec();
    v.dedup();
    v
}

/// A WAV file as 16 kHz mono samples.
pub(crate) fn read_16k(path: &Path) -> Result<Vec<f32>> {
    let w = read_wav(path).map_err(|source| EvalError::ReadAudio {
        path: path.to_path_buf(),
        source,
    })?;
    let (s, _) = to_mono_16k(&w.samples, w.sample_rate, w.channels).map_err(|source| {
        EvalError::ConvertAudio {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(s)
}

/// Checks that the units file `path` (read as `table`) has the model's `num_units`.
pub(crate) fn check_num_units(table: &UnitsTable, path: &Path, num_units: u32) -> Result<()> {
    if table.num_units == num_units {
        return Ok(());
    }
    Err(EvalError::UnitCount {
        path: path.to_path_buf(),
        file: table.num_units,
        model: num_units,
    })
}

/// Writes 16 kHz mono `pcm` to `path` as 16-bit PCM.
pub(crate) fn write_16k(path: &Path, pcm: &[f32]) -> Result<()> {
    write_wav(path, pcm, 16_000, 1, WavFormat::Pcm16).map_err(|source| EvalError::WriteAudio {
        path: path.to_path_buf(),
        source,
    })
}

/// A file name for an utterance id.
pub(crate) fn file_stem(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs `tolk-train eval`.
pub fn run_eval(args: &EvalArgs) -> Result<EvalReport> {
    let device = available_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let translator = Translator::load(&args.model, device, dtype).map_err(|source| {
        EvalError::LoadTranslator {
            path: args.model.clone(),
            source,
        }
    })?;
    let mode = args.mode.unwrap_or_else(|| translator.default_mode());
    mode.task_for(translator.manifest().strategy)?;
    if !translator.manifest().supports_direction(args.direction) {
        return Err(EvalError::UnsupportedDirection {
            model: args.model.clone(),
            direction: args.direction,
            directions: translator
                .manifest()
                .directions
                .iter()
                .map(|d| d.as_str())
                .collect(),
        });
    }
    let manifest = read_manifest(&args.manifest, ReadOptions { check_audio: true })?;
    let table = read_units(&args.units)?;
    check_num_units(&table, &args.units, translator.format().num_units)?;
    let (mut entries, skipped) = entries_for(&manifest.entries, args.direction);
    if let Some(n) = args.limit {
        entries.truncate(n);
    }
    if entries.is_empty() {
        return Err(EvalError::NoEntries {
            manifest: args.manifest.clone(),
            direction: args.direction,
        });
    }
    let tgt = args.direction.tgt();
    let with_asr = mode.has_units() && !args.no_asr;
    // Find the recognizer (and DNSMOS) before the long part.
    let mut recognizer = match (with_asr, args.asr) {
        (false, _) => None,
        (true, AsrKind::Whisper) => Some(Recognizer::Whisper(whisper::Whisper::new(
            asr::find_python(args.python.as_deref())?,
        )?)),
        (true, AsrKind::Pocketsphinx) if tgt != Lang::En => {
            return Err(EvalError::PocketSphinxEnglishOnly {
                direction: args.direction,
                language: tgt.code(),
            })
        }
        (true, AsrKind::Pocketsphinx) => Some(Recognizer::PocketSphinx(asr::PocketSphinx::new(
            asr::find_python(args.python.as_deref())?,
        )?)),
    };
    let dnsmos = if args.dnsmos && mode.has_units() {
        Some(dnsmos::Dnsmos::new(asr::find_python(
            args.python.as_deref(),
        )?)?)
    } else {
        None
    };
    let keep_reference = recognizer.is_some() || dnsmos.is_some();

    let wavs = args.out.join("wavs");
    std::fs::create_dir_all(&wavs).map_err(io(&wavs))?;
    let translator = Arc::new(translator);
    let mut session = DecodeSession::new(Arc::clone(&translator))?;
    let mut results = Vec::new();
    let mut synth_paths = Vec::new();
    let mut ref_paths = Vec::new();
    let mut total_decode = 0.0;
    let (mut edits, mut ref_units_total) = (0usize, 0usize);
    let pb = indicatif::ProgressBar::new(entries.len() as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("eval {bar:30} {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for e in &entries {
        let audio = e.audio.as_deref().ok_or_else(|| EvalError::NoAudio {
            id: e.id.clone(),
            field: "audio",
        })?;
        let src = table.get(audio).ok_or_else(|| EvalError::NoUnits {
            id: e.id.clone(),
            audio: audio.to_string(),
            units: args.units.clone(),
        })?;
        let out = session
            .decode_units(src, args.direction, mode, |_| {})
            .map_err(|source| EvalError::Decode {
                id: e.id.clone(),
                source,
            })?;
        total_decode += out.timings.decode_s;
        let reference = e.target_text.clone().unwrap_or_default();
        let mut r = UtteranceResult {
            id: e.id.clone(),
            reference,
            hypothesis: out.text.clone(),
            units: out.units.len(),
            reference_units: 0,
            unit_edits: 0,
            stop: out.stop,
            text_truncated: out.text_truncated,
            audio_seconds: 0.0,
            mcd: None,
            asr_hypothesis: None,
            asr_reference: None,
            decode_seconds: out.timings.decode_s,
            confidence: out.confidence.score(),
            confidence_detail: out.confidence,
            dnsmos: None,
            dnsmos_reference: None,
        };
        if mode.has_units() {
            let tgt_audio = e
                .target_audio
                .as_deref()
                .ok_or_else(|| EvalError::NoAudio {
                    id: e.id.clone(),
                    field: "target audio",
                })?;
            let reference_units = table.get(tgt_audio).ok_or_else(|| EvalError::NoUnits {
                id: e.id.clone(),
                audio: tgt_audio.to_string(),
                units: args.units.clone(),
            })?;
            let (pred, reference_units) = (dedup(&out.units), dedup(reference_units));
            r.unit_edits = wer::align(&reference_units, &pred).errors();
            r.reference_units = reference_units.len();
            edits += r.unit_edits;
            ref_units_total += r.reference_units;

            let pcm = translator.synthesize(&out.units, tgt)?;
            r.audio_seconds = pcm.len() as f64 / 16_000.0;
            let path = args
                .out
                .join("wavs")
                .join(format!("{}.wav", file_stem(&e.id)));
            write_16k(&path, &pcm)?;
            synth_paths.push(path);
            let ref_pcm = read_16k(&manifest.resolve(tgt_audio))?;
            r.mcd = match mcd::mcd_from_audio(&ref_pcm, &pcm, MfccConfig::default()) {
                Ok(m) => Some(m.mcd),
                Err(err) => {
                    tracing::warn!("entry {}: no MCD: {err}", e.id);
                    None
                }
            };
            if keep_reference {
                let p = args
                    .out
                    .join(".asr/reference")
                    .join(format!("{}.wav", file_stem(&e.id)));
                let dir = p.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                write_16k(&p, &ref_pcm)?;
                ref_paths.push(p);
            }
        }
        results.push(r);
        pb.inc(1);
    }
    pb.finish_and_clear();

    let refs: Vec<&str> = results.iter().map(|r| r.reference.as_str()).collect();
    let hyps: Vec<&str> = results.iter().map(|r| r.hypothesis.as_str()).collect();
    let (bleu_score, meteor_score) = if mode.has_text() {
        (
            Some(bleu::corpus_bleu(&hyps, &refs)?),
            Some(meteor::corpus_meteor(&hyps, &refs)?.score),
        )
    } else {
        (None, None)
    };
    let mcds: Vec<f64> = results.iter().filter_map(|r| r.mcd).collect();
    let mut asr_bleu = None;
    let mut asr_bleu_reference = None;
    let mut asr_chrf = None;
    let mut asr_chrf_reference = None;
    let mut recognizer_name = None;
    let mut normalization = None;
    if let Some(rec) = recognizer.as_mut() {
        let work = args.out.join(".asr");
        let owned_refs: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        let (nh, norm_refs, name, norm) =
            rec.run(&synth_paths, tgt, &owned_refs, &work.join("system"))?;
        let (nc, _, _, _) = rec.run(&ref_paths, tgt, &[], &work.join("ceiling"))?;
        asr_bleu = Some(bleu::corpus_bleu(&nh, &norm_refs)?.score);
        asr_bleu_reference = Some(bleu::corpus_bleu(&nc, &norm_refs)?.score);
        asr_chrf = Some(chrf::corpus_chrf(&nh, &norm_refs)?.score);
        asr_chrf_reference = Some(chrf::corpus_chrf(&nc, &norm_refs)?.score);
        for ((r, h), c) in results.iter_mut().zip(nh).zip(nc) {
            r.asr_hypothesis = Some(h);
            r.asr_reference = Some(c);
        }
        recognizer_name = Some(name);
        normalization = Some(norm);
    }
    let (mut dnsmos_mean, mut dnsmos_ref_mean) = (None, None);
    if let Some(d) = &dnsmos {
        let work = args.out.join(".dnsmos");
        let s = d.score(&synth_paths, &work.join("system"))?;
        let c = d.score(&ref_paths, &work.join("reference"))?;
        dnsmos_mean = dnsmos::mean_ovrl(&s);
        dnsmos_ref_mean = dnsmos::mean_ovrl(&c);
        for ((r, s), c) in results.iter_mut().zip(s).zip(c) {
            r.dnsmos = s;
            r.dnsmos_reference = c;
        }
    }
    let no_speech = if mode.has_units() {
        results.iter().filter(|r| r.audio_seconds == 0.0).count()
    } else {
        0
    };
    let report = EvalReport {
        model: args.model.display().to_string(),
        manifest: args.manifest.display().to_string(),
        direction: args.direction,
        mode,
        utterances: results.len(),
        skipped_entries: skipped,
        bleu: bleu_score.as_ref().map(|b| b.score),
        bleu_signature: bleu_score.as_ref().map(|b| b.signature()),
        meteor: meteor_score,
        unit_error_rate: (mode.has_units() && ref_units_total > 0)
            .then(|| edits as f64 / ref_units_total as f64),
        mcd: (!mcds.is_empty()).then(|| mcds.iter().sum::<f64>() / mcds.len() as f64),
        mcd_utterances: mcds.len(),
        asr_bleu,
        asr_bleu_reference,
        asr_chrf,
        asr_chrf_reference,
        no_speech,
        dnsmos: dnsmos_mean,
        dnsmos_reference: dnsmos_ref_mean,
        asr_recognizer: recognizer_name,
        asr_normalization: normalization,
        decode_seconds: total_decode,
        per_utterance: results,
    };
    write_report(&args.out, &report)?;
    Ok(report)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.digits$}"))
}

/// Writes report.md, report.json, hyps.txt, refs.txt (and the ASR transcripts).
pub fn write_report(out: &Path, r: &EvalReport) -> Result<()> {
    let lines = |f: &dyn Fn(&UtteranceResult) -> String| {
        r.per_utterance
            .iter()
            .map(|u| f(u) + "\n")
            .collect::<String>()
    };
    let clean = |s: &str| s.replace(['\n', '\r'], " ");
    let write = |name: &str, text: String| -> Result<()> {
        let path = out.join(name);
        Ok(std::fs::write(&path, text).map_err(io(&path))?)
    };
    write("hyps.txt", lines(&|u| clean(&u.hypothesis)))?;
    write("refs.txt", lines(&|u| clean(&u.reference)))?;
    if r.asr_bleu.is_some() {
        write(
            "asr_hyps.txt",
            lines(&|u| u.asr_hypothesis.clone().unwrap_or_default()),
        )?;
        write(
            "asr_refs.txt",
            lines(&|u| u.asr_reference.clone().unwrap_or_default()),
        )?;
    }
    write(
        "report.json",
        serde_json::to_string_pretty(r).map_err(EvalError::Serialize)?,
    )?;
    let mut md = format!(
        "# Evaluation of `{}`\n\n{} utterances of `{}`, direction {}, mode {}.\n\n\
         | metric | value |\n|---|---|\n",
        r.model,
        r.utterances,
        r.manifest,
        r.direction,
        r.mode.as_str()
    );
    let mut row = |name: &str, v: String| md.push_str(&format!("| {name} | {v} |\n"));
    row("S2TT BLEU (text phase)", fmt(r.bleu, 2));
    row("METEOR (text phase)", fmt(r.meteor, 4));
    row("unit error rate (dedup. units)", fmt(r.unit_error_rate, 4));
    row(
        &format!("MCD, dB ({} utterances)", r.mcd_utterances),
        fmt(r.mcd, 2),
    );
    row("ASR-BLEU (synthesized speech)", fmt(r.asr_bleu, 2));
    row(
        "ASR-BLEU of the reference speech (ceiling)",
        fmt(r.asr_bleu_reference, 2),
    );
    row("ASR-chrF (synthesized speech)", fmt(r.asr_chrf, 2));
    row(
        "ASR-chrF of the reference speech (ceiling)",
        fmt(r.asr_chrf_reference, 2),
    );
    row("utterances without speech", r.no_speech.to_string());
    row("DNSMOS overall (synthesized speech)", fmt(r.dnsmos, 2));
    row(
        "DNSMOS overall (reference speech)",
        fmt(r.dnsmos_reference, 2),
    );
    row("decoding time, s", format!("{:.2}", r.decode_seconds));
    if let Some(sig) = &r.bleu_signature {
        md.push_str(&format!("\nBLEU signature: `{sig}`\n"));
    }
    if let (Some(name), Some(norm)) = (&r.asr_recognizer, &r.asr_normalization) {
        md.push_str(&format!(
            "\nASR-BLEU: {name}; normalisation of hypotheses and references: {norm}.\n"
        ));
    }
    write("report.md", md)?;
    Ok(())
}
