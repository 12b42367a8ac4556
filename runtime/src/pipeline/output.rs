//! Where translated speech goes: [`PcmOut`], implemented for an [`AudioSink`] (with resampling
//! from the vocoder's 16 kHz to the sink's rate) and for memory ([`MemoryOut`], tests).

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tolk_models::stream::Streaming;

use tolk_models::audio::resample::StreamResampler;

use super::{PipelineError, Result};
use crate::audio::AudioSink;

/// A consumer of translated PCM (mono `f32` at the vocoder rate, 16 kHz).
pub trait PcmOut: Send {
    /// Plays (or stores) a chunk. May wait for room (bounded); an error means the output is
    /// gone or stalled, and the rest of the utterance's audio is skipped.
    fn write(&mut self, pcm: &[f32]) -> Result<()>;
    /// The utterance's audio is complete.
    fn end_of_utterance(&mut self) -> Result<()>;
}

/// An [`AudioSink`] behind a streaming resampler when its rate is not 16 kHz.
pub struct SinkOut {
    sink: Option<AudioSink>,
    resampler: Option<StreamResampler>,
    timeout: Duration,
}

impl SinkOut {
    /// Wraps `sink`; `in_rate` is the vocoder rate. `timeout` bounds each wait for room.
    pub fn new(sink: AudioSink, in_rate: u32, timeout: Duration) -> Result<Self> {
        let resampler = if sink.sample_rate() != in_rate {
            Some(StreamResampler::new(in_rate, sink.sample_rate())?)
        } else {
            None
        };
        Ok(Self {
            sink: Some(sink),
            resampler,
            timeout,
        })
    }

    pub fn sink(&self) -> Option<&AudioSink> {
        self.sink.as_ref()
    }

    fn put(&mut self, pcm: &[f32]) -> Result<()> {
        let Some(sink) = self.sink.as_mut() else {
            return Err(PipelineError::Output("the sink is closed".into()));
        };
        sink.write_all(pcm, self.timeout)
            .map_err(|e| PipelineError::Output(e.to_string()))
    }

    /// Plays out what is queued and closes the sink (finalizes a WAV file).
    pub fn finish(&mut self) -> Result<()> {
        match self.sink.take() {
            Some(s) => s.finish().map_err(|e| PipelineError::Output(e.to_string())),
            None => Ok(()),
        }
    }
}

impl PcmOut for SinkOut {
    fn write(&mut self, pcm: &[f32]) -> Result<()> {
        let _s = tracing::debug_span!("sink_write", n = pcm.len()).entered();
        match self.resampler.as_mut() {
            Some(r) => {
                let y = r.push(pcm)?;
                self.put(&y)
            }
            None => self.put(pcm),
        }
    }

    fn end_of_utterance(&mut self) -> Result<()> {
        if let Some(r) = self.resampler.as_mut() {
            let y = r.finish()?;
            r.reset();
            self.put(&y)?;
        }
        if let Some(s) = self.sink.as_mut() {
            s.end_of_audio();
        }
        Ok(())
    }
}

impl PcmOut for Box<dyn PcmOut> {
    fn write(&mut self, pcm: &[f32]) -> Result<()> {
        (**self).write(pcm)
    }
    fn end_of_utterance(&mut self) -> Result<()> {
        (**self).end_of_utterance()
    }
}

/// Collects PCM in memory; `utterances` counts the ends of utterance.
#[derive(Clone, Default)]
pub struct MemoryOut {
    pub pcm: Arc<Mutex<Vec<f32>>>,
    pub utterances: Arc<Mutex<usize>>,
}

impl MemoryOut {
    pub fn samples(&self) -> Vec<f32> {
        self.pcm.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl PcmOut for MemoryOut {
    fn write(&mut self, pcm: &[f32]) -> Result<()> {
        self.pcm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(pcm);
        Ok(())
    }

    fn end_of_utterance(&mut self) -> Result<()> {
        *self.utterances.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(())
    }
}

/// Discards the audio (text-only runs, benchmarks).
pub struct NullOut;

impl PcmOut for NullOut {
    fn write(&mut self, _pcm: &[f32]) -> Result<()> {
        Ok(())
    }
    fn end_of_utterance(&mut self) -> Result<()> {
        Ok(())
    }
}
