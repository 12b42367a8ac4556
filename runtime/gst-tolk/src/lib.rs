//! GStreamer plugin `tolk`: the `tolktranslate` element (speech in, translated speech out,
//! subtitles as element messages and tags). See README.md.

use gstreamer as gst;

mod tolktranslate;

pub use tolktranslate::TolkTranslate;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    tolktranslate::register(plugin)
}

// GStreamer only accepts the licence names of its own list (LGPL, GPL, MPL, BSD, MIT/X11, ...);
// Apache-2.0 is not one of them, so the plugin declares "unknown" (the crate is Apache-2.0).
gst::plugin_define!(
    tolk,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "unknown",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
