//! [`NativeDecoder`]: one Llama decode step at batch 1 on the CPU without libtorch, over weights
//! copied once out of a loaded [`Llama`], and its per-sequence state [`NativeCache`].
//!
//! The step is the forward pass of [`Llama`] (`model.rs`) for one token: embedding row; per layer
//! RMSNorm, fused q/k/v product, rotate-half RoPE with the model's own cos/sin tables
//! ([`RotaryTables`], so rope_theta and every scaling match exactly), K/V appended to the
//! cache, grouped-query attention with a max-subtracted softmax in f32, o_proj and the residual;
//! RMSNorm, fused gate/up product, SiLU(gate) * up, down_proj and the residual; final norm and
//! LM head. The residual add and the next RMSNorm share one pass, as do RoPE and the cache write.
//! Activations, the cache and every accumulation are f32 whatever the weight format.

use super::kernels::{self, Isa};
use super::matrix::{Matrix, WeightFormat};
use super::pool::ThreadPool;
use crate::generate::{Generation, StopReason};
use crate::llama::{KvCache, Llama, LlamaConfig, RotaryTables};
use crate::{ModelError, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How to build a [`NativeDecoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeOptions {
    /// Format of the projections of every layer.
    pub format: WeightFormat,
    /// Format of the LM head (the tied embedding too). `None`: [`NativeOptions::default_head`].
    pub head: Option<WeightFormat>,
    /// Threads of the decoder's pool; 0 takes libtorch's intra-op thread count.
    pub threads: usize,
    /// Kernels to run; `None` picks the widest this CPU has ([`Isa::detect`]).
    pub isa: Option<Isa>,
}

impl NativeOptions {
    /// `format` everywhere, default head, libtorch's thread count, the best kernels.
    pub fn new(format: WeightFormat) -> Self {
        Self {
            format,
            head: None,
            threads: 0,
            isa: None,
        }
    }

    /// The LM head keeps the layers' format, except int4 layers get an int8 head: every logit
    /// goes through the head, and llama.cpp's quantizer likewise keeps `output.weight` at higher
    /// precision (Q6_K) for its 4-bit types.
    pub fn default_head(format: WeightFormat) -> WeightFormat {
        match format {
            WeightFormat::Int4 { .. } => WeightFormat::Int8,
            f => f,
        }
    }

    /// The head format in force.
    pub fn head_format(&self) -> WeightFormat {
        self.head.unwrap_or(Self::default_head(self.format))
    }
}

#[derive(Debug)]
struct Linear {
    w: Matrix,
    bias: Option<Vec<f32>>,
}

impl Linear {
    fn forward(&self, isa: Isa, pool: &ThreadPool, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.w.matvec_pool(isa, pool, x, y)?;
        if let Some(b) = &self.bias {
            for (y, b) in y.iter_mut().zip(b) {
                *y += b;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Layer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    qkv: Linear,
    o_proj: Linear,
    gate_up: Linear,
    down_proj: Linear,
}

/// The model dimensions a step needs.
#[derive(Debug, Clone, Copy)]
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
    vocab: usize,
    layers: usize,
    eps: f32,
}

/// A Llama decoder for batch-1 decoding on the CPU (see the module doc). Immutable after
/// construction: sessions share it, each with its own [`NativeCache`].
#[derive(Debug)]
pub struct NativeDecoder {
    dims: Dims,
    layers: Vec<Layer>,
    /// Embedding rows: the head matrix when tied, else its own f32 matrix.
    embed: Option<Matrix>,
    head: Matrix,
    final_norm: Vec<f32>,
    /// `[max_positions, head_dim]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    max_positions: usize,
    pool: ThreadPool,
    isa: Isa,
    format: WeightFormat,
    head_format: WeightFormat,
}

use crate::llama::quant::host_f32;

fn matrix(t: &Tensor, format: WeightFormat, what: &str) -> Result<Matrix> {
    let size = t.size();
    let [rows, cols] = size[..] else {
        return Err(ModelError::InvalidArgument(format!(
            "{what}: expected a matrix, got shape {size:?}"
        )));
    };
    Matrix::from_f32(&host_f32(t)?, rows as usize, cols as usize, format)
        .map_err(|e| ModelError::InvalidArgument(format!("{what} as {}: {e}", format.label())))
}

fn vector(t: &Tensor, len: usize, what: &str) -> Result<Vec<f32>> {
    let v = host_f32(t)?;
    if v.len() != len {
        return Err(ModelError::InvalidArgument(format!(
            "{what}: expected {len} values, got {}",
            v.len()
        )));
    }
    Ok(v)
}

impl NativeDecoder {
    /// Copies the weights of `model` (any float dtype, any device; packed projections are an
    /// error) into the formats of `opts`.
    pub fn from_llama(model: &Llama, opts: NativeOptions) -> Result<Self> {
        let _span = tracing::info_span!("native_decoder_build").entered();
        let cfg: &LlamaConfig = model.config();
        let dims = Dims {
            hidden: cfg.hidden_size as usize,
            heads: cfg.num_attention_heads as usize,
            kv_heads: cfg.num_key_value_heads as usize,
            head_dim: cfg.head_dim as usize,
            inter: cfg.intermediate_size as usize,
            vocab: cfg.vocab_size as usize,
            layers: cfg.num_hidden_layers as usize,
            eps: cfg.rms_norm_eps as f32,
        };
        if dims.kv_heads == 0
            || !dims.heads.is_multiple_of(dims.kv_heads)
            || !dims.head_dim.is_multiple_of(2)
        {
            return Err(ModelError::InvalidArgument(format!(
                "{} query heads, {} key/value heads of size {}: need heads divisible by kv heads \
                 and an even head size",
                dims.heads, dims.kv_heads, dims.head_dim
            )));
        }
        let head_format = opts.head_format();
        let linear = |w: &Tensor, b: Option<&Tensor>, rows: usize, what: &str| -> Result<Linear> {
            let w = matrix(w, opts.format, what)?;
            if w.rows() != rows {
                return Err(ModelError::InvalidArgument(format!(
                    "{what}: expected {rows} rows, got {}",
                    w.rows()
                )));
            }
            Ok(Linear {
                w,
                bias: b.map(|b| vector(b, rows, what)).transpose()?,
            })
        };
        let d = dims.head_dim;
        let mut layers = Vec::with_capacity(dims.layers);
        for i in 0..dims.layers {
            let t = model.layer_tensors(i)?;
            let p = |name: &str| format!("layer {i} {name}");
            layers.push(Layer {
                input_norm: vector(t.input_layernorm, dims.hidden, &p("input_layernorm"))?,
                post_norm: vector(
                    t.post_attention_layernorm,
                    dims.hidden,
                    &p("post_attention_layernorm"),
                )?,
                qkv: linear(
                    t.qkv,
                    t.qkv_bias,
                    (dims.heads + 2 * dims.kv_heads) * d,
                    &p("qkv_proj"),
                )?,
                o_proj: linear(t.o_proj, t.o_bias, dims.hidden, &p("o_proj"))?,
                gate_up: linear(
                    t.gate_up,
                    t.gate_up_bias,
                    2 * dims.inter,
                    &p("gate_up_proj"),
                )?,
                down_proj: linear(t.down_proj, t.down_bias, dims.hidden, &p("down_proj"))?,
            });
        }
        let head = matrix(model.lm_head_weight(), head_format, "lm_head")?;
        let embed = if cfg.tie_word_embeddings {
            None
        } else {
            Some(matrix(
                model.embed_tokens(),
                WeightFormat::F32,
                "embed_tokens",
            )?)
        };
        let final_norm = vector(model.final_norm(), dims.hidden, "model.norm")?;
        let max_positions = model.max_positions();
        let rope = RotaryTables::new(cfg, max_positions, Kind::Float, Device::Cpu)?;
        let (cos, sin) = rope.tables();
        let threads = match opts.threads {
            0 => tch::get_num_threads().max(1) as usize,
            n => n,
        };
        Ok(Self {
            dims,
            layers,
            embed,
            head,
            final_norm,
            cos: host_f32(cos)?,
            sin: host_f32(sin)?,
            max_positions: max_positions as usize,
            pool: ThreadPool::new(threads),
            isa: opts.isa.unwrap_or_else(Isa::detect),
            format: opts.format,
            head_format,
        })
    }

    /// A cache for one sequence of up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<NativeCache> {
        if capacity > self.max_positions {
            return Err(ModelError::InvalidArgument(format!(
                "cache capacity {capacity} exceeds the model's {} positions",
                self.max_positions
            )));
        }
        let d = self.dims;
        let kv = d.kv_heads * capacity * d.head_dim;
        Ok(NativeCache {
            keys: (0..d.layers).map(|_| vec![0f32; kv]).collect(),
            values: (0..d.layers).map(|_| vec![0f32; kv]).collect(),
            len: 0,
            capacity,
            x: vec![0f32; d.hidden],
            normed: vec![0f32; d.hidden],
            qkv: vec![0f32; (d.heads + 2 * d.kv_heads) * d.head_dim],
            attn: vec![0f32; d.heads * d.head_dim],
            delta: vec![0f32; d.hidden],
            gate_up: vec![0f32; 2 * d.inter],
            act: vec![0f32; d.inter],
            scores: vec![0f32; capacity],
            logits: vec![0f32; d.vocab],
        })
    }

    /// Whether `cache` was made by a model of this one's shape.
    fn fits(&self, c: &NativeCache) -> bool {
        let d = self.dims;
        let kv = d.kv_heads * c.capacity * d.head_dim;
        c.keys.len() == d.layers
            && c.keys.iter().chain(&c.values).all(|k| k.len() == kv)
            && c.x.len() == d.hidden
            && c.qkv.len() == (d.heads + 2 * d.kv_heads) * d.head_dim
            && c.gate_up.len() == 2 * d.inter
            && c.logits.len() == d.vocab
    }

    /// Threads of the pool.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The kernels in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Formats of the layers and of the LM head.
    pub fn formats(&self) -> (WeightFormat, WeightFormat) {
        (self.format, self.head_format)
    }

    /// Bytes of weights read per decoded token (every matrix once, one embedding row).
    pub fn weight_bytes_per_token(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.o_proj, &l.gate_up, &l.down_proj]
                    .iter()
                    .map(|lin| lin.w.bytes())
                    .sum::<usize>()
            })
            .sum();
        per_layer + self.head.bytes()
    }

    /// Logits of the token after `token`, which takes position `cache.len()`: one decode step.
    /// The returned slice lives in the cache until the next step.
    pub fn step<'c>(&self, cache: &'c mut NativeCache, token: u32) -> Result<&'c [f32]> {
        let d = self.dims;
        if token as usize >= d.vocab {
            return Err(ModelError::InvalidArgument(format!(
                "token id {token} is outside the vocabulary of {}",
                d.vocab
            )));
        }
        if !self.fits(cache) {
            return Err(ModelError::InvalidArgument(
                "this cache was made by another model".into(),
            ));
        }
        let pos = cache.len;
        if pos >= cache.capacity {
            return Err(ModelError::CacheFull {
                needed: pos + 1,
                capacity: cache.capacity,
            });
        }
        let (isa, pool) = (self.isa, &self.pool);
        let c = &mut *cache;
        self.embed
            .as_ref()
            .unwrap_or(&self.head)
            .row_into(token as usize, &mut c.x)?;
        rms_norm(&c.x, &self.layers[0].input_norm, d.eps, &mut c.normed);
        for (i, layer) in self.layers.iter().enumerate() {
            // Attention.
            layer.qkv.forward(isa, pool, &c.normed, &mut c.qkv)?;
            self.rope_and_append(c, i, pos);
            self.attention(c, i, pos);
            layer.o_proj.forward(isa, pool, &c.attn, &mut c.delta)?;
            add_and_norm(&mut c.x, &c.delta, &layer.post_norm, d.eps, &mut c.normed);
            // MLP.
            layer
                .gate_up
                .forward(isa, pool, &c.normed, &mut c.gate_up)?;
            let (gate, up) = c.gate_up.split_at(d.inter);
            for ((a, &g), &u) in c.act.iter_mut().zip(gate).zip(up) {
                *a = g / (1.0 + (-g).exp()) * u;
            }
            layer.down_proj.forward(isa, pool, &c.act, &mut c.delta)?;
            let next_norm = self
                .layers
                .get(i + 1)
                .map_or(&self.final_norm, |l| &l.input_norm);
            add_and_norm(&mut c.x, &c.delta, next_norm, d.eps, &mut c.normed);
        }
        self.head.matvec_pool(isa, pool, &c.normed, &mut c.logits)?;
        c.len += 1;
        Ok(&c.logits)
    }

    /// Rotates the q and k heads of `c.qkv` at `pos` (rotate-half, as `RotaryTables::apply`) and
    /// writes the rotated keys and the values to layer `layer` of the cache.
    fn rope_and_append(&self, c: &mut NativeCache, layer: usize, pos: usize) {
        let d = self.dims;
        let hd = d.head_dim;
        let half = hd / 2;
        let cos = &self.cos[pos * hd..(pos + 1) * hd];
        let sin = &self.sin[pos * hd..(pos + 1) * hd];
        let rotate = |v: &mut [f32]| {
            for j in 0..half {
                let (a, b) = (v[j], v[j + half]);
                v[j] = a * cos[j] - b * sin[j];
                v[j + half] = b * cos[j + half] + a * sin[j + half];
            }
        };
        let (q_and_k, v) = c.qkv.split_at_mut((d.heads + d.kv_heads) * hd);
        for head in q_and_k.chunks_exact_mut(hd) {
            rotate(head);
        }
        let k = &q_and_k[d.heads * hd..];
        let (keys, values) = (&mut c.keys[layer], &mut c.values[layer]);
        for g in 0..d.kv_heads {
            let at = (g * c.capacity + pos) * hd;
            keys[at..at + hd].copy_from_slice(&k[g * hd..(g + 1) * hd]);
            values[at..at + hd].copy_from_slice(&v[g * hd..(g + 1) * hd]);
        }
    }

    /// Grouped-query attention of the query heads in `c.qkv` over positions `0..=pos` of layer
    /// `layer` into `c.attn` (query head `h` reads key/value head `h / (heads / kv_heads)`;
    /// scale `1 / sqrt(head_dim)`, softmax in f32 with the maximum subtracted).
    fn attention(&self, c: &mut NativeCache, layer: usize, pos: usize) {
        let d = self.dims;
        let hd = d.head_dim;
        let n = pos + 1;
        let group = d.heads / d.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let (keys, values) = (&c.keys[layer], &c.values[layer]);
        let scores = &mut c.scores[..n];
        for h in 0..d.heads {
            let g = h / group;
            let q = &c.qkv[h * hd..(h + 1) * hd];
            let k = &keys[g * c.capacity * hd..(g * c.capacity + n) * hd];
            kernels::matvec(self.isa, kernels::WeightsRef::F32(k), hd, 0..n, q, scores);
            let mut max = f32::NEG_INFINITY;
            for s in scores.iter_mut() {
                *s *= scale;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            for s in scores.iter_mut() {
                *s *= inv;
            }
            let v = &values[g * c.capacity * hd..(g * c.capacity + n) * hd];
            kernels::weighted_sum(self.isa, scores, v, &mut c.attn[h * hd..(h + 1) * hd]);
        }
    }

    /// Feeds `tokens` one step each (a prefill without libtorch); returns the logits after the
    /// last one.
    pub fn prefill_steps<'c>(
        &self,
        cache: &'c mut NativeCache,
        tokens: &[u32],
    ) -> Result<&'c [f32]> {
        let Some((&last, rest)) = tokens.split_last() else {
            return Err(ModelError::InvalidArgument("empty prompt".into()));
        };
        for &t in rest {
            self.step(cache, t)?;
        }
        self.step(cache, last)
    }

    /// Replaces the contents of `cache` with the `kv.len()` positions of a libtorch cache of the
    /// same model (batch 1): the prompt is prefilled by [`Llama`]'s batched forward pass, which
    /// is much faster than stepping, and decoding continues here.
    pub fn load_kv(&self, kv: &KvCache, cache: &mut NativeCache) -> Result<()> {
        let d = self.dims;
        if !self.fits(cache) {
            return Err(ModelError::InvalidArgument(
                "this cache was made by another model".into(),
            ));
        }
        let len = kv.len() as usize;
        if kv.batch() != 1 || len > cache.capacity {
            return Err(ModelError::InvalidArgument(format!(
                "cannot copy a cache of batch {} and {len} positions into a native cache of \
                 capacity {}",
                kv.batch(),
                cache.capacity
            )));
        }
        for layer in 0..d.layers {
            let (k, v) = kv.layer(layer).ok_or_else(|| {
                ModelError::InvalidArgument(format!("the libtorch cache has no layer {layer}"))
            })?;
            for (src, dst) in [(k, &mut cache.keys[layer]), (v, &mut cache.values[layer])] {
                let size = src.size();
                if size[1..] != [d.kv_heads as i64, kv.capacity(), d.head_dim as i64] {
                    return Err(ModelError::InvalidArgument(format!(
                        "libtorch cache layer {layer} has shape {size:?}"
                    )));
                }
                let filled = host_f32(&src.f_narrow(2, 0, len as i64)?)?;
                let hd = d.head_dim;
                for g in 0..d.kv_heads {
                    let from = &filled[g * len * hd..(g + 1) * len * hd];
                    let at = g * cache.capacity * hd;
                    dst[at..at + len * hd].copy_from_slice(from);
                }
            }
        }
        cache.len = len;
        Ok(())
    }

    /// Greedy generation of up to `max_new_tokens` after `prompt` (ending after any of `stop`):
    /// the prompt is prefilled by `model`'s batched forward pass into `kv` (which must be `model`'s
    /// cache; the first token comes from its logits), the cache is copied into `cache`
    /// ([`Self::load_kv`]) and every later token is a native [`Self::step`]. `model` should hold
    /// the weights this decoder was built from ([`super::dequantized_llama`] for a quantized
    /// one). Timed as [`crate::generate::generate`]: prefill up to the first token, decode after.
    pub fn generate_greedy(
        &self,
        model: &Llama,
        kv: &mut KvCache,
        cache: &mut NativeCache,
        prompt: &[u32],
        max_new_tokens: usize,
        stop: &[u32],
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(ModelError::InvalidArgument("empty prompt".into()));
        }
        if prompt.len() + max_new_tokens > cache.capacity {
            return Err(ModelError::CacheFull {
                needed: prompt.len() + max_new_tokens,
                capacity: cache.capacity,
            });
        }
        let start = Instant::now();
        kv.reset();
        let hidden = model.forward_hidden_ids(prompt, kv)?;
        let last = hidden.f_select(1, hidden.size()[1] - 1)?;
        let first_logits = host_f32(&model.logits(&last)?)?;
        self.load_kv(kv, cache)?;
        let mut tokens = Vec::with_capacity(max_new_tokens);
        let mut stop_reason = StopReason::MaxTokens;
        let mut first_at = None;
        let mut next = argmax(&first_logits);
        while tokens.len() < max_new_tokens {
            first_at.get_or_insert_with(Instant::now);
            tokens.push(next);
            if stop.contains(&next) {
                stop_reason = StopReason::StopToken;
                break;
            }
            if tokens.len() == max_new_tokens {
                break;
            }
            next = argmax(self.step(cache, next)?);
        }
        let first = first_at.unwrap_or_else(Instant::now);
        Ok(Generation {
            tokens,
            stop: stop_reason,
            prompt_tokens: prompt.len(),
            prefill_secs: first.duration_since(start).as_secs_f64(),
            decode_secs: first.elapsed().as_secs_f64(),
        })
    }
}

/// The first index of the largest value, as `torch.argmax` (NaN never wins).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x > best.1 {
            best = (i as u32, x);
        }
    }
    best.0
}

/// `out = x / sqrt(mean(x²) + eps) * w` (transformers' LlamaRMSNorm in f32; the mean in f64).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let inv = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * w;
    }
}

/// `x += delta`, then `out = rms_norm(x) * w`, in one pass over `x` for the sum of squares.
fn add_and_norm(x: &mut [f32], delta: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut ss = 0f64;
    for (v, &dv) in x.iter_mut().zip(delta) {
        *v += dv;
        ss += (*v as f64) * (*v as f64);
    }
    let inv = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x.iter()).zip(w) {
        *o = v * inv * w;
    }
}

/// The state of one sequence for a [`NativeDecoder`]: its key/value cache (f32, per layer
/// `[kv_heads, capacity, head_dim]`, allocated once) and the step's scratch buffers.
#[derive(Debug)]
pub struct NativeCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    delta: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    scores: Vec<f32>,
    logits: Vec<f32>,
}

impl NativeCache {
    /// Positions filled so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the contents; the memory is kept.
    pub fn reset(&mut self) {
        self.len = 0;
    }
}
