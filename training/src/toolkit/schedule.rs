//! Learning-rate schedules: linear warm-up then cosine decay (SFT, preference training), and
//! HiFi-GAN's stepwise exponential decay (vocoder training).

/// Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to
/// `peak * min_ratio` at `total` steps (`step` counts from 1).
pub fn warmup_cosine(step: u64, peak: f64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cosine)
}

/// `base` multiplied by `factor` once every `every` steps (`step` counts from 0): HiFi-GAN's
/// `ExponentialLR(gamma)` stepped once per epoch of `every` steps.
pub fn step_decay(step: u64, base: f64, factor: f64, every: u64) -> f64 {
    base * factor.powi((step / every) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| warmup_cosine(s, 1.0, 10, 110, 0.1);
        assert!((lr(1) - 0.1).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-12);
        assert!((lr(110) - 0.1).abs() < 1e-12);
        assert!((lr(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn step_decay_multiplies_once_per_period() {
        assert_eq!(step_decay(0, 2.0, 0.5, 10), 2.0);
        assert_eq!(step_decay(9, 2.0, 0.5, 10), 2.0);
        assert_eq!(step_decay(10, 2.0, 0.5, 10), 1.0);
        assert_eq!(step_decay(25, 2.0, 0.5, 10), 0.5);
    }
}
