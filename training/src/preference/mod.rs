//! Preference optimization (PROST-LLM stage 3, arXiv 2601.16618; DPO and SimPO losses).
//!
//! - [`losses`]: sequence log-probs over completion tokens, the DPO sigmoid loss (with
//!   conservative label smoothing) and the SimPO loss, as pure functions;
//! - the LoRA adapters they train are [`crate::toolkit::lora`]'s;
//! - [`pairs`]: `tolk-train pairs`, preference pairs by self-sampling and back-translation
//!   (`pairs::plot`: the margin histogram);
//! - [`data`]: the pairs files and their batches; [`recipe`]: the TOML recipe; [`train`]: the
//!   DPO / SimPO loop with exact-resume checkpoints and the merged translator it ends with.

pub mod data;
pub mod losses;
pub mod pairs;
pub mod recipe;
pub mod train;

pub use losses::{
    dpo_sigmoid_loss, sequence_logps, simpo_loss, LogpReduction, LossError, PreferenceLoss,
};
pub use recipe::{LossKind, PreferenceRecipe};
pub use train::{
    merge_adapter, train_preference, MergeArgs, PreferenceArgs, PreferenceError, PreferenceSummary,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolkit::lora::{Lora, LoraConfig};
    use tch::{Device, Tensor};
    use tolk_models::llama::{Llama, LlamaConfig, LoadOptions};

    fn tiny() -> LlamaConfig {
        let v = serde_json::json!({
            "model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8, "max_position_embeddings": 64, "tie_word_embeddings": true,
        });
        LlamaConfig::from_json(&v, std::path::Path::new("test")).unwrap()
    }

    /// Summed completion log-probs of `ids` (labels -100 on the first `prompt` positions).
    fn logps(model: &Llama, lora: Option<&Lora>, ids: &Tensor, prompt: i64) -> Tensor {
        let labels = ids.copy();
        let _ = labels.narrow(1, 0, prompt).fill_(-100);
        let h = model
            .forward_hidden_lora(ids, None, None, lora.map(|l| l.adapters()))
            .unwrap();
        sequence_logps(&model.logits(&h).unwrap(), &labels, LogpReduction::Sum)
            .unwrap()
            .0
    }

    #[test]
    fn dpo_step_with_adapters_against_the_disabled_reference() {
        let cfg = tiny();
        let model = Llama::random(cfg.clone(), LoadOptions::default(), 7).unwrap();
        let lora = Lora::new(&cfg, LoraConfig::default(), Device::Cpu, 8).unwrap();
        let chosen =
            Tensor::from_slice(&[1i64, 4, 9, 16, 25, 36, 49, 3, 1, 5, 8, 13, 21, 34]).view([2, 7]);
        let rejected =
            Tensor::from_slice(&[1i64, 4, 9, 2, 2, 2, 2, 3, 1, 5, 40, 41, 42, 43]).view([2, 7]);
        let step = |lr: f64| {
            let (rc, rr) = tch::no_grad(|| {
                (
                    logps(&model, None, &chosen, 3),
                    logps(&model, None, &rejected, 3),
                )
            });
            let pc = logps(&model, Some(&lora), &chosen, 3);
            let pr = logps(&model, Some(&lora), &rejected, 3);
            let out = dpo_sigmoid_loss(&pc, &pr, &rc, &rr, 0.1, 0.0).unwrap();
            out.loss.backward();
            let loss = out.loss.double_value(&[]);
            let _g = tch::no_grad_guard();
            let mut grads = (0.0, 0.0);
            for (name, mut t) in lora.named_parameters() {
                let g = t.grad();
                let n = g.abs().max().double_value(&[]);
                if name.contains("lora_A") {
                    grads.0 += n;
                } else {
                    grads.1 += n;
                }
                let _ = t.f_sub_(&(g.shallow_clone() * lr)).unwrap();
                let _ = g.shallow_clone().zero_();
            }
            (loss, grads)
        };
        // B = 0: the policy is the reference, the loss is ln 2; only B gets a gradient
        // (dL/dA goes through B).
        let (l0, (ga, gb)) = step(20.0);
        assert!(
            (l0 - std::f64::consts::LN_2).abs() < 1e-6,
            "initial loss {l0}"
        );
        assert_eq!(ga, 0.0);
        assert!(gb > 0.0);
        let (l1, (ga, _)) = step(20.0);
        assert!(l1 < l0, "the step did not lower the loss: {l0} -> {l1}");
        assert!(ga > 0.0, "A gets a gradient once B is non-zero");
    }
}
