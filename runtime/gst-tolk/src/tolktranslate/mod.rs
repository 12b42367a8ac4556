//! `tolktranslate`: raw speech in, translated raw speech out (see `imp.rs` and README.md).

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

mod imp;

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
