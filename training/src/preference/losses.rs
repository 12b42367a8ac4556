//! Preference losses as pure functions of log-probabilities (DPO: Rafailov et al., arXiv
//! 2305.18290; SimPO: Meng et al., arXiv 2405.14734; as PROST-LLM, arXiv 2601.16618, uses them).
//!
//! - [`sequence_logps`]: log-probability of each completion under the model, from the logits of
//!   the whole sequence and labels that are `-100` on the prompt and padding. Summed for DPO,
//!   averaged per completion token for SimPO, as huggingface/trl `trainer/dpo_trainer.py`
//!   (`get_batch_logps`: logits shifted by one, `log_softmax` gathered at the labels, masked sum)
//!   and `trainer/cpo_trainer.py` (`average_log_prob` for `loss_type="simpo"`).
//! - [`dpo_sigmoid_loss`]: DPO (Rafailov et al. 2023, eq. 7) with conservative label smoothing,
//!   trl `DPOTrainer.dpo_loss` with `loss_type="sigmoid"`:
//!   `-(1 - eps) logsigmoid(beta d) - eps logsigmoid(-beta d)`,
//!   `d = (pi_c - ref_c) - (pi_r - ref_r)`; rewards `beta (pi - ref)`.
//! - [`simpo_loss`]: SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a
//!   Reference-Free Reward", eq. 6): `-logsigmoid(beta (avg_c - avg_r) - gamma)` on length-averaged
//!   log-probs, no reference model; trl `CPOTrainer.cpo_loss` with `loss_type="simpo"` and
//!   `cpo_alpha = 0` (pure SimPO: no NLL term on the chosen). Rewards `beta * avg`.

use crate::toolkit::labels::IGNORE_INDEX;
use tch::{Kind, Tensor};

/// Errors of the loss functions (bad shapes or hyper-parameters, empty completions).
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    #[error("{0}")]
    Shape(String),
    #[error("{name} = {value} is out of range ({expected})")]
    Hyper {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("sequence {row} of the batch has no completion token (every label is -100)")]
    EmptyCompletion { row: i64 },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

type Result<T> = std::result::Result<T, LossError>;

/// How the per-token log-probs of a completion are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogpReduction {
    /// Sum over completion tokens (DPO).
    Sum,
    /// Mean over completion tokens (SimPO).
    Mean,
}

/// Log-probabilities `[B]` of the labelled tokens of each sequence (f32), and the number of
/// completion tokens per sequence `[B]` (i64).
///
/// `logits` `[B, T, V]` are those of the input sequence; position `t` predicts the token at
/// `t + 1`, so `labels` `[B, T]` are the input ids with [`IGNORE_INDEX`] on the prompt and
/// padding ([`crate::toolkit::labels`]). A sequence with no labelled token is an error.
pub fn sequence_logps(
    logits: &Tensor,
    labels: &Tensor,
    reduction: LogpReduction,
) -> Result<(Tensor, Tensor)> {
    let (ls, bs) = (logits.size(), labels.size());
    if ls.len() != 3 || bs.len() != 2 || ls[..2] != bs[..] || ls[1] < 2 {
        return Err(LossError::Shape(format!(
            "logits must be [B, T, V] and labels [B, T] with T >= 2, got {ls:?} and {bs:?}"
        )));
    }
    let t = ls[1];
    let labels = labels.f_to_device(logits.device())?;
    let target = labels.f_narrow(1, 1, t - 1)?;
    let mask = target.f_ne(IGNORE_INDEX)?;
    let counts = mask.f_sum_dim_intlist(1, false, Kind::Int64)?;
    let empty = counts.f_eq(0)?.f_nonzero()?;
    if empty.size()[0] > 0 {
        let row = empty.f_int64_value(&[0, 0])?;
        return Err(LossError::EmptyCompletion { row });
    }
    // Masked positions gather token 0 and are zeroed afterwards.
    let safe = target.f_masked_fill(&mask.f_logical_not()?, 0)?;
    let logp = logits
        .f_narrow(1, 0, t - 1)?
        .f_to_kind(Kind::Float)?
        .f_log_softmax(-1, Kind::Float)?
        .f_gather(-1, &safe.f_unsqueeze(-1)?, false)?
        .f_squeeze_dim(-1)?;
    let summed = logp
        .f_mul(&mask.f_to_kind(Kind::Float)?)?
        .f_sum_dim_intlist(1, false, Kind::Float)?;
    let out = match reduction {
        LogpReduction::Sum => summed,
        LogpReduction::Mean => summed.f_div(&counts.f_to_kind(Kind::Float)?)?,
    };
    Ok((out, counts))
}

/// Per-pair losses and rewards of a batch; `loss` is their mean (what is back-propagated).
#[derive(Debug)]
pub struct PreferenceLoss {
    /// Scalar mean of `losses`.
    pub loss: Tensor,
    /// `[B]`.
    pub losses: Tensor,
    /// `[B]`, detached.
    pub chosen_rewards: Tensor,
    /// `[B]`, detached.
    pub rejected_rewards: Tensor,
}

impl PreferenceLoss {
    /// Mean of `chosen - rejected` rewards (trl's `rewards/margins`).
    pub fn reward_margin(&self) -> Result<f64> {
        Ok(self
            .chosen_rewards
            .f_sub(&self.rejected_rewards)?
            .f_mean(Kind::Float)?
            .f_double_value(&[])?)
    }

    /// Fraction of pairs whose chosen reward exceeds the rejected one (trl's `rewards/accuracies`).
    pub fn accuracy(&self) -> Result<f64> {
        Ok(self
            .chosen_rewards
            .f_gt_tensor(&self.rejected_rewards)?
            .f_to_kind(Kind::Float)?
            .f_mean(Kind::Float)?
            .f_double_value(&[])?)
    }
}

fn check_pair(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.dim() != 1 || a.size() != b.size() {
        return Err(LossError::Shape(format!(
            "{what}: expected two [B] tensors of the same size, got {:?} and {:?}",
            a.size(),
            b.size()
        )));
    }
    Ok(())
}

fn check_hyper(beta: f64, label_smoothing: f64) -> Result<()> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(LossError::Hyper {
            name: "beta",
            value: beta,
            expected: "> 0",
        });
    }
    if !(0.0..0.5).contains(&label_smoothing) {
        return Err(LossError::Hyper {
            name: "label_smoothing",
            value: label_smoothing,
            expected: "0 <= eps < 0.5",
        });
    }
    Ok(())
}

/// `-(1 - eps) logsigmoid(z) - eps logsigmoid(-z)` elementwise.
fn smoothed_sigmoid_loss(z: &Tensor, eps: f64) -> Result<Tensor> {
    let pos = z.f_log_sigmoid()?.f_mul_scalar(-(1.0 - eps))?;
    if eps == 0.0 {
        return Ok(pos);
    }
    Ok(pos.f_sub(&z.f_neg()?.f_log_sigmoid()?.f_mul_scalar(eps)?)?)
}

/// DPO sigmoid loss on summed sequence log-probs `[B]` of the policy and of the reference model.
/// `label_smoothing` is the conservative-DPO flip probability (0 for plain DPO).
pub fn dpo_sigmoid_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference_chosen: &Tensor,
    reference_rejected: &Tensor,
    beta: f64,
    label_smoothing: f64,
) -> Result<PreferenceLoss> {
    check_hyper(beta, label_smoothing)?;
    check_pair(policy_chosen, policy_rejected, "policy log-probs")?;
    check_pair(reference_chosen, reference_rejected, "reference log-probs")?;
    check_pair(
        policy_chosen,
        reference_chosen,
        "policy vs reference log-probs",
    )?;
    let chosen_ratio = policy_chosen.f_sub(reference_chosen)?;
    let rejected_ratio = policy_rejected.f_sub(reference_rejected)?;
    let z = chosen_ratio.f_sub(&rejected_ratio)?.f_mul_scalar(beta)?;
    let losses = smoothed_sigmoid_loss(&z, label_smoothing)?;
    Ok(PreferenceLoss {
        loss: losses.f_mean(Kind::Float)?,
        losses,
        chosen_rewards: chosen_ratio.f_mul_scalar(beta)?.f_detach()?,
        rejected_rewards: rejected_ratio.f_mul_scalar(beta)?.f_detach()?,
    })
}

/// SimPO loss on length-averaged sequence log-probs `[B]` (no reference model):
/// `-logsigmoid(beta (avg_c - avg_r) - gamma)`, with optional label smoothing as trl.
pub fn simpo_loss(
    avg_chosen: &Tensor,
    avg_rejected: &Tensor,
    beta: f64,
    gamma: f64,
    label_smoothing: f64,
) -> Result<PreferenceLoss> {
    check_hyper(beta, label_smoothing)?;
    if !gamma.is_finite() {
        return Err(LossError::Hyper {
            name: "gamma",
            value: gamma,
            expected: "finite",
        });
    }
    check_pair(avg_chosen, avg_rejected, "SimPO log-probs")?;
    let z = avg_chosen
        .f_sub(avg_rejected)?
        .f_mul_scalar(beta)?
        .f_sub_scalar(gamma)?;
    let losses = smoothed_sigmoid_loss(&z, label_smoothing)?;
    Ok(PreferenceLoss {
        loss: losses.f_mean(Kind::Float)?,
        losses,
        chosen_rewards: avg_chosen.f_mul_scalar(beta)?.f_detach()?,
        rejected_rewards: avg_rejected.f_mul_scalar(beta)?.f_detach()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t1(v: &[f64]) -> Tensor {
        Tensor::from_slice(v).to_kind(Kind::Float)
    }

    fn vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!((a - b).abs() <= 1e-5, "{what}: got {a}, expected {b}");
    }

    /// log(softmax(row)[k]) by hand.
    fn log_softmax_at(row: &[f64], k: usize) -> f64 {
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        row[k] - z.ln()
    }

    fn ln_sigmoid(z: f64) -> f64 {
        -(1.0 + (-z).exp()).ln()
    }

    /// Batch of 2 sequences of 4 positions over a vocabulary of 3. Row 0: prompt of 2 tokens
    /// (labels -100), completion tokens 2 and 0 at positions 2, 3. Row 1: prompt of 1 token,
    /// completion 1, 1, then padding (-100).
    fn example() -> (Vec<[f64; 3]>, Tensor, Tensor) {
        let rows: Vec<[f64; 3]> = vec![
            [0.1, 0.2, 0.3],
            [1.0, -1.0, 0.5],
            [0.0, 2.0, -0.5],
            [9.0, 9.0, 9.0],
            [0.3, 0.0, -0.3],
            [-2.0, 1.0, 0.0],
            [0.7, 0.7, 0.1],
            [5.0, -5.0, 5.0],
        ];
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        let logits = Tensor::from_slice(&flat)
            .view([2, 4, 3])
            .to_kind(Kind::Float);
        let labels = Tensor::from_slice(&[-100i64, -100, 2, 0, -100, 1, 1, -100]).view([2, 4]);
        (rows, logits, labels)
    }

    #[test]
    fn sequence_logps_sum_and_mean_over_completion_only() {
        let (rows, logits, labels) = example();
        // Label at position t is predicted by the logits of position t - 1.
        let row0 = log_softmax_at(&rows[1], 2) + log_softmax_at(&rows[2], 0);
        let row1 = log_softmax_at(&rows[4], 1) + log_softmax_at(&rows[5], 1);
        let (sum, counts) = sequence_logps(&logits, &labels, LogpReduction::Sum).unwrap();
        assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![2, 2]);
        let s = vec(&sum);
        close(s[0], row0, "row 0 sum");
        close(s[1], row1, "row 1 sum");
        let (mean, _) = sequence_logps(&logits, &labels, LogpReduction::Mean).unwrap();
        let m = vec(&mean);
        close(m[0], row0 / 2.0, "row 0 mean");
        close(m[1], row1 / 2.0, "row 1 mean");
    }

    #[test]
    fn sequence_logps_uneven_lengths_average_by_own_count() {
        let (rows, logits, _) = example();
        // Row 0 with three completion tokens, row 1 with one.
        let labels = Tensor::from_slice(&[-100i64, 1, 2, 0, -100, 2, -100, -100]).view([2, 4]);
        let row0 =
            log_softmax_at(&rows[0], 1) + log_softmax_at(&rows[1], 2) + log_softmax_at(&rows[2], 0);
        let row1 = log_softmax_at(&rows[4], 2);
        let (mean, counts) = sequence_logps(&logits, &labels, LogpReduction::Mean).unwrap();
        assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![3, 1]);
        let m = vec(&mean);
        close(m[0], row0 / 3.0, "row 0 mean");
        close(m[1], row1, "row 1 mean");
    }

    #[test]
    fn sequence_logps_rejects_empty_completion_and_bad_shapes() {
        let (_, logits, _) = example();
        let labels = Tensor::from_slice(&[-100i64, -100, 2, 0, 1, -100, -100, -100]).view([2, 4]);
        // Row 1's only label sits at position 0, which nothing predicts.
        let err = sequence_logps(&logits, &labels, LogpReduction::Sum).unwrap_err();
        assert!(
            matches!(err, LossError::EmptyCompletion { row: 1 }),
            "{err}"
        );
        let short = Tensor::from_slice(&[1i64, 2, 0]).view([1, 3]);
        let err = sequence_logps(&logits, &short, LogpReduction::Sum).unwrap_err();
        assert!(err.to_string().contains("[B, T, V]"), "{err}");
    }

    #[test]
    fn dpo_sigmoid_matches_closed_form() {
        let pc = [-3.0, -10.0, -1.5];
        let pr = [-4.0, -9.0, -1.5];
        let rc = [-3.5, -10.0, -2.0];
        let rr = [-3.5, -9.5, -1.0];
        let beta = 0.1;
        let out = dpo_sigmoid_loss(&t1(&pc), &t1(&pr), &t1(&rc), &t1(&rr), beta, 0.0).unwrap();
        let mut mean = 0.0;
        for i in 0..3 {
            let d = (pc[i] - rc[i]) - (pr[i] - rr[i]);
            // -log sigmoid(x) = log(1 + exp(-x))
            let expected = (1.0 + (-beta * d).exp()).ln();
            close(vec(&out.losses)[i], expected, "loss");
            close(
                vec(&out.chosen_rewards)[i],
                beta * (pc[i] - rc[i]),
                "chosen reward",
            );
            close(
                vec(&out.rejected_rewards)[i],
                beta * (pr[i] - rr[i]),
                "rejected reward",
            );
            mean += expected / 3.0;
        }
        close(out.loss.double_value(&[]), mean, "mean loss");
        // Pair 0: d = 0.5 - (-0.5) = 1; pair 1: d = 0 - 0.5 = -0.5, pair 2: d = 0.5 - (-0.5) = 1.
        close(vec(&out.losses)[0], (1.0 + (-0.1f64).exp()).ln(), "pair 0");
        // Margin: mean of beta * d.
        close(
            out.reward_margin().unwrap(),
            0.1 * (1.0 - 0.5 + 1.0) / 3.0,
            "margin",
        );
        close(out.accuracy().unwrap(), 2.0 / 3.0, "accuracy");
    }

    #[test]
    fn dpo_equal_policy_and_reference_gives_ln2() {
        let x = t1(&[-5.0, -7.25]);
        let y = t1(&[-1.0, -2.0]);
        let out = dpo_sigmoid_loss(&x, &y, &x, &y, 0.5, 0.0).unwrap();
        close(out.loss.double_value(&[]), std::f64::consts::LN_2, "ln 2");
        close(out.reward_margin().unwrap(), 0.0, "margin");
    }

    #[test]
    fn dpo_label_smoothing_is_conservative_dpo() {
        let (pc, pr, rc, rr) = ([-2.0], [-6.0], [-3.0], [-3.0]);
        let (beta, eps) = (0.25, 0.1);
        let out = dpo_sigmoid_loss(&t1(&pc), &t1(&pr), &t1(&rc), &t1(&rr), beta, eps).unwrap();
        let z = beta * ((-2.0 + 3.0) - (-6.0 + 3.0)); // 0.25 * 4 = 1
        let expected = -(1.0 - eps) * ln_sigmoid(z) - eps * ln_sigmoid(-z);
        close(out.loss.double_value(&[]), expected, "smoothed loss");
        // With z = 1: 0.9 ln(1 + e^-1) + 0.1 ln(1 + e).
        close(
            expected,
            0.9 * (1.0 + (-1.0f64).exp()).ln() + 0.1 * (1.0 + 1.0f64.exp()).ln(),
            "identity",
        );
    }

    #[test]
    fn dpo_gradient_pushes_chosen_up() {
        let pc = t1(&[-2.0]).set_requires_grad(true);
        let pr = t1(&[-2.0]).set_requires_grad(true);
        let r = t1(&[-2.0]);
        let out = dpo_sigmoid_loss(&pc, &pr, &r, &r, 0.1, 0.0).unwrap();
        out.loss.backward();
        // d/dpc [-log sigmoid(beta (pc - pr))] at 0 = -beta * sigmoid(0) = -0.05.
        close(pc.grad().double_value(&[0]), -0.05, "d loss / d chosen");
        close(pr.grad().double_value(&[0]), 0.05, "d loss / d rejected");
    }

    #[test]
    fn simpo_matches_closed_form() {
        let ac = [-1.0, -0.5, -2.0];
        let ar = [-1.5, -0.25, -2.0];
        let (beta, gamma) = (2.0, 1.0);
        let out = simpo_loss(&t1(&ac), &t1(&ar), beta, gamma, 0.0).unwrap();
        let mut mean = 0.0;
        for i in 0..3 {
            let expected = -ln_sigmoid(beta * (ac[i] - ar[i]) - gamma);
            close(vec(&out.losses)[i], expected, "loss");
            close(vec(&out.chosen_rewards)[i], beta * ac[i], "chosen reward");
            close(
                vec(&out.rejected_rewards)[i],
                beta * ar[i],
                "rejected reward",
            );
            mean += expected / 3.0;
        }
        close(out.loss.double_value(&[]), mean, "mean");
        // Pair 0: beta * 0.5 - gamma = 0, so the loss is ln 2.
        close(vec(&out.losses)[0], std::f64::consts::LN_2, "pair 0");
        // Pair 2: equal log-probs, the margin gamma alone: ln(1 + e^1).
        close(vec(&out.losses)[2], (1.0 + 1.0f64.exp()).ln(), "pair 2");
    }

    #[test]
    fn simpo_end_to_end_from_logits_uses_averages() {
        let (rows, logits, labels) = example();
        let (avg, _) = sequence_logps(&logits, &labels, LogpReduction::Mean).unwrap();
        // Row 0 as chosen, row 1 as rejected.
        let c = avg.narrow(0, 0, 1);
        let r = avg.narrow(0, 1, 1);
        let out = simpo_loss(&c, &r, 2.5, 1.25, 0.0).unwrap();
        let avg0 = (log_softmax_at(&rows[1], 2) + log_softmax_at(&rows[2], 0)) / 2.0;
        let avg1 = (log_softmax_at(&rows[4], 1) + log_softmax_at(&rows[5], 1)) / 2.0;
        close(
            out.loss.double_value(&[]),
            -ln_sigmoid(2.5 * (avg0 - avg1) - 1.25),
            "SimPO from logits",
        );
    }

    #[test]
    fn bad_hyper_parameters_are_errors() {
        let x = t1(&[-1.0]);
        assert!(dpo_sigmoid_loss(&x, &x, &x, &x, 0.0, 0.0).is_err());
        assert!(dpo_sigmoid_loss(&x, &x, &x, &x, 0.1, 0.5).is_err());
        assert!(simpo_loss(&x, &x, 2.0, f64::NAN, 0.0).is_err());
        let two = t1(&[-1.0, -2.0]);
        let err = dpo_sigmoid_loss(&x, &two, &x, &x, 0.1, 0.0).unwrap_err();
        assert!(err.to_string().contains("policy log-probs"), "{err}");
    }
}
