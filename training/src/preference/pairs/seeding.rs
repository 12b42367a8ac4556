//! Seeds of the candidate samplers: a function of the run seed, the utterance id and the
//! candidate index only, so that a result never depends on sharding or order.

/// The seed of an utterance: FNV-1a of its id mixed with the run seed by SplitMix64, cut to
/// 53 bits (exact in any JSON reader).
pub fn utterance_seed(seed: u64, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(seed ^ splitmix64(h)) & ((1 << 53) - 1)
}

/// The sampler seed of candidate `k` of an utterance.
pub fn candidate_seed(utterance_seed: u64, k: usize) -> u64 {
    splitmix64(utterance_seed.wrapping_add((k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_depend_on_run_seed_id_and_candidate() {
        let a = utterance_seed(0, "mono-en-000001");
        assert_eq!(a, utterance_seed(0, "mono-en-000001"));
        assert_ne!(a, utterance_seed(1, "mono-en-000001"));
        assert_ne!(a, utterance_seed(0, "mono-en-000002"));
        assert!(a < 1 << 53);
        assert_ne!(candidate_seed(a, 0), candidate_seed(a, 1));
    }
}
