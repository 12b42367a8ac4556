//! A trainable unit HiFi-GAN generator: the parameters of [`CodeHiFiGan`] as variables of a
//! `tch::nn::VarStore`, with HiFi-GAN's weight norm on every generator convolution
//! (`NAME.weight_g`, `NAME.weight_v`, fairseq's raw checkpoint names; `w = g v / |v|`, the norm
//! over all dims but 0, which for ConvTranspose1d is the input channel as torch's
//! `weight_norm(dim=0)`). The unit table `dict.weight` and the duration predictor have no weight
//! norm, as in fairseq.
//!
//! [`TrainableGenerator::model`] folds the weight norm with differentiable tensor ops and builds a
//! [`CodeHiFiGan`] on the results, so training differentiates the very forward code inference
//! runs (`CodeHiFiGan::forward_frames` has no `no_grad`, detach or in-place op). Rebuild the model
//! after every optimizer step (it is cheap: no copies of the weights).
//!
//! Initialisation as jik876/hifi-gan `models.py` (Generator): N(0, 0.01) for `ups`, `resblocks`
//! and `conv_post` weights (`init_weights`), torch's default for `conv_pre` and all biases
//! (U(+-1/sqrt(fan_in))), N(0, 1) for the unit table (nn.Embedding), LayerNorm 1/0 in the duration
//! predictor. Duration loss as speech-resynthesis `models.py` (CodeGenerator.forward, training
//! branch) and fairseq `examples/speech_to_speech` unit vocoder training: MSE between the
//! predicted and `log(d + 1)` durations of the segment's deduplicated units.

use super::config::{SpeakerConditioning, VocoderConfig};
use super::generator::{tensor_specs, CodeHiFiGan};
use crate::{ModelError, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Reduction, Tensor};

/// Whether a generator tensor is trained under weight norm (every conv weight outside the
/// duration predictor).
fn weight_normed(name: &str) -> bool {
    name.ends_with(".weight")
        && (name.starts_with("conv_pre.")
            || name.starts_with("ups.")
            || name.starts_with("resblocks.")
            || name.starts_with("conv_post."))
}

/// The VarStore path of a dotted name (tch forbids dots inside one component).
fn var_path<'a>(root: &tch::nn::Path<'a>, name: &str) -> (tch::nn::Path<'a>, String) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let last = parts.pop().expect("non-empty name").to_string();
    let p = parts.iter().fold(root.clone(), |p, c| p.sub(*c));
    (p, last)
}

/// Trainable generator parameters (see the module docs).
#[derive(Debug)]
pub struct TrainableGenerator {
    config: VocoderConfig,
    vs: VarStore,
}

impl TrainableGenerator {
    /// Fresh parameters for `config`, initialised as HiFi-GAN does (seed with
    /// `tch::manual_seed` first for reproducible weights).
    pub fn new(config: VocoderConfig, device: Device) -> Result<Self> {
        config.validate(Path::new("<vocoder config>"))?;
        let vs = VarStore::new(device);
        let root = vs.root();
        for spec in tensor_specs(&config) {
            let name = spec.name.as_str();
            let shape = spec.shape.as_slice();
            let (p, last) = var_path(&root, name);
            let fan_in_bound = |fan_in: i64| 1.0 / (fan_in.max(1) as f64).sqrt();
            if weight_normed(name) {
                let init = if name.starts_with("conv_pre.") {
                    // torch's default (kaiming_uniform, a = sqrt(5)): U(+-1/sqrt(fan_in)).
                    let b = fan_in_bound(shape[1..].iter().product());
                    Init::Uniform { lo: -b, up: b }
                } else {
                    Init::Randn {
                        mean: 0.0,
                        stdev: 0.01,
                    }
                };
                let v = p.var(&format!("{last}_v"), shape, init);
                let g = {
                    let _ng = tch::no_grad_guard();
                    weight_norm_of(&v)?
                };
                let _ = p.var_copy(&format!("{last}_g"), &g);
            } else if name == "dict.weight"
                || (name == "spkr.weight"
                    && matches!(config.speaker, Some(SpeakerConditioning::Table { .. })))
            {
                let _ = p.var(
                    &last,
                    shape,
                    Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                );
            } else if name.ends_with("ln1.weight") || name.ends_with("ln2.weight") {
                let _ = p.var(&last, shape, Init::Const(1.0));
            } else if name.ends_with("ln1.bias") || name.ends_with("ln2.bias") {
                let _ = p.var(&last, shape, Init::Const(0.0));
            } else {
                // Biases (fan_in of the layer they belong to) and the duration predictor's
                // conv / linear weights: torch's default U(+-1/sqrt(fan_in)).
                let fan_in = if last == "bias" {
                    let wname = format!("{}.weight", &name[..name.len() - 5]);
                    let ws = tensor_specs(&config)
                        .into_iter()
                        .find(|s| s.name == wname)
                        .map(|s| s.shape)
                        .unwrap_or_else(|| vec![1, 1]);
                    // ConvTranspose1d weights are (in, out, k): torch's fan_in is size(1) * k.
                    ws[1..].iter().product()
                } else {
                    shape[1..].iter().product()
                };
                let b = fan_in_bound(fan_in);
                let _ = p.var(&last, shape, Init::Uniform { lo: -b, up: b });
            }
        }
        Ok(Self { config, vs })
    }

    pub fn config(&self) -> &VocoderConfig {
        &self.config
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }

    /// The effective (weight-norm folded) tensors under [`tensor_specs`] names; differentiable
    /// with respect to the variables.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let vars = self.vs.variables();
        let get = |n: &str| {
            vars.get(n).map(Tensor::shallow_clone).ok_or_else(|| {
                ModelError::InvalidArgument(format!("generator variable `{n}` is missing"))
            })
        };
        let mut out = HashMap::new();
        for spec in tensor_specs(&self.config) {
            let t = if weight_normed(&spec.name) {
                let g = get(&format!("{}_g", spec.name))?;
                let v = get(&format!("{}_v", spec.name))?;
                v.f_mul(&g.f_div(&weight_norm_of(&v)?)?)?
            } else {
                get(&spec.name)?
            };
            out.insert(spec.name, t);
        }
        Ok(out)
    }

    /// A [`CodeHiFiGan`] on the current parameters (gradients flow back to the variables).
    pub fn model(&self) -> Result<CodeHiFiGan> {
        CodeHiFiGan::from_tensors(
            self.config.clone(),
            self.tensors()?,
            self.vs.device(),
            Kind::Float,
        )
    }

    /// Writes a vocoder folder [`CodeHiFiGan::load`] reads: `config.json` (fairseq's keys) and
    /// `model.safetensors` (weight norm folded). Each file is written under a temporary name and
    /// renamed, so an interrupted save never leaves a half-written file; other files in `dir`
    /// are left alone.
    pub fn export(&self, dir: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = {
            let _g = tch::no_grad_guard();
            let mut v: Vec<(String, Tensor)> = self
                .tensors()?
                .into_iter()
                .map(|(k, t)| (k, t.detach().to_device(Device::Cpu).contiguous()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let io = |e: std::io::Error| ModelError::InvalidArgument(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let json = serde_json::to_string_pretty(&self.config.to_json())
            .map_err(|e| ModelError::InvalidArgument(e.to_string()))?;
        let tmp = dir.join(".config.json.partial");
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, dir.join("config.json")).map_err(io)?;
        let tmp = dir.join(".model.safetensors.partial");
        Tensor::write_safetensors(&tensors, &tmp)?;
        std::fs::rename(&tmp, dir.join("model.safetensors")).map_err(io)?;
        Ok(())
    }
}

/// Per-row L2 norm over all dims but 0, keeping dims (the `|v|` of weight norm).
fn weight_norm_of(v: &Tensor) -> Result<Tensor> {
    let dims: Vec<i64> = (1..v.dim() as i64).collect();
    Ok(v.f_norm_scalaropt_dim(2, dims.as_slice(), true)?)
}

impl CodeHiFiGan {
    /// Unit embeddings of a batch of frame-level unit ids (batch, frames) -> (batch,
    /// embedding_dim, frames); ids must be in range.
    pub fn embed_batch(&self, ids: &Tensor) -> Result<Tensor> {
        let n = self.config().num_embeddings;
        let (lo, hi) = (
            ids.f_min()?.f_int64_value(&[])?,
            ids.f_max()?.f_int64_value(&[])?,
        );
        if lo < 0 || hi >= n {
            return Err(ModelError::InvalidArgument(format!(
                "unit ids span {lo}..={hi}, outside this vocoder's 0..{n}"
            )));
        }
        Ok(Tensor::f_embedding(&self.dict, ids, -1, false, false)?.f_transpose(1, 2)?)
    }

    /// The training objective of the duration predictor on a batch of frame-level unit rows:
    /// each row is deduplicated into runs, the predictor reads the runs' embeddings (dropout
    /// `dropout` as in training) and the loss is the MSE between its output and `log(d + 1)` of
    /// the run lengths, over all runs of the batch. `None` for a vocoder without a predictor.
    pub fn duration_loss(&self, rows: &[Vec<i64>], dropout: f64) -> Result<Option<Tensor>> {
        let Some(dp) = &self.dur_predictor else {
            return Ok(None);
        };
        let runs: Vec<(Vec<i64>, Vec<f32>)> = rows
            .iter()
            .map(|r| {
                let mut ids: Vec<i64> = Vec::new();
                let mut durs: Vec<f32> = Vec::new();
                for &u in r {
                    if ids.last() == Some(&u) {
                        *durs.last_mut().expect("same length") += 1.0;
                    } else {
                        ids.push(u);
                        durs.push(1.0);
                    }
                }
                (ids, durs)
            })
            .collect();
        let max = runs.iter().map(|r| r.0.len()).max().unwrap_or(0);
        if max == 0 {
            return Ok(None);
        }
        let b = rows.len() as i64;
        let mut ids = vec![0i64; rows.len() * max];
        let mut mask = vec![false; rows.len() * max];
        let mut target = Vec::new();
        for (i, (u, d)) in runs.iter().enumerate() {
            ids[i * max..i * max + u.len()].copy_from_slice(u);
            for m in &mut mask[i * max..i * max + u.len()] {
                *m = true;
            }
            target.extend(d.iter().map(|x| (x + 1.0).ln()));
        }
        let dev = self.device();
        let ids = Tensor::from_slice(&ids)
            .f_view([b, max as i64])?
            .f_to_device(dev)?;
        let mask = Tensor::from_slice(&mask)
            .f_view([b, max as i64])?
            .f_to_device(dev)?;
        let x = self.embed_batch(&ids)?;
        let pred = dp.forward_train(&x, dropout)?.f_masked_select(&mask)?;
        let target = Tensor::from_slice(&target).f_to_device(dev)?;
        Ok(Some(pred.f_mse_loss(&target, Reduction::Mean)?))
    }
}
