//! `tolk model ...`: inspect, logits, generate and bench on a Hugging Face Llama folder, and
//! `import-gguf` to make such a folder from a llama.cpp GGUF file.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tolk_models::device::{available_device, dtype_name, parse_dtype, read_bandwidth};
use tolk_models::generate::{generate, GenerateOptions};
use tolk_models::llama::gguf::import_llama;
use tolk_models::llama::native::{dequantized_llama, NativeDecoder, NativeOptions, WeightFormat};
use tolk_models::llama::{Llama, LlamaConfig, LoadOptions};
use tolk_models::sampling::{Sampler, SamplingConfig};
use tolk_models::tokenizer::Tokenizer;

#[derive(Args, Clone)]
pub struct LoadArgs {
    /// Hugging Face model folder (config.json, model.safetensors or shards, tokenizer.json).
    dir: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Longest sequence (prompt + output) to support.
    #[arg(long, default_value_t = 2048)]
    max_len: i64,
}

impl LoadArgs {
    fn options(&self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            device: available_device(&self.device)?,
            dtype: parse_dtype(&self.dtype)?,
            max_positions: self.max_len,
        })
    }

    fn load(&self) -> Result<(Llama, Tokenizer)> {
        let model = Llama::load(&self.dir, self.options()?)
            .with_context(|| format!("loading the model in {}", self.dir.display()))?;
        let tok = Tokenizer::for_model(&self.dir, model.config().vocab_size)?;
        Ok((model, tok))
    }
}

#[derive(Args, Clone)]
pub struct SampleArgs {
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Config, parameter count, dtype and memory of a checkpoint.
    Inspect {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Top-k next-token logits at the last position of a prompt.
    Logits {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 10)]
        top_k: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Continue a prompt and report tokens/s.
    Generate {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        #[command(flatten)]
        sample: SampleArgs,
        /// Do not stop at the model's end-of-sequence token.
        #[arg(long)]
        ignore_eos: bool,
    },
    /// Prefill and decode throughput at batch 1 against the memory-bandwidth ceiling, optionally
    /// beside transformers on the same weights.
    Bench(BenchArgs),
    /// Convert a llama.cpp GGUF Llama (F32, F16, BF16, Q8_0, Q4_0 or Q4_1 tensors) into a plain
    /// Hugging Face Llama folder: config.json, model.safetensors and, for a byte-level BPE
    /// vocabulary, tokenizer.json.
    ImportGguf(ImportGgufArgs),
}

#[derive(Args)]
pub struct ImportGgufArgs {
    /// The GGUF file (general.architecture = llama).
    file: PathBuf,
    /// Output folder (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// dtype of the written weights: f32, bf16 or f16 (quantized tensors are dequantized to f32
    /// first).
    #[arg(long, default_value = "f32")]
    dtype: String,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Model folder; omit with --random-config.
    dir: Option<PathBuf>,
    /// Benchmark random weights of this config.json instead of a checkpoint.
    #[arg(long, conflicts_with = "dir")]
    random_config: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Python with transformers: run tests/reference/bench_transformers.py in the same run and
    /// print the ratios.
    #[arg(long)]
    compare_python: Option<PathBuf>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Decode engine: `tch` (libtorch), `native` (tolk_models::llama::native: libtorch prefill,
    /// then our own SIMD decode step on the CPU) or `both`, measured in the same run with the
    /// ratio and whether their greedy tokens agree.
    #[arg(long, value_enum, default_value_t = Engine::Tch)]
    engine: Engine,
    /// Native weights quantized: int8 (one scale per row) or int4 (group-wise); without it the
    /// native weights are in --dtype. The tch engine then runs in f32 on the dequantized values.
    #[arg(long, value_parser = ["int8", "int4"])]
    quant: Option<String>,
    /// Columns per scale of --quant int4 (a multiple of 32 dividing every input size).
    #[arg(long, default_value_t = 32)]
    group_size: usize,
    /// Native LM head (and tied embedding) format: f32, bf16, int8 or int4; default: the
    /// layers' format, int8 for int4 layers.
    #[arg(long, value_parser = ["f32", "bf16", "int8", "int4"])]
    native_head: Option<String>,
}

/// Which decoder `tolk model bench` times.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Tch,
    Native,
    Both,
}

impl BenchArgs {
    /// The native decoder's options: its format from --quant, else --dtype.
    fn native_options(&self) -> Result<NativeOptions> {
        let named = |name: &str| -> Result<WeightFormat> {
            Ok(match name {
                "f32" => WeightFormat::F32,
                "bf16" => WeightFormat::Bf16,
                "int8" => WeightFormat::Int8,
                "int4" => WeightFormat::Int4 {
                    group_size: self.group_size,
                },
                other => anyhow::bail!(
                    "the native engine runs f32, bf16, int8 or int4 weights, not {other}"
                ),
            })
        };
        let mut opts = NativeOptions::new(named(self.quant.as_deref().unwrap_or(&self.dtype))?);
        opts.head = self.native_head.as_deref().map(named).transpose()?;
        Ok(opts)
    }
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Inspect { load } => inspect(&load),
        ModelCommand::Logits {
            load,
            prompt,
            top_k,
            json,
        } => logits(&load, &prompt, top_k, json),
        ModelCommand::Generate {
            load,
            prompt,
            max_new_tokens,
            sample,
            ignore_eos,
        } => generate_cmd(&load, &prompt, max_new_tokens, &sample, ignore_eos),
        ModelCommand::Bench(args) => bench(&args),
        ModelCommand::ImportGguf(args) => import_gguf(&args),
    }
}

fn import_gguf(args: &ImportGgufArgs) -> Result<()> {
    let dtype = parse_dtype(&args.dtype)?;
    let start = Instant::now();
    let report = import_llama(&args.file, &args.out, dtype)
        .with_context(|| format!("importing {}", args.file.display()))?;
    let secs = start.elapsed().as_secs_f64();
    let cfg = &report.config;
    let types: Vec<String> = report
        .stored_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    println!(
        "imported         {} (GGUF v{})",
        args.file.display(),
        report.version
    );
    println!(
        "model            layers {}, hidden {}, {} query / {} key-value heads, vocab {}, {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.vocab_size,
        if cfg.tie_word_embeddings {
            "tied head"
        } else {
            "untied head"
        }
    );
    println!(
        "rope             theta {} {:?}",
        cfg.rope_theta, cfg.rope_scaling
    );
    println!("stored tensors   {}", types.join(", "));
    println!(
        "wrote            {} ({} tensors, {}, {:.1} MiB) in {secs:.1} s",
        args.out.display(),
        report.tensors,
        dtype_name(dtype),
        report.bytes_written as f64 / (1 << 20) as f64
    );
    match &report.tokenizer_skipped {
        None => println!("tokenizer        tokenizer.json rebuilt from tokenizer.ggml.*"),
        Some(why) => println!(
            "tokenizer        NOT written: {why}.\n                 Copy the original model's \
             tokenizer.json into {} to use `tolk model logits/generate`; `tolk model bench` \
             and `tolk-train quantize` do not need it.",
            args.out.display()
        ),
    }
    Ok(())
}

fn inspect(load: &LoadArgs) -> Result<()> {
    let (model, tok) = load.load()?;
    let cfg = model.config();
    let params = cfg.num_parameters();
    let bytes = params * model.dtype().elt_size_in_bytes() as i64;
    println!("model            {}", load.dir.display());
    println!("layers           {}", cfg.num_hidden_layers);
    println!("hidden           {}", cfg.hidden_size);
    println!("intermediate     {}", cfg.intermediate_size);
    println!(
        "heads            {} query, {} key/value, head_dim {}",
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    );
    println!(
        "vocab            {} (tokenizer {})",
        cfg.vocab_size,
        tok.vocab_size()
    );
    println!(
        "rope             theta {} {:?}",
        cfg.rope_theta, cfg.rope_scaling
    );
    println!("tied embeddings  {}", cfg.tie_word_embeddings);
    println!("parameters       {params} ({:.1} M)", params as f64 / 1e6);
    println!("dtype            {}", dtype_name(model.dtype()));
    println!("device           {:?}", model.device());
    println!(
        "weights memory   {:.1} MiB",
        bytes as f64 / (1 << 20) as f64
    );
    let kv = 2
        * cfg.num_hidden_layers
        * cfg.num_key_value_heads
        * cfg.head_dim
        * model.dtype().elt_size_in_bytes() as i64;
    println!(
        "kv cache         {:.1} KiB per position, {:.1} MiB at {} positions",
        kv as f64 / 1024.0,
        (kv * model.max_positions()) as f64 / (1 << 20) as f64,
        model.max_positions()
    );
    Ok(())
}

fn logits(load: &LoadArgs, prompt: &str, top_k: i64, as_json: bool) -> Result<()> {
    let (model, tok) = load.load()?;
    let ids = tok.encode(prompt, true)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt encodes to no tokens");
    let mut cache = model.new_cache(1, ids.len() as i64)?;
    let input: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let logits = model.forward_last(
        &Tensor::from_slice(&input)
            .to_device(model.device())
            .view([1, -1]),
        &mut cache,
    )?;
    let (values, indices) = logits.to_kind(Kind::Float).to_device(Device::Cpu).topk(
        top_k.min(model.config().vocab_size),
        -1,
        true,
        true,
    );
    let values = Vec::<f32>::try_from(values.view([-1]))?;
    let indices = Vec::<i64>::try_from(indices.view([-1]))?;
    let top: Vec<_> = values
        .iter()
        .zip(&indices)
        .map(|(&v, &i)| json!({"id": i, "token": tok.id_to_token(i as u32), "logit": v}))
        .collect();
    if as_json {
        println!("{}", json!({"prompt_ids": ids, "top": top}));
    } else {
        println!("prompt ids: {ids:?}");
        for (v, i) in values.iter().zip(&indices) {
            println!(
                "{i:>8}  {v:>10.4}  {:?}",
                tok.id_to_token(*i as u32).unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn generate_cmd(
    load: &LoadArgs,
    prompt: &str,
    max_new_tokens: usize,
    sample: &SampleArgs,
    ignore_eos: bool,
) -> Result<()> {
    let (model, tok) = load.load()?;
    let ids = tok.encode(prompt, true)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt encodes to no tokens");
    let capacity = (ids.len() + max_new_tokens) as i64;
    anyhow::ensure!(
        capacity <= model.max_positions(),
        "prompt ({} tokens) + --max-new-tokens {max_new_tokens} exceed --max-len {}",
        ids.len(),
        model.max_positions()
    );
    let mut cache = model.new_cache(1, capacity)?;
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: sample.temperature,
        top_k: sample.top_k,
        top_p: sample.top_p,
        seed: sample.seed,
    })?;
    let stop_tokens = if ignore_eos {
        vec![]
    } else {
        model
            .config()
            .eos_token_ids
            .iter()
            .map(|&t| t as u32)
            .collect()
    };
    let opts = GenerateOptions::new(max_new_tokens, stop_tokens);
    print!("{prompt}");
    std::io::stdout().flush()?;
    // Stream text as it comes: decode the whole output each time and print the new suffix, so
    // multi-byte characters split across tokens come out whole.
    let mut out_ids = Vec::new();
    let mut printed = 0;
    let result = generate(&model, &mut cache, &mut sampler, &ids, &opts, |t| {
        out_ids.push(t);
        if let Ok(text) = tok.decode(&out_ids, true) {
            if text.len() > printed && text.is_char_boundary(printed) {
                print!("{}", &text[printed..]);
                let _ = std::io::stdout().flush();
                printed = text.len();
            }
        }
    })?;
    println!();
    eprintln!(
        "{} prompt tokens, {} new tokens ({:?}); prefill {:.1} tokens/s, decode {:.1} tokens/s",
        result.prompt_tokens,
        result.tokens.len(),
        result.stop,
        result.prefill_tokens_per_sec(),
        result.decode_tokens_per_sec()
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Figures of one engine in `tolk model bench`.
struct EngineRun {
    name: &'static str,
    /// Weight formats, for the printout.
    weights: String,
    prefill: f64,
    decode: f64,
    weight_bytes: i64,
    /// Greedy tokens of the last timed run.
    tokens: Vec<u32>,
}

impl EngineRun {
    fn print(&self, bandwidth: f64, args: &BenchArgs) -> serde_json::Value {
        let ceiling = bandwidth / self.weight_bytes as f64;
        println!(
            "engine               {}: {}, {:.1} MiB read per token",
            self.name,
            self.weights,
            self.weight_bytes as f64 / (1 << 20) as f64
        );
        println!(
            "prefill              {:.1} tokens/s ({} tokens)",
            self.prefill, args.prompt_tokens
        );
        println!(
            "decode               {:.1} tokens/s ({} tokens)",
            self.decode, args.new_tokens
        );
        println!(
            "bandwidth ceiling    {ceiling:.1} tokens/s; decode reaches {:.0} % of it",
            100.0 * self.decode / ceiling
        );
        json!({
            "engine": self.name, "weights": self.weights,
            "prefill_tokens_per_s": self.prefill, "decode_tokens_per_s": self.decode,
            "weight_bytes_per_token": self.weight_bytes,
            "ceiling_tokens_per_s": ceiling, "ceiling_fraction": self.decode / ceiling,
        })
    }
}

fn bench(args: &BenchArgs) -> Result<()> {
    let opts = LoadOptions {
        device: available_device(&args.device)?,
        dtype: parse_dtype(&args.dtype)?,
        max_positions: (args.prompt_tokens + args.new_tokens + 1) as i64,
    };
    let native_wanted = args.engine != Engine::Tch;
    anyhow::ensure!(
        native_wanted || (args.quant.is_none() && args.native_head.is_none()),
        "--quant and --native-head choose the native engine's weights: add --engine native or both"
    );
    anyhow::ensure!(
        !native_wanted || opts.device == Device::Cpu,
        "the native engine runs on the CPU only"
    );
    let (loaded, source) = match (&args.dir, &args.random_config) {
        (Some(dir), None) => (Llama::load(dir, opts)?, dir.display().to_string()),
        (None, Some(cfg)) => (
            Llama::random(LlamaConfig::from_file(cfg)?, opts, 0)?,
            format!("random weights, {}", cfg.display()),
        ),
        _ => anyhow::bail!("give a model folder or --random-config"),
    };
    let native_opts = args.native_options();
    let native = if native_wanted {
        let o = native_opts?;
        Some((NativeDecoder::from_llama(&loaded, o)?, o))
    } else {
        None
    };
    // With quantized native weights, libtorch runs on the same (dequantized) values, so that
    // the tokens are comparable.
    let model = match &native {
        Some((_, o)) if args.quant.is_some() || args.native_head.is_some() => {
            dequantized_llama(&loaded, o)?
        }
        _ => loaded,
    };
    let cfg = model.config();
    let threads = tch::get_num_threads();
    let vocab = cfg.vocab_size;
    // A fixed pseudo-random prompt: the timing does not depend on the text.
    let prompt: Vec<u32> = (0..args.prompt_tokens)
        .map(|i| ((i as u64 * 2_654_435_761) % vocab as u64) as u32)
        .collect();
    let warm_prompt = &prompt[..8.min(prompt.len())];
    let capacity = args.prompt_tokens + args.new_tokens;
    let mut cache = model.new_cache(1, capacity as i64)?;
    let mut runs = Vec::new();
    if args.engine != Engine::Native {
        let mut sampler = Sampler::new(SamplingConfig::greedy())?;
        let gen_opts = GenerateOptions::new(args.new_tokens, vec![]);
        // Warm-up, then timed runs.
        generate(
            &model,
            &mut cache,
            &mut sampler,
            warm_prompt,
            &gen_opts,
            |_| {},
        )?;
        let (mut prefill, mut decode, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.repeats.max(1) {
            let g = generate(&model, &mut cache, &mut sampler, &prompt, &gen_opts, |_| {})?;
            prefill.push(g.prefill_tokens_per_sec());
            decode.push(g.decode_tokens_per_sec());
            tokens = g.tokens;
        }
        runs.push(EngineRun {
            name: "tch",
            weights: dtype_name(model.dtype()).to_string(),
            prefill: median(prefill),
            decode: median(decode),
            weight_bytes: model.weight_bytes_per_token(),
            tokens,
        });
    }
    if let Some((decoder, o)) = &native {
        let mut state = decoder.new_cache(capacity)?;
        let n = args.new_tokens;
        decoder.generate_greedy(&model, &mut cache, &mut state, warm_prompt, n, &[])?;
        let (mut prefill, mut decode, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.repeats.max(1) {
            let g = decoder.generate_greedy(&model, &mut cache, &mut state, &prompt, n, &[])?;
            prefill.push(g.prefill_tokens_per_sec());
            decode.push(g.decode_tokens_per_sec());
            tokens = g.tokens;
        }
        runs.push(EngineRun {
            name: "native",
            weights: format!(
                "{}, head {}, {} kernels, {} threads",
                o.format.label(),
                o.head_format().label(),
                decoder.isa().name(),
                decoder.threads()
            ),
            prefill: median(prefill),
            decode: median(decode),
            weight_bytes: decoder.weight_bytes_per_token() as i64,
            tokens,
        });
    }
    let tch_bytes = model.weight_bytes_per_token();
    let bandwidth = read_bandwidth(model.device(), tch_bytes.max(1 << 29));
    println!("model                {source}");
    println!(
        "device / dtype       {:?} / {}, {threads} threads",
        model.device(),
        dtype_name(model.dtype())
    );
    println!(
        "parameters           {:.1} M, {:.1} MiB read per token",
        cfg.num_parameters() as f64 / 1e6,
        tch_bytes as f64 / (1 << 20) as f64
    );
    println!("read bandwidth       {:.2} GB/s", bandwidth / 1e9);
    let figures: Vec<serde_json::Value> = runs.iter().map(|r| r.print(bandwidth, args)).collect();
    // The first engine's figures at the top level, as before there were engines.
    let first = &runs[0];
    let mut report = figures[0].clone();
    for (k, v) in [
        ("model", json!(source)),
        ("device", json!(format!("{:?}", model.device()))),
        ("dtype", json!(dtype_name(model.dtype()))),
        ("threads", json!(threads)),
        ("read_bandwidth_gb_s", json!(bandwidth / 1e9)),
    ] {
        report[k] = v;
    }
    let (prefill, decode) = (first.prefill, first.decode);
    if let [tch_run, native_run] = &runs[..] {
        let same = tch_run
            .tokens
            .iter()
            .zip(&native_run.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        let agree = same == tch_run.tokens.len() && same == native_run.tokens.len();
        println!(
            "tokens agree         {} ({same} of {} greedy tokens identical before the first \
             difference)",
            if agree { "yes" } else { "no" },
            tch_run.tokens.len()
        );
        println!(
            "ratio native/tch     decode {:.2}x, prefill {:.2}x",
            native_run.decode / tch_run.decode,
            native_run.prefill / tch_run.prefill
        );
        report["native"] = figures[1].clone();
        report["native_decode_ratio"] = json!(native_run.decode / tch_run.decode);
        report["tokens_agree"] = json!(agree);
        report["tokens_identical_prefix"] = json!(same);
    }
    if let Some(python) = &args.compare_python {
        let dir = args
            .dir
            .as_ref()
            .context("--compare-python needs a model folder")?;
        let peer = run_transformers(python, dir, args, threads)?;
        let (p_prefill, p_decode) = (
            peer["prefill_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            peer["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        );
        println!(
            "transformers         prefill {p_prefill:.1} tokens/s, decode {p_decode:.1} tokens/s ({})",
            peer["version"].as_str().unwrap_or("?")
        );
        println!(
            "ratio {}/transformers  prefill {:.2}x, decode {:.2}x",
            if first.name == "tch" {
                "tolk"
            } else {
                "native"
            },
            prefill / p_prefill,
            decode / p_decode
        );
        report["transformers"] = peer;
        report["decode_ratio"] = json!(decode / p_decode);
        report["prefill_ratio"] = json!(prefill / p_prefill);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

fn run_transformers(
    python: &Path,
    dir: &Path,
    args: &BenchArgs,
    threads: i32,
) -> Result<serde_json::Value> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/bench_transformers.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(dir)
        .args(["--threads", &threads.to_string()])
        .args(["--prompt-tokens", &args.prompt_tokens.to_string()])
        .args(["--new-tokens", &args.new_tokens.to_string()])
        .args(["--repeats", &args.repeats.to_string()])
        .args(["--device", &args.device, "--dtype", &args.dtype])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "transformers benchmark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout
        .lines()
        .last()
        .context("transformers benchmark printed nothing")?;
    Ok(serde_json::from_str(line)?)
}
