//! The speech translator engine: unit extractor + Llama decoder + unit vocoders, loaded once
//! from a translator folder (the README section "The translator folder") and shared (`Arc`) by
//! any number of streams: each audio stream owns a unit stream ([`Translator::unit_stream`]) and
//! a [`DecodeSession`].
//!
//! ```text
//! DIR/tolk-model.json            ModelManifest
//! DIR/llm/                       Llama (config.json, model.safetensors) + tokenizer.json
//! DIR/units/kmeans.safetensors   k-means centroids (MFCC 50 Hz or HuBERT layer L features)
//! DIR/vocoder-<lang>/            CodeHiFiGan per target language
//! ```
//!
//! - [`manifest`]: `tolk-model.json`, strict parsing and validation;
//! - [`decode`]: constrained decoding in every [`Mode`] with [`Event`]s as tokens come;
//! - [`batch`]: several sampled continuations of one prompt decoded in lockstep;
//! - [`session`]: [`DecodeSession`], the per-stream KV cache, sampler and vocoder streams: units
//!   in, text deltas and PCM chunks out.

pub mod batch;
pub mod decode;
pub mod manifest;
pub mod session;
pub mod testing;

pub use decode::{Confidence, Event, Mode, Stop, TextStreamer, Timings, TranslationOutput};
pub use manifest::{Direction, ModelManifest, Strategy, UnitsSpec, MANIFEST_FILE, MODEL_FORMAT};
pub use session::{DecodeSession, Output, Translation, DEFAULT_VOCODER_CHUNK_UNITS};

use crate::llama::{KvCache, Llama, LoadOptions};
use crate::prompt::{Lang, PromptFormat};
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::Tokenizer;
use crate::units::{
    mfcc_50hz_config, HubertLoadOptions, UnitExtractor, UnitId, UnitStream, WhisperLoadOptions,
};
use crate::vocoder::{CodeHiFiGan, SynthesisOptions, VocoderStream};
use crate::{ModelError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind};

/// Source units a default session's cache has room for (30 s of 50 Hz units before
/// deduplication).
pub const DEFAULT_MAX_SOURCE_UNITS: usize = 1500;

/// A loaded translator. Immutable: share it with `Arc` and give each stream its own unit stream
/// and [`DecodeSession`].
pub struct Translator {
    dir: PathBuf,
    manifest: ModelManifest,
    llm: Llama,
    tokenizer: Tokenizer,
    format: PromptFormat,
    extractor: Arc<UnitExtractor>,
    vocoders: HashMap<Lang, Arc<CodeHiFiGan>>,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("dir", &self.dir)
            .field("manifest", &self.manifest)
            .field("format", &self.format)
            .finish()
    }
}

/// Fails with a `ModelError::Io` naming `path` when it does not exist.
fn require(path: &Path, what: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    Err(ModelError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            if what == "translator manifest" {
                format!("{what} not found: not a translator folder")
            } else {
                format!("{what} not found (listed in {MANIFEST_FILE})")
            },
        ),
    })
}

impl Translator {
    /// Loads a translator folder: the manifest, the Llama on `device` in `dtype` with its
    /// extended tokenizer, the unit extractor (MFCC on the CPU, HuBERT on `device`) and one
    /// vocoder per target language (f32 on `device`). Every inconsistency between the parts
    /// (unit counts, vocabulary sizes, missing files) is an error naming the file and field.
    pub fn load(dir: &Path, device: Device, dtype: Kind) -> Result<Self> {
        let _span = tracing::info_span!("translator_load", dir = %dir.display()).entered();
        let mpath = dir.join(MANIFEST_FILE);
        require(&mpath, "translator manifest")?;
        let manifest = ModelManifest::from_file(&mpath)?;
        let k = manifest.num_units;

        let llm_dir = dir.join(&manifest.llm);
        require(&llm_dir.join("config.json"), "llm/config.json")?;
        require(&llm_dir.join("tokenizer.json"), "llm/tokenizer.json")?;
        let llm = Llama::load(
            &llm_dir,
            LoadOptions {
                device,
                dtype,
                max_positions: 4096,
            },
        )?;
        let tokenizer = Tokenizer::for_model(&llm_dir, llm.config().vocab_size)?;
        let format = PromptFormat::from_tokenizer(&tokenizer, k).map_err(|e| {
            ModelError::config(
                &mpath,
                "num_units",
                format!(
                    "{k} units do not match the tokenizer {}: {e}",
                    tokenizer.path().display()
                ),
            )
        })?;
        if (format.vocab_size() as i64) > llm.config().vocab_size {
            return Err(ModelError::config(
                llm_dir.join("config.json"),
                "vocab_size",
                format!(
                    "{} rows, but the extended tokenizer needs {}",
                    llm.config().vocab_size,
                    format.vocab_size()
                ),
            ));
        }

        let kmeans_path = dir.join(manifest.units.kmeans());
        require(&kmeans_path, "k-means centroids")?;
        let extractor = match &manifest.units {
            UnitsSpec::Mfcc { .. } => UnitExtractor::from_mfcc(mfcc_50hz_config(), &kmeans_path)?,
            UnitsSpec::Hubert { hubert, layer, .. } => {
                let hdir = dir.join(hubert);
                require(&hdir.join("config.json"), "HuBERT config.json")?;
                UnitExtractor::from_hubert(
                    &hdir,
                    *layer,
                    &kmeans_path,
                    HubertLoadOptions {
                        device,
                        dtype: Kind::Float,
                    },
                )?
            }
            UnitsSpec::Whisper { whisper, layer, .. } => {
                let wdir = dir.join(whisper);
                require(&wdir.join("config.json"), "Whisper encoder config.json")?;
                require(
                    &wdir.join("model.safetensors"),
                    "Whisper encoder model.safetensors",
                )?;
                UnitExtractor::from_whisper(
                    &wdir,
                    *layer,
                    &kmeans_path,
                    WhisperLoadOptions {
                        device,
                        dtype: Kind::Float,
                    },
                )?
            }
        };
        if extractor.kmeans().k() != k as i64 {
            return Err(ModelError::config(
                &mpath,
                "num_units",
                format!(
                    "{k} units, but {} holds {} centroids",
                    kmeans_path.display(),
                    extractor.kmeans().k()
                ),
            ));
        }

        let mut vocoders = HashMap::new();
        for (lang, sub) in &manifest.vocoders {
            let field = format!("vocoders.{lang}");
            let lang = Lang::parse(lang)?;
            let vdir = dir.join(sub);
            require(&vdir.join("config.json"), "vocoder config.json")?;
            let v = CodeHiFiGan::load(&vdir, device, Kind::Float)?;
            let n = v.config().num_embeddings;
            if n != k as i64 {
                return Err(ModelError::config(
                    &mpath,
                    &field,
                    format!(
                        "{} has {n} unit embeddings, the model {k} units",
                        vdir.display()
                    ),
                ));
            }
            if v.config().speaker.is_some() {
                return Err(ModelError::config(
                    &mpath,
                    &field,
                    format!(
                        "{} is multi-speaker; a translator needs a single-speaker vocoder",
                        vdir.display()
                    ),
                ));
            }
            if manifest.dedup_target_units && !v.has_duration_predictor() {
                return Err(ModelError::config(
                    &mpath,
                    &field,
                    format!(
                        "dedup_target_units is true but {} has no duration predictor",
                        vdir.display()
                    ),
                ));
            }
            vocoders.insert(lang, Arc::new(v));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            llm,
            tokenizer,
            format,
            extractor: Arc::new(extractor),
            vocoders,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    pub fn llm(&self) -> &Llama {
        &self.llm
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn format(&self) -> &PromptFormat {
        &self.format
    }

    pub fn extractor(&self) -> &Arc<UnitExtractor> {
        &self.extractor
    }

    /// The vocoder of target language `lang`.
    pub fn vocoder(&self, lang: Lang) -> Result<&Arc<CodeHiFiGan>> {
        self.vocoders.get(&lang).ok_or_else(|| {
            ModelError::InvalidArgument(format!("the model has no vocoder for `{}`", lang.code()))
        })
    }

    /// Output sample rate of the vocoders (16 kHz).
    pub fn sample_rate(&self) -> i64 {
        self.vocoders
            .values()
            .next()
            .map_or(16_000, |v| v.sampling_rate())
    }

    /// The mode the model speaks with by default (CoM for a CoM model, S2ST otherwise).
    pub fn default_mode(&self) -> Mode {
        Mode::default_for(self.manifest.strategy)
    }

    /// Cache positions a default session holds: a prompt of [`DEFAULT_MAX_SOURCE_UNITS`]
    /// source units plus the longest output, capped by the model's positions.
    pub fn default_cache_capacity(&self) -> i64 {
        let need = DEFAULT_MAX_SOURCE_UNITS
            + 5
            + self.manifest.max_text_tokens
            + self.manifest.max_target_units
            + 2;
        (need as i64).min(self.llm.max_positions())
    }

    /// A fresh KV cache for one stream.
    pub fn new_cache(&self, capacity: i64) -> Result<KvCache> {
        self.llm.new_cache(1, capacity)
    }

    /// Raw 50 Hz units of 16 kHz mono audio (not deduplicated).
    pub fn extract_units(&self, samples_16k: &[f32]) -> Result<Vec<UnitId>> {
        self.extractor.extract(samples_16k)
    }

    /// A streaming unit extractor for one audio stream, with the context and look-ahead that
    /// suit the model's featurizer (none for frame-local MFCC, bounded windows for an encoder).
    pub fn unit_stream(&self) -> UnitStream<Arc<UnitExtractor>> {
        let opts = self.extractor.featurizer().stream_options();
        self.extractor.stream(opts)
    }

    /// Translates source units (greedy, a temporary cache). See [`DecodeSession`] for the
    /// streaming form with speech.
    pub fn translate_units(
        &self,
        src_units: &[u32],
        direction: Direction,
        mode: Mode,
    ) -> Result<TranslationOutput> {
        let mut sampler = Sampler::new(SamplingConfig::greedy())?;
        self.translate_units_with(src_units, direction, mode, &mut sampler)
    }

    /// [`Self::translate_units`] drawing tokens with `sampler` (its RNG advances).
    pub fn translate_units_with(
        &self,
        src_units: &[u32],
        direction: Direction,
        mode: Mode,
        sampler: &mut Sampler,
    ) -> Result<TranslationOutput> {
        let mut cache = self.new_cache(self.default_cache_capacity())?;
        decode::decode(
            self,
            &mut cache,
            sampler,
            src_units,
            direction,
            mode,
            &mut |_| {},
        )
    }

    /// One continuation of the same source per sampler, decoded as one batch (see [`batch`]);
    /// output `i` is what [`Self::translate_units_with`] gives with `samplers[i]`.
    pub fn translate_units_batch(
        &self,
        src_units: &[u32],
        direction: Direction,
        mode: Mode,
        samplers: &mut [Sampler],
    ) -> Result<Vec<TranslationOutput>> {
        batch::decode_batch(
            self,
            samplers,
            src_units,
            direction,
            mode,
            self.default_cache_capacity(),
        )
    }

    /// Extracts the units of 16 kHz mono audio and translates them.
    pub fn translate_audio(
        &self,
        samples_16k: &[f32],
        direction: Direction,
        mode: Mode,
    ) -> Result<TranslationOutput> {
        let t0 = Instant::now();
        let units = self.extract_units(samples_16k)?;
        let extract_s = t0.elapsed().as_secs_f64();
        let mut out = self.translate_units(&units, direction, mode)?;
        out.timings.extract_s = extract_s;
        Ok(out)
    }

    /// Whether the vocoders predict unit durations (the model emits deduplicated units).
    pub fn predicts_durations(&self) -> bool {
        self.manifest.dedup_target_units
    }

    /// PCM (f32, mono, [`Self::sample_rate`]) of target units in language `lang`.
    pub fn synthesize(&self, units: &[u32], lang: Lang) -> Result<Vec<f32>> {
        let v = self.vocoder(lang)?;
        let ids: Vec<i64> = units.iter().map(|&u| u as i64).collect();
        let wav = v.synthesize(
            &ids,
            &SynthesisOptions {
                dur_prediction: self.predicts_durations(),
                speaker: None,
            },
        )?;
        tensor_to_pcm(&wav)
    }

    /// A streaming vocoder for language `lang`, set up as [`Self::synthesize`] (its
    /// concatenated output equals the offline synthesis).
    pub fn vocoder_stream(&self, lang: Lang) -> Result<VocoderStream> {
        VocoderStream::new(self.vocoder(lang)?.clone(), self.predicts_durations(), None)
    }
}

/// A 1-D waveform tensor as host f32 samples.
pub fn tensor_to_pcm(wav: &tch::Tensor) -> Result<Vec<f32>> {
    let host = wav
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_view([-1])?;
    Ok(Vec::<f32>::try_from(&host)?)
}
