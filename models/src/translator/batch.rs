//! Batched sampling of several continuations of one prompt (the candidates of preference-pair
//! construction, PROST-LLM arXiv 2601.16618 section 2.2).
//!
//! The B rows share the prompt: it is prefilled once (batch 1) and its keys and values are
//! copied into every row of a B-row KV cache, then every step decodes all rows in lockstep with
//! `[B, 1]` tokens. Each row has its
//! own [`Sampler`] and its own phase, under the rules of [`super::decode`]: text restricted to
//! the text vocabulary and `<|units|>`, then units restricted to the unit tokens and `<|end|>`,
//! with the `max_text_tokens` / `max_target_units` caps. A finished row keeps a slot in the
//! batch (it is fed `<|end|>` and its logits are never read), so all rows share one cache
//! length and the cache-full check is the single-sequence one.

use std::time::Instant;

use super::decode::{plan, ChainRow, Mode, TranslationOutput};
use super::manifest::Direction;
use super::Translator;
use crate::generate::decode_rows;
use crate::sampling::Sampler;
use crate::{ModelError, Result};

/// Decodes `samplers.len()` continuations of one utterance in lockstep, row `i` sampling with
/// `samplers[i]`, in a fresh cache of `capacity` positions per row. Row `i` equals what
/// [`super::decode::decode`] returns with the same sampler state (same rules, same RNG draws),
/// up to floating-point differences between batched and single-row matrix products.
pub(crate) fn decode_batch(
    tr: &Translator,
    samplers: &mut [Sampler],
    src_units: &[u32],
    direction: Direction,
    mode: Mode,
    capacity: i64,
) -> Result<Vec<TranslationOutput>> {
    let b = samplers.len();
    let _span = tracing::info_span!(
        "translate_batch",
        direction = direction.as_str(),
        mode = mode.as_str(),
        units = src_units.len(),
        rows = b
    )
    .entered();
    if b == 0 {
        return Err(ModelError::InvalidArgument(
            "a batched decode needs at least one sampler".into(),
        ));
    }
    let p = plan(tr, src_units, direction, mode)?;
    if p.prompt.len() as i64 >= capacity {
        return Err(ModelError::CacheFull {
            needed: p.prompt.len() + 1,
            capacity: capacity as usize,
        });
    }
    let llm = tr.llm();
    let mut cache = llm.new_cache(b as i64, capacity)?;

    let start = Instant::now();
    let _g = tch::no_grad_guard();
    // The rows share the prompt: prefill it once (batch 1) and copy its keys and values into
    // every row.
    let t = p.prompt.len() as i64;
    let mut prompt_cache = llm.new_cache(1, t)?;
    let hidden = llm.forward_hidden_ids(&p.prompt, &mut prompt_cache)?;
    cache.fill_rows_from(&prompt_cache)?;
    drop(prompt_cache);
    let last = hidden
        .f_select(1, t - 1)?
        .f_expand([b as i64, -1], false)?
        .f_contiguous()?;
    let prefill_s = start.elapsed().as_secs_f64();

    let mut rows: Vec<ChainRow<'_>> = samplers
        .iter_mut()
        .map(|s| ChainRow::new(tr, &p, s, start, None))
        .collect();
    decode_rows(llm, &mut cache, last, &p.ranges, &mut rows, p.end_tok)?;
    rows.into_iter()
        .map(|row| {
            let text = tr.tokenizer().decode(&row.text_ids, true)?;
            let decode_s = row.decode_s;
            let mut out = row.into_output(direction, mode, text, p.prompt.len(), decode_s);
            out.timings.prefill_s = prefill_s;
            Ok(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingConfig;
    use crate::translator::testing::{write_random_translator, TinyTranslatorSpec};
    use crate::translator::Stop;
    use tch::{Device, Kind};

    fn source_units(n: usize, k: u32, seed: u32) -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(7919).wrapping_add(seed * 104_729) / 3) % k)
            .collect()
    }

    fn sampler(temperature: f32, seed: u64) -> Sampler {
        Sampler::new(SamplingConfig {
            temperature,
            top_k: 0,
            top_p: 0.95,
            seed,
        })
        .unwrap()
    }

    /// Row i of a batch equals the single-sequence decode with the same sampler, greedy and
    /// sampled, in CoM and S2TT modes, across the caps (a small `max_target_units` makes some
    /// rows stop on the cap while others end).
    #[test]
    fn rows_equal_single_sequence_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TinyTranslatorSpec {
            max_target_units: 6,
            ..TinyTranslatorSpec::default()
        };
        write_random_translator(dir.path(), &spec).unwrap();
        let tr = Translator::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let mut stops = Vec::new();
        for (u, direction) in [
            (0u32, Direction::EnFr),
            (1, Direction::FrEn),
            (2, Direction::EnFr),
        ] {
            let src = source_units(30 + 9 * u as usize, spec.num_units, u);
            for mode in [Mode::ChainOfModality, Mode::S2tt] {
                // Greedy: every row is translate_units.
                let single = tr.translate_units(&src, direction, mode).unwrap();
                let mut greedy: Vec<Sampler> = (0..3)
                    .map(|_| Sampler::new(SamplingConfig::greedy()).unwrap())
                    .collect();
                let rows = tr
                    .translate_units_batch(&src, direction, mode, &mut greedy)
                    .unwrap();
                assert_eq!(rows.len(), 3);
                for r in &rows {
                    assert_eq!(r.text_ids, single.text_ids);
                    assert_eq!(r.units, single.units);
                    assert_eq!(
                        (r.stop, r.text_truncated),
                        (single.stop, single.text_truncated)
                    );
                    assert_eq!(r.text, single.text);
                }
                // Sampled: row i is the single decode with sampler seed i.
                let seeds = [11u64, 12, 13, 14];
                let mut samplers: Vec<Sampler> = seeds.iter().map(|&s| sampler(1.0, s)).collect();
                let rows = tr
                    .translate_units_batch(&src, direction, mode, &mut samplers)
                    .unwrap();
                for (r, &s) in rows.iter().zip(&seeds) {
                    let one = tr
                        .translate_units_with(&src, direction, mode, &mut sampler(1.0, s))
                        .unwrap();
                    assert_eq!(r.text_ids, one.text_ids, "seed {s}");
                    assert_eq!(r.units, one.units, "seed {s}");
                    assert_eq!((r.stop, r.text_truncated), (one.stop, one.text_truncated));
                    assert_eq!(r.text, one.text);
                    stops.push((mode, r.stop));
                }
                let distinct: std::collections::HashSet<_> =
                    rows.iter().map(|r| (&r.text_ids, &r.units)).collect();
                assert!(distinct.len() > 1, "sampled rows should differ");
            }
        }
        // The cases covered: CoM rows ending on <|end|> and on the unit cap.
        assert!(
            stops.contains(&(Mode::ChainOfModality, Stop::End)),
            "{stops:?}"
        );
        assert!(
            stops.contains(&(Mode::ChainOfModality, Stop::MaxTokens)),
            "{stops:?}"
        );
        assert!(tr
            .translate_units_batch(&[1, 2], Direction::EnFr, Mode::ChainOfModality, &mut [])
            .is_err());
    }
}
