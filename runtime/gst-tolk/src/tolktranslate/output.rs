//! The src side: the output timeline and the src pad as the decoder's [`PcmOut`].
//!
//! Output timestamps lie on the input timeline: an utterance's audio starts at
//! [`Utterance::output_from`](super::state::Utterance) (its end of speech), or right after the
//! previous output if that is later; within an utterance buffers are back to back. Timestamps
//! never go backwards, and the first buffer after a gap has the DISCONT flag.

use std::sync::atomic::{AtomicBool, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;

use tolk_models::audio::SAMPLE_RATE;
use tolk_runtime::pipeline::{PcmOut, PipelineError};

/// Stream time of `samples` 16 kHz samples.
pub fn samples_to_time(samples: u64) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(
        samples
            .mul_div_floor(gst::ClockTime::SECOND.nseconds(), SAMPLE_RATE as u64)
            .unwrap_or(u64::MAX),
    )
}

/// The output timeline.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// End of the last output buffer.
    next_pts: Option<gst::ClockTime>,
    /// Output samples so far (buffer offsets).
    offset: u64,
    discont: bool,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            next_pts: None,
            offset: 0,
            discont: true,
        }
    }
}

impl Timeline {
    /// Starts over (after a flush): the next buffer is a discontinuity at its own time.
    pub fn restart(&mut self) {
        self.next_pts = None;
        self.discont = true;
    }

    /// Where the audio of an utterance that may start at `at` goes: there, or right after the
    /// previous output if that is later. A gap before it makes its first buffer DISCONT.
    pub fn utterance_start(&mut self, at: gst::ClockTime) -> gst::ClockTime {
        match self.next_pts {
            Some(p) if p >= at => p,
            prev => {
                self.discont = true;
                at.max(prev.unwrap_or(gst::ClockTime::ZERO))
            }
        }
    }

    /// Stamps `buffer`, the next `n` samples, at `pts`: duration, offsets, DISCONT after a gap.
    pub fn stamp(&mut self, buffer: &mut gst::BufferRef, pts: gst::ClockTime, n: u64) {
        let dur = samples_to_time(self.offset + n) - samples_to_time(self.offset);
        buffer.set_pts(pts);
        buffer.set_duration(dur);
        buffer.set_offset(self.offset);
        buffer.set_offset_end(self.offset + n);
        if self.discont {
            buffer.set_flags(gst::BufferFlags::DISCONT);
            self.discont = false;
        }
        self.offset += n;
        self.next_pts = Some(pts + dur);
    }
}

/// The src pad as the decoder's [`PcmOut`]: one buffer per PCM chunk, back to back within an
/// utterance, from `pts` on. A refused push is kept in `flow` and ends the utterance's audio; so
/// does a flush (`flushing`).
pub struct SrcOut<'a> {
    pub pad: &'a gst::Pad,
    pub flushing: &'a AtomicBool,
    pub timeline: &'a mut Timeline,
    pub pts: gst::ClockTime,
    pub flow: Option<gst::FlowError>,
}

impl PcmOut for SrcOut<'_> {
    fn write(&mut self, pcm: &[f32]) -> tolk_runtime::pipeline::Result<()> {
        if self.flushing.load(Ordering::Relaxed) {
            self.flow.get_or_insert(gst::FlowError::Flushing);
        }
        if let Some(f) = self.flow {
            return Err(PipelineError::Output(format!("{f:?}")));
        }
        if pcm.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(pcm.len() * 4);
        for x in pcm {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        self.timeline.stamp(
            buffer.get_mut().expect("a new buffer is writable"),
            self.pts,
            pcm.len() as u64,
        );
        self.pts = self.timeline.next_pts.expect("stamped above");
        if let Err(f) = self.pad.push(buffer) {
            self.flow = Some(f);
            return Err(PipelineError::Output(format!("{f:?}")));
        }
        Ok(())
    }

    fn end_of_utterance(&mut self) -> tolk_runtime::pipeline::Result<()> {
        Ok(())
    }
}
