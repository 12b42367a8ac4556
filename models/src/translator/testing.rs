//! A tiny translator folder with random weights, in the layout of the README section "The translator folder",
//! **for tests and benchmarks only**: everything that loads a translator (`tolk-train eval`, the
//! engine, the runtime pipeline, `tolk translate`) can run without a trained model. It decodes
//! well-formed but meaningless output. `tolk_training::eval::tiny` re-exports this module.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{Direction, ModelManifest, Strategy, UnitsSpec, MANIFEST_FILE, MODEL_FORMAT};
use crate::checkpoint::save_safetensors;
use crate::llama::{Llama, LlamaConfig, LoadOptions, RopeScaling};
use crate::prompt::{PromptFormat, SpecialToken};
use crate::tokenizer::Tokenizer;
use crate::units::KMeans;
use crate::vocoder::{tensor_specs, DurationPredictorConfig, ResBlockKind, VocoderConfig};
use crate::{ModelError, Result};

/// What [`write_random_translator`] builds.
#[derive(Debug, Clone)]
pub struct TinyTranslatorSpec {
    pub num_units: u32,
    pub strategy: Strategy,
    pub dedup_source_units: bool,
    pub dedup_target_units: bool,
    pub max_text_tokens: usize,
    pub max_target_units: usize,
    pub seed: i64,
    /// Scale of the `<|units|>` and `<|end|>` rows of the LM head.
    pub units_row_scale: f64,
    pub end_row_scale: f64,
}

impl Default for TinyTranslatorSpec {
    fn default() -> Self {
        Self {
            num_units: 16,
            strategy: Strategy::ChainOfModality,
            dedup_source_units: true,
            dedup_target_units: true,
            max_text_tokens: 12,
            max_target_units: 40,
            seed: 7,
            units_row_scale: 3.0,
            end_row_scale: 0.5,
        }
    }
}

/// Texts the tiny BPE tokenizer is trained on (both languages, accented characters included so
/// that some tokens split UTF-8 characters).
const TEXTS: &[&str] = &[
    "Where is the train station?",
    "Où est la gare ?",
    "The next bus leaves at ten past four.",
    "Le prochain bus part à seize heures dix.",
    "A ticket to Lyon costs twelve euros.",
    "Un billet pour Lyon coûte douze euros.",
    "Thank you, have a nice day.",
    "Merci, bonne journée.",
    "Platform three is on the left.",
    "Le quai trois est à gauche.",
];

/// Special tokens of the tiny tokenizer (ids 0, 1, 2), as `tolk-train tokenizer` defaults.
const SPECIAL_TOKENS: &[&str] = &["<pad>", "<s>", "</s>"];

/// The Llama shape of the tiny model (vocabulary set later).
pub fn tiny_llama_config(vocab_size: i64) -> LlamaConfig {
    LlamaConfig {
        vocab_size,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        max_position_embeddings: 2048,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::Default,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(0),
    }
}

/// A small 16 kHz unit vocoder (hop 320 samples = one 50 Hz unit), with a duration predictor.
pub fn tiny_vocoder_config(num_units: u32) -> VocoderConfig {
    VocoderConfig {
        num_embeddings: num_units as i64,
        embedding_dim: 16,
        model_in_dim: 16,
        upsample_rates: vec![5, 4, 4, 2, 2],
        upsample_kernel_sizes: vec![11, 8, 8, 4, 4],
        upsample_initial_channel: 32,
        resblock: ResBlockKind::Two,
        resblock_kernel_sizes: vec![3],
        resblock_dilation_sizes: vec![vec![1, 3]],
        sampling_rate: 16000,
        duration_predictor: Some(DurationPredictorConfig {
            encoder_embed_dim: 16,
            var_pred_hidden_dim: 16,
            var_pred_kernel_size: 3,
            var_pred_dropout: 0.5,
        }),
        speaker: None,
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Trains the tiny byte-level BPE (the setup of `tolk-train tokenizer`) and saves it as `path`.
fn write_tiny_bpe(path: &Path, vocab_size: usize) -> Result<()> {
    let special: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let tok = crate::tokenizer::train_byte_level_bpe(TEXTS.iter(), vocab_size, 1, &special)
        .map_err(|e| tok_err(path, e))?;
    tok.save(path, true).map_err(|e| tok_err(path, e))?;
    Ok(())
}

fn write_vocoder(dir: &Path, cfg: &VocoderConfig, seed: i64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let _g = tch::no_grad_guard();
    tch::manual_seed(seed);
    let tensors: Vec<(String, Tensor)> = tensor_specs(cfg)
        .into_iter()
        .map(|s| {
            let t = if s.name.ends_with("ln1.weight") || s.name.ends_with("ln2.weight") {
                Tensor::ones(s.shape.as_slice(), (Kind::Float, Device::Cpu))
            } else if s.name == "dict.weight" {
                Tensor::randn(s.shape.as_slice(), (Kind::Float, Device::Cpu))
            } else {
                // Larger than HiFi-GAN's 0.01 init so that the random output is audible.
                Tensor::randn(s.shape.as_slice(), (Kind::Float, Device::Cpu)) * 0.1
            };
            (s.name, t)
        })
        .collect();
    save_safetensors(&dir.join("model.safetensors"), &tensors)?;
    let cpath = dir.join("config.json");
    let json = serde_json::to_string_pretty(&cfg.to_json()).map_err(|source| ModelError::Json {
        path: cpath.clone(),
        source,
    })?;
    std::fs::write(&cpath, json).map_err(io_err(&cpath))?;
    Ok(())
}

/// Writes a random translator folder into `dir` (created if needed): a BPE tokenizer trained
/// on a few kiosk sentences and extended with the unit and task tokens, a 2-layer Llama, MFCC
/// k-means centroids and one vocoder per target language. Returns the manifest. For tests and
/// benchmarks: the weights are random, and the same for the same `spec` (libtorch's global RNG
/// is seeded here; a process-wide lock keeps two threads from drawing from it at once, as
/// parallel tests would).
pub fn write_random_translator(dir: &Path, spec: &TinyTranslatorSpec) -> Result<ModelManifest> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let llm_dir = dir.join("llm");
    std::fs::create_dir_all(&llm_dir).map_err(io_err(&llm_dir))?;
    let tok_path = llm_dir.join("tokenizer.json");
    write_tiny_bpe(&tok_path, 320)?;
    let mut tok = Tokenizer::from_file(&tok_path)?;
    // Extend the tokenizer (the throwaway model only receives the new rows) ...
    let mut scratch = Llama::random(
        tiny_llama_config(tok.vocab_size() as i64),
        LoadOptions::default(),
        spec.seed,
    )?;
    let format = PromptFormat::extend(&mut scratch, &mut tok, spec.num_units)?;
    tok.save(&tok_path)?;
    // ... then draw every row at random, so unit and special tokens differ from each other.
    let llm = Llama::random(
        tiny_llama_config(format.vocab_size() as i64),
        LoadOptions::default(),
        spec.seed,
    )?;
    // Nudge the LM head so that random decoding visits every path: a stronger `<|units|>` row
    // ends some text phases on its own, a weaker `<|end|>` row lets unit phases run a while.
    {
        let _g = tch::no_grad_guard();
        let head = llm
            .named_tensors()
            .into_iter()
            .find(|(n, _)| n == "lm_head.weight")
            .map(|(_, t)| t)
            .ok_or_else(|| {
                ModelError::InvalidArgument("the tiny model has no untied lm_head".into())
            })?;
        let scale = |id: u32, by: f64| -> Result<()> {
            let mut row = head.f_get(id as i64)?;
            let _ = row.f_mul_scalar_(by)?;
            Ok(())
        };
        scale(format.id(SpecialToken::Units), spec.units_row_scale)?;
        scale(format.id(SpecialToken::End), spec.end_row_scale)?;
    }
    llm.save(&llm_dir)?;

    let units_dir = dir.join("units");
    std::fs::create_dir_all(&units_dir).map_err(io_err(&units_dir))?;
    tch::manual_seed(spec.seed + 1);
    // MFCC coefficients are O(10): spread the centroids likewise.
    let centroids = Tensor::randn([spec.num_units as i64, 13], (Kind::Float, Device::Cpu)) * 10.0;
    KMeans::new(centroids)?.save(&units_dir.join("kmeans.safetensors"))?;

    let vcfg = tiny_vocoder_config(spec.num_units);
    write_vocoder(&dir.join("vocoder-en"), &vcfg, spec.seed + 2)?;
    write_vocoder(&dir.join("vocoder-fr"), &vcfg, spec.seed + 3)?;

    let manifest = ModelManifest {
        format: MODEL_FORMAT.to_string(),
        strategy: spec.strategy,
        directions: vec![Direction::EnFr, Direction::FrEn],
        num_units: spec.num_units,
        dedup_source_units: spec.dedup_source_units,
        dedup_target_units: spec.dedup_target_units,
        units: UnitsSpec::Mfcc {
            kmeans: "units/kmeans.safetensors".into(),
        },
        llm: "llm".into(),
        vocoders: [
            ("en".to_string(), "vocoder-en".to_string()),
            ("fr".to_string(), "vocoder-fr".to_string()),
        ]
        .into_iter()
        .collect(),
        max_text_tokens: spec.max_text_tokens,
        max_target_units: spec.max_target_units,
    };
    let mpath = dir.join(MANIFEST_FILE);
    let json = serde_json::to_string_pretty(&manifest).map_err(|source| ModelError::Json {
        path: mpath.clone(),
        source,
    })?;
    std::fs::write(&mpath, json).map_err(io_err(&mpath))?;
    Ok(manifest)
}
