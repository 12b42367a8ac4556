//! `tolk-train units-probe`: which encoder layer gives units that carry words rather than voices.
//!
//! The manifests are the same sentences spoken by different synthesizers, one manifest per voice
//! family (`tolk-train voices` sets rendered from one sentence list). For each layer, k-means is
//! fitted on frames of every family (as `tolk-train units --fit-kmeans` does), each utterance
//! becomes a deduplicated unit sequence, and two figures are measured:
//!
//! - **cross-voice retrieval**: for each utterance, the nearest utterance of the same language
//!   spoken by *another* family, by unit edit distance; the share whose nearest one has the same
//!   text. Units that follow the words find the sentence whatever the voice; units that follow
//!   the voice find another sentence of the same voice family rarely (it is excluded) and
//!   otherwise a random one. Chance is 1 / (sentences per language).
//! - **unit edit distance**, normalized by the longer sequence: mean over same-text pairs of
//!   different families, and over different-text pairs; their gap says how much of the sequence
//!   the words decide.
//!
//! A collapsed clustering (few distinct units) cannot score well on retrieval, which is why the
//! distance alone is not the criterion.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tch::Kind;
use tolk_models::units::{dedup, fit_minibatch, FitConfig, UnitExtractor, UnitId};

use super::extract::{load_audio, load_featurizer, sample_frames, streamed_units, AudioItem};
use super::{ExtractorKind, UnitsArgs};
use crate::corpus::manifest::{read_manifest, ReadOptions};
use crate::metrics::wer::align;

/// Arguments of `tolk-train units-probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// One manifest per voice family, all speaking the same sentences.
    #[arg(long = "manifest", required = true)]
    pub manifests: Vec<PathBuf>,
    #[arg(long, value_enum)]
    pub extractor: ExtractorKind,
    /// Converted Whisper encoder folder (with `--extractor whisper`).
    #[arg(long)]
    pub whisper: Option<PathBuf>,
    /// Hugging Face HubertModel folder (with `--extractor hubert`).
    #[arg(long)]
    pub hubert: Option<PathBuf>,
    /// Layers to compare (comma separated; ignored for MFCC).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub layers: Vec<usize>,
    /// Clusters of the k-means fitted per layer.
    #[arg(long, default_value_t = 100)]
    pub clusters: i64,
    #[arg(long, default_value_t = 50_000)]
    pub fit_frames: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Units from the kiosk's streaming extractor rather than the offline encoder.
    #[arg(long)]
    pub streamed: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Figures of one layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub extractor: String,
    pub layer: usize,
    /// Cross-voice retrieval accuracy, % (see the module doc).
    pub retrieval_pct: f64,
    /// Mean normalized unit edit distance, same text / different voice family.
    pub same_text_distance: f64,
    /// ... and different texts.
    pub other_text_distance: f64,
    /// Distinct units used over all utterances (of `clusters`).
    pub units_used: usize,
    /// Mean deduplicated units per second of audio.
    pub units_per_second: f64,
    pub seconds: f64,
}

/// The whole probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub families: Vec<String>,
    pub utterances: usize,
    /// 100 / sentences per language, averaged over languages.
    pub chance_pct: f64,
    pub clusters: i64,
    pub streamed: bool,
    pub layers: Vec<LayerReport>,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "units probe: {} utterances, families {}, K = {}, {} units (chance {:.1} %)",
            self.utterances,
            self.families.join(", "),
            self.clusters,
            if self.streamed { "streamed" } else { "offline" },
            self.chance_pct
        )?;
        writeln!(
            f,
            "| extractor | layer | cross-voice retrieval % | same-text dist | other-text dist | units used | units/s |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|")?;
        for l in &self.layers {
            writeln!(
                f,
                "| {} | {} | {:.1} | {:.3} | {:.3} | {} | {:.1} |",
                l.extractor,
                l.layer,
                l.retrieval_pct,
                l.same_text_distance,
                l.other_text_distance,
                l.units_used,
                l.units_per_second
            )?;
        }
        Ok(())
    }
}

/// One utterance of the probe.
struct Utterance {
    family: usize,
    language: String,
    text: String,
    path: PathBuf,
}

fn distance(a: &[UnitId], b: &[UnitId]) -> f64 {
    let longer = a.len().max(b.len());
    if longer == 0 {
        return 0.0;
    }
    align(a, b).errors() as f64 / longer as f64
}

/// Retrieval accuracy and the two mean distances over the utterances' unit sequences.
fn score(utts: &[Utterance], seqs: &[Vec<UnitId>]) -> (f64, f64, f64) {
    let (mut hits, mut queries) = (0usize, 0usize);
    let (mut same, mut n_same, mut other, mut n_other) = (0.0, 0usize, 0.0, 0usize);
    for (i, u) in utts.iter().enumerate() {
        let mut best: Option<(f64, usize)> = None;
        for (j, v) in utts.iter().enumerate() {
            if v.family == u.family || v.language != u.language {
                continue;
            }
            let d = distance(&seqs[i], &seqs[j]);
            if v.text == u.text {
                same += d;
                n_same += 1;
            } else {
                other += d;
                n_other += 1;
            }
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, j));
            }
        }
        // Only utterances whose text another family also speaks can be retrieved.
        let findable = utts
            .iter()
            .any(|v| v.family != u.family && v.text == u.text && v.language == u.language);
        if let (true, Some((_, j))) = (findable, best) {
            queries += 1;
            hits += usize::from(utts[j].text == u.text);
        }
    }
    (
        100.0 * hits as f64 / queries.max(1) as f64,
        same / n_same.max(1) as f64,
        other / n_other.max(1) as f64,
    )
}

/// Runs the probe over every layer.
pub fn run_probe(args: &ProbeArgs) -> Result<ProbeReport> {
    if args.manifests.len() < 2 {
        bail!("give at least two --manifest (voice families) to compare across");
    }
    let device = tolk_models::device::available_device(&args.device)?;
    let mut families = Vec::new();
    let mut utts = Vec::new();
    for (f, path) in args.manifests.iter().enumerate() {
        let m = read_manifest(path, ReadOptions { check_audio: true })
            .with_context(|| format!("reading manifest {}", path.display()))?;
        families.push(
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
        );
        for e in &m.entries {
            let Some(audio) = &e.audio else { continue };
            utts.push(Utterance {
                family: f,
                language: e.language.clone(),
                text: e.text.clone(),
                path: m.resolve(audio),
            });
        }
    }
    let mut per_lang: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for u in &utts {
        per_lang.entry(&u.language).or_default().insert(&u.text);
    }
    let chance_pct = per_lang
        .values()
        .map(|t| 100.0 / t.len() as f64)
        .sum::<f64>()
        / per_lang.len().max(1) as f64;
    let audio: Vec<Vec<f32>> = utts
        .iter()
        .map(|u| load_audio(&u.path).map_err(|e| anyhow::anyhow!("{}: {e}", u.path.display())))
        .collect::<Result<_>>()?;
    let total_seconds: f64 = audio.iter().map(|a| a.len() as f64 / 16_000.0).sum();
    let items: Vec<AudioItem> = utts
        .iter()
        .map(|u| AudioItem {
            key: u.path.display().to_string(),
            path: u.path.clone(),
        })
        .collect();

    let layers = if args.extractor == ExtractorKind::Mfcc {
        vec![0]
    } else {
        args.layers.clone()
    };
    let mut reports = Vec::new();
    for layer in layers {
        let t0 = Instant::now();
        let units_args = UnitsArgs {
            manifests: args.manifests.clone(),
            extractor: args.extractor,
            hubert: args.hubert.clone(),
            whisper: args.whisper.clone(),
            layer: Some(layer),
            streamed: args.streamed,
            kmeans: None,
            fit_kmeans: Some(args.clusters),
            fit_frames: args.fit_frames,
            fit_steps: 300,
            seed: args.seed,
            save_kmeans: None,
            device: args.device.clone(),
            jobs: Some(1),
            reuse: None,
            out: PathBuf::new(),
            quiet: true,
        };
        let (featurizer, name) = load_featurizer(&units_args, device)?;
        let data = sample_frames(
            featurizer.as_ref(),
            &items,
            args.fit_frames,
            args.seed,
            true,
        )?;
        let mut cfg = FitConfig::new(args.clusters);
        cfg.seed = args.seed;
        let km = fit_minibatch(&data.f_to_device(device)?.f_to_kind(Kind::Float)?, &cfg)
            .context("fitting k-means")?;
        let extractor = Arc::new(UnitExtractor::new(featurizer, km)?);
        let mut seqs = Vec::with_capacity(audio.len());
        for (a, u) in audio.iter().zip(&utts) {
            let units = if args.streamed {
                streamed_units(&extractor, a).map_err(anyhow::Error::msg)
            } else {
                extractor.extract(a).map_err(anyhow::Error::from)
            }
            .with_context(|| format!("units of {}", u.path.display()))?;
            seqs.push(dedup(&units).units);
        }
        let used: std::collections::BTreeSet<UnitId> = seqs.iter().flatten().copied().collect();
        let n_units: usize = seqs.iter().map(Vec::len).sum();
        let (retrieval_pct, same_text_distance, other_text_distance) = score(&utts, &seqs);
        let r = LayerReport {
            extractor: name,
            layer,
            retrieval_pct,
            same_text_distance,
            other_text_distance,
            units_used: used.len(),
            units_per_second: n_units as f64 / total_seconds.max(f64::MIN_POSITIVE),
            seconds: t0.elapsed().as_secs_f64(),
        };
        eprintln!(
            "units-probe: {} layer {}: retrieval {:.1} %, distance same text {:.3} / other {:.3} ({:.0} s)",
            r.extractor,
            r.layer,
            r.retrieval_pct,
            r.same_text_distance,
            r.other_text_distance,
            r.seconds
        );
        reports.push(r);
    }
    let report = ProbeReport {
        families,
        utterances: utts.len(),
        chance_pct,
        clusters: args.clusters,
        streamed: args.streamed,
        layers: reports,
    };
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utt(family: usize, text: &str) -> Utterance {
        Utterance {
            family,
            language: "en".into(),
            text: text.into(),
            path: PathBuf::new(),
        }
    }

    #[test]
    fn retrieval_finds_the_same_text_across_families_only() {
        let utts = [utt(0, "a"), utt(0, "b"), utt(1, "a"), utt(1, "b")];
        // Units follow the words: every utterance finds its text in the other family.
        let words = [vec![1, 2, 3], vec![7, 8, 9], vec![1, 2, 4], vec![7, 8, 9]];
        let (pct, same, other) = score(&utts, &words);
        assert_eq!(pct, 100.0);
        assert!(same < other, "{same} {other}");
        // Units follow the voice: within a family everything looks alike, across families
        // nothing does, so retrieval is no better than chance.
        let voice = [vec![1, 1, 2], vec![1, 2, 2], vec![5, 6, 5], vec![6, 5, 6]];
        let (pct, _, _) = score(&utts, &voice);
        assert!(pct <= 50.0, "{pct}");
    }

    #[test]
    fn distance_is_normalized() {
        assert_eq!(distance(&[1, 2, 3], &[1, 2, 3]), 0.0);
        assert_eq!(distance(&[1, 2, 3, 4], &[]), 1.0);
        assert_eq!(distance(&[], &[]), 0.0);
    }
}
