//! `tolktranslate`: raw speech in, translated raw speech out (see `imp.rs` and README.md).
//!
//! Laid out by concern: `imp.rs` (the element: pads, events, state changes, the src task),
//! `settings.rs` (properties and latency), `state.rs` (models and the speech front end),
//! `queue.rs` (the job queue between the two threads, and the lock order), `decoder.rs` (one
//! utterance into messages and audio), `output.rs` (the output timeline and buffers).

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

mod decoder;
mod imp;
mod output;
mod queue;
mod settings;
mod state;
#[cfg(test)]
mod tests;

glib::wrapper! {
    pub struct TolkTranslate(ObjectSubclass<imp::TolkTranslate>) @extends gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "tolktranslate",
        gst::Rank::NONE,
        TolkTranslate::static_type(),
    )
}
