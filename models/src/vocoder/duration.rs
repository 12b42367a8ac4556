//! The duration predictor of a unit vocoder: FastSpeech 2's VariancePredictor as fairseq uses it
//! in CodeHiFiGAN (`dur_predictor.*`): Conv1d(k) -> ReLU -> LayerNorm -> Dropout, twice, then
//! Linear(hidden, 1). It predicts log(1 + duration) per deduplicated unit; inference turns that
//! into `d = clamp(round(exp(log_d) - 1), min = 1)` frames.
//!
//! Reference: fairseq `fairseq/models/text_to_speech/fastspeech2.py` (VariancePredictor) and
//! `codehifigan.py` (CodeGenerator.forward).

use super::config::DurationPredictorConfig;
use super::layers::Conv1d;
use crate::checkpoint::TensorSpec;
use crate::Result;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// LayerNorm eps of torch.nn.LayerNorm's default.
const LN_EPS: f64 = 1e-5;

#[derive(Debug)]
pub struct VariancePredictor {
    pub(crate) conv1: Conv1d,
    pub(crate) ln1: (Tensor, Tensor),
    pub(crate) conv2: Conv1d,
    pub(crate) ln2: (Tensor, Tensor),
    proj_weight: Tensor,
    proj_bias: Tensor,
}

impl VariancePredictor {
    pub(crate) fn specs(cfg: &DurationPredictorConfig, prefix: &str) -> Vec<TensorSpec> {
        let (e, h, k) = (
            cfg.encoder_embed_dim,
            cfg.var_pred_hidden_dim,
            cfg.var_pred_kernel_size,
        );
        let p = |n: &str| format!("{prefix}.{n}");
        vec![
            TensorSpec::new(p("conv1.0.weight"), &[h, e, k]),
            TensorSpec::new(p("conv1.0.bias"), &[h]),
            TensorSpec::new(p("ln1.weight"), &[h]),
            TensorSpec::new(p("ln1.bias"), &[h]),
            TensorSpec::new(p("conv2.0.weight"), &[h, h, k]),
            TensorSpec::new(p("conv2.0.bias"), &[h]),
            TensorSpec::new(p("ln2.weight"), &[h]),
            TensorSpec::new(p("ln2.bias"), &[h]),
            TensorSpec::new(p("proj.weight"), &[1, h]),
            TensorSpec::new(p("proj.bias"), &[1]),
        ]
    }

    pub(crate) fn from_tensors(
        cfg: &DurationPredictorConfig,
        prefix: &str,
        t: &mut HashMap<String, Tensor>,
    ) -> Self {
        let mut take = |n: &str| t.remove(&format!("{prefix}.{n}")).expect("checked at load");
        let pad = (cfg.var_pred_kernel_size - 1) / 2;
        let conv1 = Conv1d::new(take("conv1.0.weight"), Some(take("conv1.0.bias")), 1, pad);
        let ln1 = (take("ln1.weight"), take("ln1.bias"));
        let conv2 = Conv1d::new(take("conv2.0.weight"), Some(take("conv2.0.bias")), 1, pad);
        let ln2 = (take("ln2.weight"), take("ln2.bias"));
        Self {
            conv1,
            ln1,
            conv2,
            ln2,
            proj_weight: take("proj.weight"),
            proj_bias: take("proj.bias"),
        }
    }

    /// ReLU then LayerNorm over channels of a (batch, channel, time) tensor.
    pub(crate) fn relu_norm(x: &Tensor, ln: &(Tensor, Tensor)) -> Result<Tensor> {
        let c = x.size()[1];
        Ok(x.f_relu()?
            .f_transpose(1, 2)?
            .f_layer_norm([c], Some(&ln.0), Some(&ln.1), LN_EPS, false)?
            .f_transpose(1, 2)?)
    }

    /// (batch, hidden, time) after the second block -> log-durations (batch, time).
    pub(crate) fn project(&self, h: &Tensor) -> Result<Tensor> {
        Ok(h.f_transpose(1, 2)?
            .f_linear(&self.proj_weight, Some(&self.proj_bias))?
            .f_squeeze_dim(2)?)
    }

    /// Unit embeddings (batch, channel, time) -> log(1 + duration) (batch, time).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = Self::relu_norm(&self.conv1.forward(x)?, &self.ln1)?;
        let h = Self::relu_norm(&self.conv2.forward(&h)?, &self.ln2)?;
        self.project(&h)
    }

    /// As [`Self::forward`] in training mode: dropout with probability `p` after each LayerNorm
    /// (fairseq VariancePredictor's `dropout_module`).
    pub fn forward_train(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        let h = Self::relu_norm(&self.conv1.forward(x)?, &self.ln1)?.f_dropout(p, p > 0.0)?;
        let h = Self::relu_norm(&self.conv2.forward(&h)?, &self.ln2)?.f_dropout(p, p > 0.0)?;
        self.project(&h)
    }

    /// Look-ahead of the predictor in units: the right padding of its two convs.
    pub fn lookahead_units(&self) -> i64 {
        self.conv1.right_context() + self.conv2.right_context()
    }
}

/// Frames per unit from predicted log-durations: `clamp(round(exp(log_d) - 1), min = 1)`
/// (torch.round rounds half to even, as does libtorch here).
pub fn durations_from_log(log_d: &Tensor) -> Result<Tensor> {
    Ok(log_d
        .f_exp()?
        .f_sub_scalar(1.0)?
        .f_round()?
        .f_to_kind(Kind::Int64)?
        .f_clamp_min(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_and_clamp() {
        // exp(log_d) - 1 = [-0.5, 0.4, 1.6, 2.4, 3.7] -> round -> clamp at 1.
        let want = [1i64, 1, 2, 2, 4];
        let x = Tensor::from_slice(&[0.5f64, 1.4, 2.6, 3.4, 4.7]).log();
        let d = durations_from_log(&x).unwrap();
        assert_eq!(Vec::<i64>::try_from(&d).unwrap(), want);
    }
}
