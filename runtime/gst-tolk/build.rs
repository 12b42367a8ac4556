fn main() {
    // COMMIT_ID and BUILD_REL_DATE for gst::plugin_define!.
    gst_plugin_version_helper::info();
    // rpath to libtorch, so that GStreamer can dlopen libgsttolk.so without LD_LIBRARY_PATH.
    tolk_build::link_libtorch();
}
