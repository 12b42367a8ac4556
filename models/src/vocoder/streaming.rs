//! Streaming synthesis: units in, PCM out, chunk by chunk, equal to offline synthesis.
//!
//! Every layer keeps its own leftover (moshi's StreamingModule style): a "same" convolution
//! keeps the last `dilation * (kernel - 1)` input samples (zeros at the start, as the offline
//! zero padding) and outputs what its inputs fully determine; a transposed convolution keeps the
//! overlap-add tail of `kernel - stride` samples (bias added once) and drops `padding` samples at
//! the start; residual branches keep the skip input until the branch output catches up; the
//! multi-receptive-field mean waits for its slowest block. `finish` pads each layer's end with
//! zeros in order, exactly as offline padding does. The duration predictor is streamed the same
//! way over units; its durations are part of the stream state ([`VocoderStream::durations`]).
//!
//! The price of equality is look-ahead: an output sample is only final once the inputs its
//! receptive field reaches are in ([`VocoderStream::lookahead_samples`], about 20 units for the
//! mHuBERT vocoder, plus the duration predictor's 2 units).

use super::duration::{durations_from_log, VariancePredictor};
use super::generator::{CodeHiFiGan, Speaker};
use super::layers::{leaky_relu, Conv1d, ConvTranspose1d, ResBlock, LRELU_SLOPE, LRELU_SLOPE_POST};
use crate::stream::Streaming;
use crate::units::UnitId;
use crate::{ModelError, Result};
use std::sync::Arc;
use tch::{Device, Tensor};

/// A layer's (batch, channel, time) chunk, or nothing yet (not an error: "not enough input").
type StreamTensor = Option<Tensor>;

fn len(x: &Tensor) -> i64 {
    x.size()[2]
}

fn cat_time(parts: &[Tensor]) -> Result<Tensor> {
    if parts.len() == 1 {
        return Ok(parts[0].shallow_clone());
    }
    Ok(Tensor::f_cat(parts, 2)?)
}

/// Leftover input of a stride-1 "same" convolution.
#[derive(Debug, Default)]
struct ConvState {
    buf: Option<Tensor>,
}

impl ConvState {
    fn step(&mut self, conv: &Conv1d, x: StreamTensor, flush: bool) -> Result<StreamTensor> {
        let span = conv.span();
        let mut parts = Vec::with_capacity(3);
        match (self.buf.take(), &x) {
            (Some(b), _) => parts.push(b),
            (None, Some(x)) => {
                let s = x.size();
                parts.push(Tensor::f_zeros(
                    [s[0], s[1], conv.padding],
                    (x.kind(), x.device()),
                )?);
            }
            // Nothing ever came: nothing to do, even at flush.
            (None, None) => return Ok(None),
        }
        if let Some(x) = x {
            parts.push(x);
        }
        if flush {
            let s = parts[0].size();
            let right = span - conv.padding;
            parts.push(Tensor::f_zeros(
                [s[0], s[1], right],
                (parts[0].kind(), parts[0].device()),
            )?);
        }
        let buf = cat_time(&parts)?;
        let t = len(&buf);
        if t <= span {
            if !flush {
                self.buf = Some(buf);
            }
            return Ok(None);
        }
        let y = buf.f_conv1d(
            &conv.weight,
            conv.bias.as_ref(),
            [1],
            [0],
            [conv.dilation],
            1,
        )?;
        if !flush {
            self.buf = Some(buf.f_narrow(2, t - span, span)?);
        }
        Ok(Some(y))
    }
}

/// Overlap-add state of a transposed convolution.
#[derive(Debug, Default)]
struct UpState {
    /// Partial sums (no bias) of the next `kernel - stride` output samples.
    tail: Option<Tensor>,
    /// Output samples still to drop at the start (the conv's padding).
    skip: Option<i64>,
}

impl UpState {
    fn step(&mut self, up: &ConvTranspose1d, x: StreamTensor, flush: bool) -> Result<StreamTensor> {
        let (u, k, p) = (up.stride, up.kernel(), up.padding);
        let overlap = k - u;
        let mut out = None;
        if let Some(x) = x {
            let n = len(&x);
            let none: Option<&Tensor> = None;
            let mut y = x.f_conv_transpose1d(&up.weight, none, [u], [0], [0], 1, [1])?;
            if let Some(tail) = self.tail.take() {
                let head = y.f_narrow(2, 0, overlap)?.f_add(&tail)?;
                y = Tensor::f_cat(&[head, y.f_narrow(2, overlap, len(&y) - overlap)?], 2)?;
            }
            self.tail = Some(y.f_narrow(2, n * u, overlap)?);
            out = Some(y.f_narrow(2, 0, n * u)?);
        }
        if flush {
            // The first `overlap - p` = p samples of the tail are real output, the rest padding.
            if let Some(tail) = self.tail.take() {
                let last = tail.f_narrow(2, 0, overlap - p)?;
                out = Some(match out {
                    Some(o) => Tensor::f_cat(&[o, last], 2)?,
                    None => last,
                });
            }
        }
        let Some(mut o) = out else {
            return Ok(None);
        };
        let skip = self.skip.get_or_insert(p);
        if *skip > 0 {
            let drop = (*skip).min(len(&o));
            *skip -= drop;
            o = o.f_narrow(2, drop, len(&o) - drop)?;
        }
        if flush {
            self.skip = None;
        }
        if len(&o) == 0 {
            return Ok(None);
        }
        Ok(Some(o.f_add(&up.bias.f_view([1, -1, 1])?)?))
    }
}

/// Samples waiting to be combined with a later output (skip connections, branch outputs).
#[derive(Debug, Default)]
struct Fifo {
    buf: Option<Tensor>,
}

impl Fifo {
    fn push(&mut self, x: &StreamTensor) -> Result<()> {
        if let Some(x) = x {
            self.buf = Some(match self.buf.take() {
                Some(b) => Tensor::f_cat(&[&b, x], 2)?,
                None => x.shallow_clone(),
            });
        }
        Ok(())
    }

    fn available(&self) -> i64 {
        self.buf.as_ref().map_or(0, len)
    }

    fn pop(&mut self, n: i64) -> Result<Tensor> {
        let b = self
            .buf
            .take()
            .ok_or_else(|| ModelError::InvalidArgument("stream fifo underflow".into()))?;
        let t = len(&b);
        if n > t {
            return Err(ModelError::InvalidArgument(format!(
                "stream fifo underflow: {n} wanted, {t} held"
            )));
        }
        if n < t {
            self.buf = Some(b.f_narrow(2, n, t - n)?);
        }
        Ok(b.f_narrow(2, 0, n)?)
    }
}

fn lrelu(x: StreamTensor, slope: f64) -> Result<StreamTensor> {
    x.map(|x| leaky_relu(&x, slope)).transpose()
}

/// One residual sub-layer `x + f(x)` in a stream: f's convs and the held skip input.
#[derive(Debug, Default)]
struct ResidualState {
    convs: Vec<ConvState>,
    skip: Fifo,
}

impl ResidualState {
    fn step(&mut self, convs: &[&Conv1d], x: StreamTensor, flush: bool) -> Result<StreamTensor> {
        if self.convs.is_empty() {
            self.convs = convs.iter().map(|_| ConvState::default()).collect();
        }
        self.skip.push(&x)?;
        let mut t = x;
        for (c, st) in convs.iter().zip(self.convs.iter_mut()) {
            t = st.step(c, lrelu(t, LRELU_SLOPE)?, flush)?;
        }
        match t {
            Some(t) => {
                let s = self.skip.pop(len(&t))?;
                Ok(Some(t.f_add(&s)?))
            }
            None => Ok(None),
        }
    }
}

#[derive(Debug, Default)]
struct ResBlockState {
    layers: Vec<ResidualState>,
}

impl ResBlockState {
    fn step(&mut self, rb: &ResBlock, x: StreamTensor, flush: bool) -> Result<StreamTensor> {
        let pairs: Vec<Vec<&Conv1d>> = match rb {
            ResBlock::One { convs1, convs2 } => {
                convs1.iter().zip(convs2).map(|(a, b)| vec![a, b]).collect()
            }
            ResBlock::Two { convs } => convs.iter().map(|c| vec![c]).collect(),
        };
        if self.layers.is_empty() {
            self.layers = pairs.iter().map(|_| ResidualState::default()).collect();
        }
        let mut x = x;
        for (convs, st) in pairs.iter().zip(self.layers.iter_mut()) {
            x = st.step(convs, x, flush)?;
        }
        Ok(x)
    }
}

/// One upsampling stage: transposed conv, then the mean of its residual blocks.
#[derive(Debug, Default)]
struct StageState {
    up: UpState,
    blocks: Vec<ResBlockState>,
    pending: Vec<Fifo>,
}

impl StageState {
    fn step(
        &mut self,
        up: &ConvTranspose1d,
        blocks: &[ResBlock],
        x: StreamTensor,
        flush: bool,
    ) -> Result<StreamTensor> {
        if self.blocks.is_empty() {
            self.blocks = blocks.iter().map(|_| ResBlockState::default()).collect();
            self.pending = blocks.iter().map(|_| Fifo::default()).collect();
        }
        let x = self.up.step(up, lrelu(x, LRELU_SLOPE)?, flush)?;
        for ((rb, st), fifo) in blocks.iter().zip(&mut self.blocks).zip(&mut self.pending) {
            let y = st.step(rb, x.as_ref().map(|t| t.shallow_clone()), flush)?;
            fifo.push(&y)?;
        }
        let n = self.pending.iter().map(Fifo::available).min().unwrap_or(0);
        if n == 0 {
            return Ok(None);
        }
        let mut xs = self.pending[0].pop(n)?;
        for fifo in &mut self.pending[1..] {
            xs = xs.f_add(&fifo.pop(n)?)?;
        }
        Ok(Some(xs.f_div_scalar(blocks.len() as f64)?))
    }
}

/// The generator body (frames in, samples out) as a stream.
#[derive(Debug, Default)]
struct GeneratorState {
    conv_pre: ConvState,
    stages: Vec<StageState>,
    conv_post: ConvState,
}

impl GeneratorState {
    fn step(&mut self, m: &CodeHiFiGan, x: StreamTensor, flush: bool) -> Result<StreamTensor> {
        if self.stages.is_empty() {
            self.stages = m.ups.iter().map(|_| StageState::default()).collect();
        }
        let nk = m.config().resblock_kernel_sizes.len();
        let mut x = self.conv_pre.step(&m.conv_pre, x, flush)?;
        for (i, (up, st)) in m.ups.iter().zip(&mut self.stages).enumerate() {
            x = st.step(up, &m.resblocks[i * nk..(i + 1) * nk], x, flush)?;
        }
        let x = self
            .conv_post
            .step(&m.conv_post, lrelu(x, LRELU_SLOPE_POST)?, flush)?;
        x.map(|x| x.f_tanh().map_err(ModelError::from)).transpose()
    }
}

/// The duration predictor over units as a stream; keeps the embeddings whose durations are not
/// known yet.
#[derive(Debug, Default)]
struct DurationState {
    conv1: ConvState,
    conv2: ConvState,
    waiting: Fifo,
}

impl DurationState {
    /// Embeddings in; (embeddings, durations) out for the units whose durations are final.
    fn step(
        &mut self,
        dp: &VariancePredictor,
        x: StreamTensor,
        flush: bool,
    ) -> Result<Option<(Tensor, Tensor)>> {
        self.waiting.push(&x)?;
        let h = self.conv1.step(&dp.conv1, x, flush)?;
        let h = h
            .map(|h| VariancePredictor::relu_norm(&h, &dp.ln1))
            .transpose()?;
        let h = self.conv2.step(&dp.conv2, h, flush)?;
        let Some(h) = h else { return Ok(None) };
        let h = VariancePredictor::relu_norm(&h, &dp.ln2)?;
        let d = durations_from_log(&dp.project(&h)?)?.f_view([-1])?;
        let e = self.waiting.pop(d.size()[0])?;
        Ok(Some((e, d)))
    }
}

/// One utterance being synthesised. Weights are shared (`Arc`); each stream owns its buffers.
///
/// `step(units)` returns the PCM samples (1-D) that those units (and the earlier ones) fully
/// determine, or `None` when nothing new is final yet; `flush()` ends the utterance and returns
/// the rest; `reset()` drops all state. The concatenation of the outputs equals
/// [`CodeHiFiGan::synthesize`] of the whole sequence.
#[derive(Debug)]
pub struct VocoderStream {
    model: Arc<CodeHiFiGan>,
    dur_prediction: bool,
    speaker: Option<Tensor>,
    duration: DurationState,
    generator: GeneratorState,
    durations: Vec<i64>,
    units_in: usize,
    samples_out: i64,
}

impl VocoderStream {
    /// A new stream. Fails if `dur_prediction` is asked of a vocoder without a predictor, or if
    /// the speaker does not suit the vocoder.
    pub fn new(
        model: Arc<CodeHiFiGan>,
        dur_prediction: bool,
        speaker: Option<&Speaker>,
    ) -> Result<Self> {
        if dur_prediction && !model.has_duration_predictor() {
            return Err(ModelError::InvalidArgument(
                "duration prediction was asked for but this vocoder has no duration predictor"
                    .into(),
            ));
        }
        let speaker = {
            let _g = tch::no_grad_guard();
            model.speaker_vector(speaker)?
        };
        Ok(Self {
            model,
            dur_prediction,
            speaker,
            duration: DurationState::default(),
            generator: GeneratorState::default(),
            durations: Vec::new(),
            units_in: 0,
            samples_out: 0,
        })
    }

    /// Feeds units in fairseq's padded layout (negative ids are padding and dropped; an
    /// out-of-range id is an error and leaves the state unchanged). Returns the new final
    /// samples (none yet: zero samples).
    pub fn push_padded(&mut self, units: &[i64]) -> Result<Tensor> {
        let ids = self.model.clean_units(units)?;
        self.advance(&ids, false)
    }

    /// Frames per unit predicted so far (1 each without duration prediction).
    pub fn durations(&self) -> &[i64] {
        &self.durations
    }

    /// Units accepted so far (after dropping negative ids).
    pub fn units_in(&self) -> usize {
        self.units_in
    }

    /// Samples returned so far.
    pub fn samples_out(&self) -> i64 {
        self.samples_out
    }

    fn advance(&mut self, ids: &[i64], flush: bool) -> Result<Tensor> {
        let _span = tracing::debug_span!("vocoder_step", units = ids.len(), flush).entered();
        let _guard = tch::no_grad_guard();
        let m = Arc::clone(&self.model);
        let x = if ids.is_empty() {
            None
        } else {
            Some(m.embed(ids)?)
        };
        self.units_in += ids.len();
        let frames = if self.dur_prediction {
            let dp = m.dur_predictor.as_ref().expect("checked in new");
            match self.duration.step(dp, x, flush)? {
                Some((e, d)) => {
                    self.durations
                        .extend(Vec::<i64>::try_from(&d.f_to_device(Device::Cpu)?)?);
                    Some(e.f_repeat_interleave_self_tensor(&d, 2, None)?)
                }
                None => None,
            }
        } else {
            if let Some(x) = &x {
                self.durations
                    .extend(std::iter::repeat_n(1, len(x) as usize));
            }
            x
        };
        let frames = frames
            .map(|f| CodeHiFiGan::add_speaker(&f, self.speaker.as_ref()))
            .transpose()?;
        let y = self.generator.step(&m, frames, flush)?;
        let y = match y {
            Some(y) => y.f_view([-1])?,
            None => Tensor::f_zeros([0], (m.kind(), m.device()))?,
        };
        self.samples_out += y.size()[0];
        Ok(y)
    }

    /// Samples of look-ahead of the generator: after `n` frames (and no flush) the stream has
    /// returned `n * hop_length - lookahead_samples` samples (for n large enough).
    pub fn lookahead_samples(model: &CodeHiFiGan) -> i64 {
        // Follow how many outputs each layer can emit from n inputs, without tensors.
        let n = 10_000i64;
        let conv = |c: &Conv1d, x: i64| (x - c.right_context()).max(0);
        let nk = model.config().resblock_kernel_sizes.len();
        let mut x = conv(&model.conv_pre, n);
        for (i, up) in model.ups.iter().enumerate() {
            x = (x * up.stride - up.padding).max(0);
            let mut least = i64::MAX;
            for rb in &model.resblocks[i * nk..(i + 1) * nk] {
                let mut y = x;
                match rb {
                    ResBlock::One { convs1, convs2 } => {
                        for (a, b) in convs1.iter().zip(convs2) {
                            y = conv(b, conv(a, y));
                        }
                    }
                    ResBlock::Two { convs } => {
                        for c in convs {
                            y = conv(c, y);
                        }
                    }
                }
                least = least.min(y);
            }
            x = least;
        }
        x = conv(&model.conv_post, x);
        n * model.hop_length() - x
    }

    /// Units of look-ahead of the duration predictor (0 without duration prediction).
    pub fn duration_lookahead_units(&self) -> i64 {
        match (&self.model.dur_predictor, self.dur_prediction) {
            (Some(dp), true) => dp.lookahead_units(),
            _ => 0,
        }
    }
}

impl Streaming for VocoderStream {
    type Input = [UnitId];
    /// Samples `[n]` at the vocoder's rate, n = 0 for "nothing yet".
    type Output = Tensor;
    type Error = ModelError;

    /// Feeds units (an id outside the vocoder's vocabulary is an error and leaves the state
    /// unchanged); returns the new final samples.
    fn push(&mut self, units: &[UnitId]) -> Result<Tensor> {
        let ids: Vec<i64> = units.iter().map(|&u| i64::from(u)).collect();
        self.push_padded(&ids)
    }

    /// Ends the utterance: everything still buffered comes out. The stream is then empty and
    /// takes the next utterance (durations and counters are kept until `reset`).
    fn finish(&mut self) -> Result<Tensor> {
        self.advance(&[], true)
    }

    /// Forgets everything (buffers, durations, counters).
    fn reset(&mut self) {
        self.duration = DurationState::default();
        self.generator = GeneratorState::default();
        self.durations.clear();
        self.units_in = 0;
        self.samples_out = 0;
    }
}
