//! The model side: one utterance's units in, subtitle text and PCM out as they are decoded
//! (by the translator's [`DecodeSession`]), with the latencies, the audio output and the report
//! of the utterance.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tolk_models::translator::{
    Confidence, DecodeSession, Direction, Mode, Output, Stop, Translation, Translator,
};
use tolk_models::units::UnitId;

use super::frontend::{FrontEnd, FrontEvent, Utterance, VadKind};
use super::output::PcmOut;
use super::{PipelineError, PipelineOptions, Result};
use tolk_models::stream::Streaming;

/// The outcome of one utterance. Latencies count from the endpoint ([`Utterance::ended_at`]).
#[derive(Debug, Clone, Serialize)]
pub struct UtteranceReport {
    pub id: u64,
    pub direction: Direction,
    pub mode: Mode,
    pub text: String,
    /// Target units (empty for text-only modes).
    pub units: Vec<UnitId>,
    pub source_units: usize,
    /// PCM samples produced (16 kHz).
    pub samples_out: u64,
    pub duration_s: f64,
    /// End of speech to the first text delta / first PCM chunk / everything out.
    pub first_text_s: Option<f64>,
    pub first_audio_s: Option<f64>,
    pub done_s: f64,
    /// Unit extraction + decoding + vocoding time.
    pub processing_s: f64,
    /// `processing_s / duration_s`.
    pub rtf: f64,
    pub stop: Stop,
    /// Why audio output stopped early, if it did.
    pub output_error: Option<String>,
    /// The decoder's certainty ([`Confidence::score`], in (0, 1]) and its parts.
    pub confidence: f64,
    pub confidence_detail: Confidence,
    /// Below the minimum confidence: no speech was produced.
    pub not_understood: bool,
}

/// Whether `translator` can decode `mode` in `direction` (with a vocoder when it speaks).
pub(crate) fn check_task(translator: &Translator, direction: Direction, mode: Mode) -> Result<()> {
    mode.task_for(translator.manifest().strategy)?;
    if !translator.manifest().supports_direction(direction) {
        return Err(PipelineError::Options(format!(
            "the model at {} does not translate {direction}",
            translator.dir().display()
        )));
    }
    if mode.has_units() {
        translator.vocoder(direction.tgt())?;
    }
    Ok(())
}

/// Translates utterances with its own [`DecodeSession`]: PCM to a [`PcmOut`], text and audio
/// chunks to the caller, latencies from the endpoint in the report.
pub struct UtteranceTranslator {
    session: DecodeSession,
    direction: Direction,
    mode: Mode,
}

impl UtteranceTranslator {
    pub fn new(
        translator: Arc<Translator>,
        direction: Direction,
        mode: Mode,
        chunk_units: usize,
    ) -> Result<Self> {
        // Fail early on a mode or direction the model cannot do.
        check_task(&translator, direction, mode)?;
        Ok(Self {
            session: DecodeSession::new(translator)?.with_vocoder_chunk(chunk_units),
            direction,
            mode,
        })
    }

    /// Utterances whose text confidence ([`Confidence::score`]) is below `min` are reported
    /// not understood and get no speech (0 turns the check off).
    pub fn with_min_confidence(mut self, min: f64) -> Self {
        self.session = self.session.with_min_confidence(min);
        self
    }

    /// Direction and mode of the next utterances (checked as in [`Self::new`]).
    pub fn set_task(&mut self, direction: Direction, mode: Mode) -> Result<()> {
        if (direction, mode) != (self.direction, self.mode) {
            check_task(self.session.translator(), direction, mode)?;
            self.direction = direction;
            self.mode = mode;
        }
        Ok(())
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn translator(&self) -> &Arc<Translator> {
        self.session.translator()
    }

    /// Translates `utt`: text deltas and PCM chunks go to `on` as they come, PCM also to `out`
    /// (an output error stops the writing, not the translation).
    pub fn translate(
        &mut self,
        utt: &Utterance,
        out: &mut dyn PcmOut,
        on: &mut dyn FnMut(Output<'_>),
    ) -> Result<UtteranceReport> {
        let _span =
            tracing::info_span!("utterance", id = utt.id, units = utt.units.len()).entered();
        let t0 = Instant::now();
        let since_end = |t: Instant| t.duration_since(utt.ended_at).as_secs_f64();
        let mut first_text: Option<f64> = None;
        let mut first_audio: Option<f64> = None;
        let mut output_error: Option<String> = None;
        let Translation {
            output: res,
            samples_out,
            understood,
        } = {
            let _d = tracing::info_span!("decode").entered();
            self.session
                .translate(&utt.units, self.direction, self.mode, &mut |o| {
                    match &o {
                        Output::Text { .. } => {
                            first_text.get_or_insert_with(|| since_end(Instant::now()));
                        }
                        Output::Audio { pcm, .. } => {
                            if output_error.is_none() {
                                if let Err(e) = out.write(pcm) {
                                    tracing::warn!(utterance = utt.id, "audio output: {e}");
                                    output_error = Some(e.to_string());
                                }
                            }
                            first_audio.get_or_insert_with(|| since_end(Instant::now()));
                        }
                        Output::TextEnd { .. } => {}
                    }
                    on(o)
                })?
        };
        if output_error.is_none() {
            if let Err(e) = out.end_of_utterance() {
                output_error = Some(e.to_string());
            }
        }
        let work_s = t0.elapsed().as_secs_f64();
        let processing_s = work_s + utt.extract_s;
        let duration_s = utt.duration_s().max(1e-6);
        Ok(UtteranceReport {
            id: utt.id,
            direction: self.direction,
            mode: self.mode,
            text: res.text,
            units: res.units,
            source_units: utt.units.len(),
            samples_out,
            duration_s: utt.duration_s(),
            first_text_s: first_text,
            first_audio_s: first_audio,
            done_s: since_end(Instant::now()),
            processing_s,
            rtf: processing_s / duration_s,
            stop: res.stop,
            output_error,
            confidence: res.confidence.score(),
            confidence_detail: res.confidence,
            not_understood: !understood,
        })
    }
}

/// [`FrontEnd`] and [`UtteranceTranslator`] composed synchronously: audio in, and at each
/// endpoint the utterance is translated before `push` returns. For hosts that bring their own
/// threading (the GStreamer element's streaming thread, benchmarks); the kiosk daemon uses
/// [`super::Pipeline`], which puts a bounded queue and a worker thread between the two.
pub struct Translating {
    pub front: FrontEnd,
    pub worker: UtteranceTranslator,
}

/// What [`Translating`] reports.
#[derive(Debug)]
pub enum StreamEvent<'a> {
    /// Speech started.
    Start {
        id: u64,
        start_s: f64,
    },
    /// Speech ended; translation follows.
    End(&'a Utterance),
    Output(&'a Utterance, Output<'a>),
    Done(&'a Utterance, &'a UtteranceReport),
    /// The utterance could not be translated (e.g. too short to hold a unit).
    Failed(&'a Utterance, &'a PipelineError),
}

impl Translating {
    pub fn new(
        translator: Arc<Translator>,
        vad: &VadKind,
        opts: &PipelineOptions,
        input_rate: u32,
    ) -> Result<Self> {
        Ok(Self {
            front: FrontEnd::new(translator.clone(), vad, opts, input_rate)?,
            worker: UtteranceTranslator::new(
                translator,
                opts.direction,
                opts.mode,
                opts.vocoder_chunk_units,
            )?
            .with_min_confidence(opts.min_confidence),
        })
    }

    /// Pushes source-rate mono samples; translates every utterance that ends in them.
    pub fn push(
        &mut self,
        samples: &[f32],
        out: &mut dyn PcmOut,
        on: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<Vec<UtteranceReport>> {
        let evs = self.front.push(samples)?;
        self.handle(evs, out, on)
    }

    /// Ends the stream (an open utterance is translated).
    pub fn finish(
        &mut self,
        out: &mut dyn PcmOut,
        on: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<Vec<UtteranceReport>> {
        let evs = self.front.finish()?;
        self.handle(evs, out, on)
    }

    fn handle(
        &mut self,
        evs: Vec<FrontEvent>,
        out: &mut dyn PcmOut,
        on: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<Vec<UtteranceReport>> {
        let mut reports = Vec::new();
        for ev in evs {
            match ev {
                FrontEvent::Start { id, start_s, .. } => on(StreamEvent::Start { id, start_s }),
                FrontEvent::Utterance(u) => {
                    on(StreamEvent::End(&u));
                    match self
                        .worker
                        .translate(&u, out, &mut |o| on(StreamEvent::Output(&u, o)))
                    {
                        Ok(r) => {
                            on(StreamEvent::Done(&u, &r));
                            reports.push(r);
                        }
                        Err(e) => on(StreamEvent::Failed(&u, &e)),
                    }
                }
            }
        }
        Ok(reports)
    }
}
