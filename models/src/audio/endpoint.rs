//! Endpointing: speech start/end events from per-window speech probabilities, streaming.
//!
//! The rules are those of the Silero package's `get_speech_timestamps_from_probs`
//! (`silero_vad/utils_vad.py`, v6.2.3) with `speech_pad_ms = 0`, rewritten as a causal state
//! machine so that segments come out while audio is still arriving:
//! - speech starts at the first window with p >= `threshold`;
//! - it ends at the first window of a run with p < `neg_threshold` (default threshold - 0.15)
//!   once that run lasts `min_silence_ms` (the hangover); segments of `min_speech_ms` or less are
//!   dropped;
//! - a segment longer than `max_speech_s` is cut at the longest pause (> 98 ms) inside it and
//!   continues after that pause, or, with no such pause, is cut right there (forced). Long
//!   monologues are therefore split, never dropped;
//! - at the end of the stream an open segment ends at the last sample.
//!
//! Timestamps are sample indices at 16 kHz on window boundaries (512 samples). A `Start` event is
//! emitted as soon as the segment is certain to survive the minimum-speech rule, so it can come
//! later than its timestamp; an `End` always follows its `Start`.

use super::vad::{VoiceActivity, WINDOW};
use super::{AudioError, Result, SAMPLE_RATE};
use crate::stream::{Chunk, Streaming};

/// Why a segment ended: the one end reason from the endpointer through the pipeline's events
/// to the GStreamer element's messages, spelled as [`EndReason::as_str`] everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EndReason {
    /// Silence lasted the hangover.
    #[serde(rename = "silence")]
    Silence,
    /// Maximum length reached; cut at the longest pause inside the segment.
    #[serde(rename = "max_length")]
    MaxLengthAtPause,
    /// Maximum length reached with no usable pause; cut at the limit.
    #[serde(rename = "max_length_forced")]
    MaxLengthForced,
    /// The stream finished (or the source was lost) inside speech.
    #[serde(rename = "source_ended")]
    EndOfStream,
}

impl EndReason {
    /// `silence`, `max_length`, `max_length_forced` or `source_ended`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Silence => "silence",
            Self::MaxLengthAtPause => "max_length",
            Self::MaxLengthForced => "max_length_forced",
            Self::EndOfStream => "source_ended",
        }
    }

    /// Whether the maximum utterance length cut the segment.
    pub fn is_max_length(self) -> bool {
        matches!(self, Self::MaxLengthAtPause | Self::MaxLengthForced)
    }
}

/// A speech boundary, in samples since the start of the stream (16 kHz).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechEvent {
    Start { sample: u64 },
    End { sample: u64, reason: EndReason },
}

/// Endpointing options (Silero `get_speech_timestamps` names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointConfig {
    pub threshold: f32,
    /// Exit threshold while in speech; `None` means `max(threshold - 0.15, 0.01)`.
    pub neg_threshold: Option<f32>,
    pub min_speech_ms: f64,
    pub min_silence_ms: f64,
    /// Maximum utterance length (seconds); `f64::INFINITY` for none.
    pub max_speech_s: f64,
    /// Pauses longer than this (ms) are candidate cut points at the maximum length.
    pub min_silence_at_max_speech_ms: f64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            neg_threshold: None,
            min_speech_ms: 250.0,
            min_silence_ms: 100.0,
            max_speech_s: f64::INFINITY,
            min_silence_at_max_speech_ms: 98.0,
        }
    }
}

impl EndpointConfig {
    fn validate(&self) -> Result<()> {
        let ok = (0.0..=1.0).contains(&self.threshold)
            && self.neg_threshold.is_none_or(|t| (0.0..=1.0).contains(&t))
            && self.min_speech_ms >= 0.0
            && self.min_silence_ms >= 0.0
            && self.min_silence_at_max_speech_ms >= 0.0
            && self.max_speech_s > 0.0;
        if ok {
            Ok(())
        } else {
            Err(AudioError::Config(format!(
                "invalid endpoint options {self:?}"
            )))
        }
    }
}

/// The state machine over window probabilities. Sample counters use 0 as "unset", as the
/// reference does.
#[derive(Debug, Clone)]
pub struct EndpointDetector {
    threshold: f32,
    neg_threshold: f32,
    min_speech: f64,
    min_silence: f64,
    max_speech: f64,
    min_silence_at_max: f64,
    windows: u64,
    triggered: bool,
    start: Option<u64>,
    confirmed: bool,
    temp_end: u64,
    prev_end: u64,
    next_start: u64,
    possible_ends: Vec<(u64, u64)>,
}

impl EndpointDetector {
    pub fn new(config: EndpointConfig) -> Result<Self> {
        config.validate()?;
        let sr = SAMPLE_RATE as f64;
        Ok(Self {
            threshold: config.threshold,
            neg_threshold: config
                .neg_threshold
                .unwrap_or((config.threshold - 0.15).max(0.01)),
            min_speech: sr * config.min_speech_ms / 1000.0,
            min_silence: sr * config.min_silence_ms / 1000.0,
            max_speech: sr * config.max_speech_s - WINDOW as f64,
            min_silence_at_max: sr * config.min_silence_at_max_speech_ms / 1000.0,
            windows: 0,
            triggered: false,
            start: None,
            confirmed: false,
            temp_end: 0,
            prev_end: 0,
            next_start: 0,
            possible_ends: Vec::new(),
        })
    }

    /// Whether a segment is open.
    pub fn in_speech(&self) -> bool {
        self.start.is_some()
    }

    /// Windows consumed since the last reset.
    pub fn windows(&self) -> u64 {
        self.windows
    }

    pub fn reset(&mut self) {
        self.windows = 0;
        self.triggered = false;
        self.start = None;
        self.confirmed = false;
        self.temp_end = 0;
        self.prev_end = 0;
        self.next_start = 0;
        self.possible_ends.clear();
    }

    fn open(&mut self, at: u64) {
        self.start = Some(at);
        self.confirmed = false;
    }

    fn close(&mut self, end: u64, reason: EndReason, events: &mut Vec<SpeechEvent>) {
        if let Some(start) = self.start.take() {
            if !self.confirmed {
                events.push(SpeechEvent::Start { sample: start });
            }
            events.push(SpeechEvent::End {
                sample: end,
                reason,
            });
        }
        self.confirmed = false;
    }

    /// Consumes the probability of the next window; `available` is the number of real samples
    /// seen so far (a lower bound on the stream length).
    pub fn push_probability(&mut self, p: f32, available: u64, events: &mut Vec<SpeechEvent>) {
        let cur = WINDOW as u64 * self.windows;
        self.windows += 1;
        self.step(p, cur, events);
        // Emit Start once the segment must outlive the minimum-speech rule.
        if let (Some(start), false) = (self.start, self.confirmed) {
            let lower_end = if self.temp_end != 0 {
                self.temp_end
            } else {
                (cur + WINDOW as u64).min(available)
            };
            if lower_end.saturating_sub(start) as f64 > self.min_speech {
                self.confirmed = true;
                events.push(SpeechEvent::Start { sample: start });
            }
        }
    }

    fn step(&mut self, p: f32, cur: u64, events: &mut Vec<SpeechEvent>) {
        if p >= self.threshold && self.temp_end != 0 {
            let dur = cur - self.temp_end;
            if dur as f64 > self.min_silence_at_max {
                self.possible_ends.push((self.temp_end, dur));
            }
            self.temp_end = 0;
            if self.next_start < self.prev_end {
                self.next_start = cur;
            }
        }
        if p >= self.threshold && !self.triggered {
            self.triggered = true;
            self.open(cur);
            return;
        }
        if let (true, Some(start)) = (self.triggered, self.start) {
            if (cur - start) as f64 > self.max_speech {
                // First of the longest pauses, as Python's max().
                let best = self
                    .possible_ends
                    .iter()
                    .copied()
                    .reduce(|a, b| if b.1 > a.1 { b } else { a });
                if let Some((end, dur)) = best {
                    self.close(end, EndReason::MaxLengthAtPause, events);
                    let next = end + dur;
                    if next < end + cur {
                        self.open(next);
                    } else {
                        self.triggered = false;
                    }
                    self.prev_end = 0;
                    self.next_start = 0;
                    self.temp_end = 0;
                    self.possible_ends.clear();
                } else {
                    self.close(cur, EndReason::MaxLengthForced, events);
                    self.prev_end = 0;
                    self.next_start = 0;
                    self.temp_end = 0;
                    self.triggered = false;
                    self.possible_ends.clear();
                    return;
                }
            }
        }
        if p < self.neg_threshold && self.triggered {
            if self.temp_end == 0 {
                self.temp_end = cur;
            }
            let silence = cur - self.temp_end;
            if (silence as f64) < self.min_silence {
                return;
            }
            let end = self.temp_end;
            match self.start {
                Some(start) if (end - start) as f64 > self.min_speech => {
                    self.close(end, EndReason::Silence, events)
                }
                _ => {
                    self.start = None;
                    self.confirmed = false;
                }
            }
            self.prev_end = 0;
            self.next_start = 0;
            self.temp_end = 0;
            self.triggered = false;
            self.possible_ends.clear();
        }
    }

    /// End of stream after `total_samples` samples: closes an open segment at the last sample.
    pub fn finish(&mut self, total_samples: u64, events: &mut Vec<SpeechEvent>) {
        if let Some(start) = self.start {
            if total_samples.saturating_sub(start) as f64 > self.min_speech {
                self.close(total_samples, EndReason::EndOfStream, events);
            }
        }
        self.reset();
    }
}

/// Pairs events into `(start, end)` sample ranges.
pub fn segments(events: &[SpeechEvent]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut open = None;
    for e in events {
        match *e {
            SpeechEvent::Start { sample } => open = Some(sample),
            SpeechEvent::End { sample, .. } => {
                if let Some(s) = open.take() {
                    out.push((s, sample));
                }
            }
        }
    }
    out
}

/// What one push produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointOutput {
    /// Probabilities of the windows completed by this push.
    pub probabilities: Vec<f32>,
    pub events: Vec<SpeechEvent>,
}

impl<T: VoiceActivity + ?Sized> VoiceActivity for Box<T> {
    fn window_probability(&mut self, window: &[f32]) -> Result<f32> {
        (**self).window_probability(window)
    }
    fn reset(&mut self) -> Result<()> {
        (**self).reset()
    }
}

/// Streaming VAD + endpointing over 16 kHz samples pushed in chunks of any size.
pub struct Endpointer<V: VoiceActivity> {
    vad: V,
    /// The detector's state belongs to a finished stream: reset it before the next window
    /// (deferred so that `reset` cannot fail).
    vad_stale: bool,
    detector: EndpointDetector,
    buffer: Vec<f32>,
    samples: u64,
}

impl<V: VoiceActivity> Endpointer<V> {
    pub fn new(mut vad: V, config: EndpointConfig) -> Result<Self> {
        vad.reset()?;
        Ok(Self {
            vad,
            vad_stale: false,
            detector: EndpointDetector::new(config)?,
            buffer: Vec::with_capacity(WINDOW),
            samples: 0,
        })
    }

    /// Samples pushed since the last reset.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn in_speech(&self) -> bool {
        self.detector.in_speech()
    }

    fn window_probability(&mut self) -> Result<f32> {
        if self.vad_stale {
            self.vad.reset()?;
            self.vad_stale = false;
        }
        self.vad.window_probability(&self.buffer)
    }
}

impl Chunk for EndpointOutput {
    fn is_empty(&self) -> bool {
        self.probabilities.is_empty() && self.events.is_empty()
    }
    fn append(&mut self, next: Self) {
        self.probabilities.extend(next.probabilities);
        self.events.extend(next.events);
    }
}

impl<V: VoiceActivity> Streaming for Endpointer<V> {
    type Input = [f32];
    type Output = EndpointOutput;
    type Error = AudioError;

    fn push(&mut self, samples: &[f32]) -> Result<EndpointOutput> {
        if let Some((i, v)) = super::first_non_finite(samples) {
            return Err(AudioError::InvalidInput(format!(
                "sample {i} of the pushed chunk is {v}; condition the audio first"
            )));
        }
        let mut out = EndpointOutput::default();
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (WINDOW - self.buffer.len()).min(rest.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.samples += take as u64;
            if self.buffer.len() == WINDOW {
                let p = self.window_probability()?;
                self.buffer.clear();
                out.probabilities.push(p);
                self.detector
                    .push_probability(p, self.samples, &mut out.events);
            }
        }
        Ok(out)
    }

    /// Ends the stream: the partial window is zero-padded and scored, an open segment closed;
    /// then the endpointer is reset for the next stream.
    fn finish(&mut self) -> Result<EndpointOutput> {
        let mut out = EndpointOutput::default();
        if !self.buffer.is_empty() {
            self.buffer.resize(WINDOW, 0.0);
            let p = self.window_probability()?;
            out.probabilities.push(p);
            self.detector
                .push_probability(p, self.samples, &mut out.events);
        }
        self.detector.finish(self.samples, &mut out.events);
        self.reset();
        Ok(out)
    }

    fn reset(&mut self) {
        self.buffer.clear();
        self.samples = 0;
        self.detector.reset();
        self.vad_stale = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the detector over probabilities (one per window) of a stream of `n` samples.
    fn run(probs: &[f32], n: u64, cfg: EndpointConfig) -> Vec<SpeechEvent> {
        let mut d = EndpointDetector::new(cfg).unwrap();
        let mut ev = Vec::new();
        for (i, &p) in probs.iter().enumerate() {
            d.push_probability(p, n.min((i as u64 + 1) * 512), &mut ev);
        }
        d.finish(n, &mut ev);
        ev
    }

    #[test]
    fn start_end_with_hangover_and_min_speech() {
        // 10 silent windows, 20 speech, 2 quiet (shorter than the hangover), 20 speech, 10 silent,
        // then a 3-window blip (96 ms, below min speech) and silence.
        let mut p = vec![0.0; 10];
        p.extend([0.9; 20]);
        p.extend([0.1; 2]);
        p.extend([0.9; 20]);
        p.extend([0.0; 10]);
        p.extend([0.9; 3]);
        p.extend([0.0; 10]);
        let ev = run(&p, p.len() as u64 * 512, EndpointConfig::default());
        assert_eq!(segments(&ev), vec![(10 * 512, 52 * 512)]);
        assert!(matches!(
            ev[1],
            SpeechEvent::End {
                reason: EndReason::Silence,
                ..
            }
        ));
    }

    #[test]
    fn long_monologue_is_cut_not_dropped() {
        // 10 s of speech with a 200 ms pause at 4 s, max 6 s: cut at the pause.
        let win_per_s = 16000.0 / 512.0;
        let n = (10.0 * win_per_s) as usize;
        let pause = (4.0 * win_per_s) as usize;
        let p: Vec<f32> = (0..n)
            .map(|i| {
                if (pause..pause + 6).contains(&i) {
                    0.2
                } else {
                    0.9
                }
            })
            .collect();
        let cfg = EndpointConfig {
            max_speech_s: 6.0,
            ..Default::default()
        };
        let ev = run(&p, n as u64 * 512, cfg);
        let seg = segments(&ev);
        assert_eq!(seg.len(), 2, "{ev:?}");
        assert_eq!(seg[0], (0, pause as u64 * 512));
        assert_eq!(seg[1].0, (pause as u64 + 6) * 512);
        assert_eq!(seg[1].1, n as u64 * 512);
        // Without any pause: forced cuts, all speech kept.
        let ev = run(&vec![0.9; n], n as u64 * 512, cfg);
        let seg = segments(&ev);
        assert!(seg.len() >= 2, "{seg:?}");
        assert!(seg.iter().all(|(s, e)| (e - s) as f64 <= 6.0 * 16000.0));
        assert!(ev.iter().any(|e| matches!(
            e,
            SpeechEvent::End {
                reason: EndReason::MaxLengthForced,
                ..
            }
        )));
    }
}
