//! Band-limited sample-rate conversion with `rubato`'s synchronous FFT resampler (exact rational
//! ratio, anti-aliasing low-pass), wrapped so that it streams input chunks of any size: input is
//! buffered into the resampler's fixed block size, so the output never depends on how the input
//! was chopped. The resampler's group delay is removed and the output length is
//! `round(n_in * out_rate / in_rate)`.

use rubato::Resampler as _;

use super::{AudioError, Result};
use crate::stream::Streaming;

/// Input block size handed to rubato (frames).
const BLOCK: usize = 1024;

/// Streaming mono resampler. `push` returns the output completed so far; `finish` flushes.
pub struct StreamResampler {
    in_rate: u32,
    out_rate: u32,
    inner: Option<rubato::FftFixedIn<f32>>,
    pending: Vec<f32>,
    /// Output samples still to drop at the start (the filter's delay).
    skip: usize,
    consumed: u64,
    emitted: u64,
}

impl StreamResampler {
    pub fn new(in_rate: u32, out_rate: u32) -> Result<Self> {
        if in_rate == 0 || out_rate == 0 {
            return Err(AudioError::InvalidInput(format!(
                "sample rates must be positive (got {in_rate} Hz -> {out_rate} Hz)"
            )));
        }
        let inner = if in_rate == out_rate {
            None
        } else {
            Some(
                rubato::FftFixedIn::<f32>::new(in_rate as usize, out_rate as usize, BLOCK, 1, 1)
                    .map_err(|e| AudioError::Resample(e.to_string()))?,
            )
        };
        let skip = inner.as_ref().map_or(0, |r| r.output_delay());
        Ok(Self {
            in_rate,
            out_rate,
            inner,
            pending: Vec::new(),
            skip,
            consumed: 0,
            emitted: 0,
        })
    }

    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// Output length for `n_in` input samples.
    pub fn output_len(&self, n_in: u64) -> u64 {
        (n_in * self.out_rate as u64 + self.in_rate as u64 / 2) / self.in_rate as u64
    }

    fn take(skip: &mut usize, produced: &[f32], out: &mut Vec<f32>) {
        let dropped = (*skip).min(produced.len());
        *skip -= dropped;
        out.extend_from_slice(&produced[dropped..]);
    }
}

impl Streaming for StreamResampler {
    type Input = [f32];
    type Output = Vec<f32>;
    type Error = AudioError;

    /// Feeds `samples` (any length, including 0) and returns the newly completed output.
    fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>> {
        self.consumed += samples.len() as u64;
        let Some(inner) = self.inner.as_mut() else {
            self.emitted += samples.len() as u64;
            return Ok(samples.to_vec());
        };
        self.pending.extend_from_slice(samples);
        let mut out = Vec::new();
        let mut start = 0;
        while self.pending.len() - start >= inner.input_frames_next() {
            let need = inner.input_frames_next();
            let block = &self.pending[start..start + need];
            let produced = inner
                .process(&[block], None)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            start += need;
            Self::take(&mut self.skip, &produced[0], &mut out);
        }
        self.pending.drain(..start);
        // Full blocks of real input lag the input by the filter delay, so this output never
        // runs past `output_len(consumed)`; `finish` trims the padded tail.
        self.emitted += out.len() as u64;
        Ok(out)
    }

    /// Flushes the buffered input (zero-padded) and returns the rest of the output.
    fn finish(&mut self) -> Result<Vec<f32>> {
        let total = self.output_len(self.consumed);
        let Some(inner) = self.inner.as_mut() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut guard = 0;
        while self.emitted + (out.len() as u64) < total {
            let need = inner.input_frames_next();
            let mut block = std::mem::take(&mut self.pending);
            block.resize(need, 0.0);
            let produced = inner
                .process(&[&block[..]], None)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            Self::take(&mut self.skip, &produced[0], &mut out);
            guard += 1;
            if guard > 64 {
                return Err(AudioError::Resample(
                    "flush did not converge (internal error)".into(),
                ));
            }
        }
        out.truncate(total.saturating_sub(self.emitted) as usize);
        self.emitted += out.len() as u64;
        self.reset();
        Ok(out)
    }

    /// Drops buffered input and filter state, ready for a new stream.
    fn reset(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.reset();
            self.skip = inner.output_delay();
        }
        self.pending.clear();
        self.consumed = 0;
        self.emitted = 0;
    }
}

/// Offline resampling of a whole mono signal (the streaming resampler fed in one push).
pub fn resample(samples: &[f32], in_rate: u32, out_rate: u32) -> Result<Vec<f32>> {
    let mut r = StreamResampler::new(in_rate, out_rate)?;
    let mut out = r.push(samples)?;
    out.extend(r.finish()?);
    Ok(out)
}
