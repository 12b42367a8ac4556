//! The src task's decoding of one utterance: the runtime's [`UtteranceTranslator`] with
//! subtitles as `tolk-subtitle` messages, the final text as a tag event, audio pushed as it is
//! vocoded, and a `tolk-utterance-done` message at the end.

use std::sync::atomic::Ordering;
use std::time::Instant;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;

use tolk_models::translator::Direction;
use tolk_runtime::pipeline::{Output as WorkerOutput, UtteranceTranslator};

use super::imp::TolkTranslate;
use super::output::{SrcOut, Timeline};
use super::state::Utterance;

/// What the src task decodes with: the decoder and the output timeline.
pub struct Decoder {
    /// The runtime's decoder: units in, text deltas and vocoded PCM out.
    pub translator: UtteranceTranslator,
    pub timeline: Timeline,
}

impl Decoder {
    /// Decodes `u`, posting its messages on `imp` and pushing its audio on the src pad.
    pub fn translate(&mut self, u: Utterance, imp: &TolkTranslate) -> Result<(), gst::FlowError> {
        let Decoder {
            translator,
            timeline,
        } = self;
        let flushing = imp.queue().flushing();
        let t0 = Instant::now();
        let since_end = |at: Instant| at.duration_since(u.utt.ended_at).as_secs_f64() * 1000.0;
        let queued_ms = since_end(t0);
        translator
            .set_task(u.direction, u.mode)
            .map_err(|e| decode_error(imp, &e))?;
        let pts = timeline.utterance_start(u.output_from);
        let mut src = SrcOut {
            pad: imp.srcpad(),
            flushing,
            timeline,
            pts,
            flow: None,
        };
        let mut text = String::new();
        let mut first_text_ms: Option<f64> = None;
        let mut final_posted = false;

        let post_subtitle = |text: &str, delta: &str, is_final: bool, first_ms: Option<f64>| {
            let mut b = gst::Structure::builder("tolk-subtitle")
                .field("utterance", u.utt.id)
                .field("direction", u.direction.as_str())
                .field("mode", u.mode.as_str())
                .field("text", text)
                .field("delta", delta)
                .field("final", is_final)
                .field("speech-start", u.start.nseconds())
                .field("speech-end", u.end.nseconds())
                .field("latency-ms", since_end(Instant::now()));
            if let Some(f) = first_ms {
                b = b.field("first-text-ms", f);
            }
            imp.post(b.build());
        };

        let report = translator.translate(&u.utt, &mut src, &mut |o| {
            if flushing.load(Ordering::Relaxed) {
                return;
            }
            match o {
                WorkerOutput::Text { delta } => {
                    text.push_str(delta);
                    let first = *first_text_ms.get_or_insert_with(|| since_end(Instant::now()));
                    post_subtitle(&text, delta, false, Some(first));
                }
                WorkerOutput::TextEnd { text: full, .. } => {
                    final_posted = true;
                    let rest = full.strip_prefix(text.as_str()).unwrap_or("").to_string();
                    text = full.to_string();
                    post_subtitle(&text, &rest, true, first_text_ms);
                    push_text_tag(imp.srcpad(), &text, u.direction);
                }
                // Already pushed downstream by `SrcOut`.
                WorkerOutput::Audio { .. } => {}
            }
        });
        let flow = src.flow;
        let report = report.map_err(|e| decode_error(imp, &e))?;
        if let Some(f) = flow {
            return Err(f);
        }
        if flushing.load(Ordering::Relaxed) {
            return Err(gst::FlowError::Flushing);
        }
        if u.mode.has_text() && !final_posted {
            let rest = report
                .text
                .strip_prefix(text.as_str())
                .unwrap_or("")
                .to_string();
            post_subtitle(&report.text, &rest, true, first_text_ms);
            push_text_tag(imp.srcpad(), &report.text, u.direction);
        }
        let mut b = gst::Structure::builder("tolk-utterance-done")
            .field("utterance", u.utt.id)
            .field("direction", u.direction.as_str())
            .field("mode", u.mode.as_str())
            .field("reason", u.utt.cause.as_str())
            .field("source-units", u.utt.units.len() as u32)
            .field("target-units", report.units.len() as u32)
            .field("samples", report.samples_out)
            .field("stop", format!("{:?}", report.stop).to_lowercase())
            .field("queued-ms", queued_ms)
            .field("decode-ms", t0.elapsed().as_secs_f64() * 1000.0)
            .field("latency-ms", since_end(Instant::now()));
        if let Some(f) = report.first_audio_s {
            b = b.field("first-audio-ms", f * 1000.0);
        }
        imp.post(b.build());
        Ok(())
    }
}

/// The final text downstream: a tag event with the text as `comment` and the target language.
fn push_text_tag(pad: &gst::Pad, text: &str, direction: Direction) {
    if text.is_empty() {
        return;
    }
    let mut tags = gst::TagList::new();
    {
        let t = tags.get_mut().expect("a new tag list is writable");
        t.add::<gst::tags::Comment>(&text, gst::TagMergeMode::Replace);
        t.add::<gst::tags::LanguageCode>(&direction.tgt().code(), gst::TagMergeMode::Replace);
    }
    pad.push_event(gst::event::Tag::new(tags));
}

fn decode_error(imp: &TolkTranslate, e: &dyn std::fmt::Display) -> gst::FlowError {
    gst::element_imp_error!(imp, gst::StreamError::Decode, ("translation failed: {}", e));
    gst::FlowError::Error
}
