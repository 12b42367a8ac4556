#!/usr/bin/env bash
# Live kiosk translation with GStreamer only: microphone -> tolktranslate -> speaker, subtitles
# printed as element messages (gst-launch-1.0 -m). See runtime/gst-tolk/README.md.
#
#   deploy/gstreamer/kiosk.sh MODEL_DIR [en-fr|fr-en]
#
# Environment (all optional):
#   TOLK_PLUGIN_DIR  folder holding libgsttolk.so (default: target/release, then target/debug)
#   TOLK_VAD_MODEL   silero_vad.jit for the Silero VAD (default: the energy VAD)
#   TOLK_ALSA_IN     ALSA capture device (default: default)
#   TOLK_ALSA_OUT    ALSA playback device (default: default)
#   TOLK_SRC / TOLK_SINK  replace the whole source / sink part (e.g. pulsesrc, autoaudiosink)
set -euo pipefail

model=${1:?usage: kiosk.sh MODEL_DIR [en-fr|fr-en]}
direction=${2:-en-fr}
root=$(cd "$(dirname "$0")/../.." && pwd)
if [[ -z "${TOLK_PLUGIN_DIR:-}" ]]; then
  for d in "$root/target/release" "$root/target/debug"; do
    if [[ -f "$d/libgsttolk.so" ]]; then TOLK_PLUGIN_DIR=$d; break; fi
  done
fi
[[ -f "${TOLK_PLUGIN_DIR:-}/libgsttolk.so" ]] || {
  echo "libgsttolk.so not found: cargo build --release -p gst-plugin-tolk" >&2; exit 1; }
export GST_PLUGIN_PATH="$TOLK_PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"

src=${TOLK_SRC:-"alsasrc device=${TOLK_ALSA_IN:-default}"}
sink=${TOLK_SINK:-"alsasink device=${TOLK_ALSA_OUT:-default}"}
vad=()
[[ -n "${TOLK_VAD_MODEL:-}" ]] && vad=("vad-model=$TOLK_VAD_MODEL")

# The element reports its latency (endpoint delay + decode-latency-ms), so the sink schedules the
# translation on the input's clock without sync=false.
# A live source makes the element drop the oldest waiting utterance when decoding falls behind.
# shellcheck disable=SC2086
exec gst-launch-1.0 -m -e \
  $src ! queue ! audioconvert ! audioresample ! \
  "audio/x-raw,format=F32LE,channels=1,rate=16000" ! \
  tolktranslate model="$model" direction="$direction" "${vad[@]}" \
    min-silence-ms=600 max-utterance-ms=15000 ! \
  queue ! audioconvert ! audioresample ! $sink
