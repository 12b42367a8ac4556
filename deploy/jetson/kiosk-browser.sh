#!/usr/bin/env bash
# The kiosk's screen on the Jetson: waits until `tolk run` serves the subtitle page, then shows
# it full screen in Chromium inside the `cage` Wayland kiosk compositor (one application, no
# desktop). Started by deploy/systemd/tolk-browser.service; TOLK_SCREEN_URL overrides the page
# (default: the [display] bind of the shipped config).
set -euo pipefail
url=${TOLK_SCREEN_URL:-http://127.0.0.1:8080/}
wait_s=${TOLK_SCREEN_WAIT_S:-300}

browser=""
for b in chromium chromium-browser /snap/bin/chromium; do
  if command -v "$b" >/dev/null 2>&1; then browser=$(command -v "$b"); break; fi
done
[ -n "$browser" ] || { echo "kiosk-browser: no Chromium (apt install chromium-browser)" >&2; exit 1; }
command -v cage >/dev/null 2>&1 || { echo "kiosk-browser: no cage (apt install cage)" >&2; exit 1; }

# The page answers once the model is loaded and the pipeline listens.
for ((i = 0; i < wait_s; i++)); do
  curl -fsS -o /dev/null "${url%/}/api/snapshot" && break
  sleep 1
done
curl -fsS -o /dev/null "${url%/}/api/snapshot" || { echo "kiosk-browser: $url not up after ${wait_s}s" >&2; exit 1; }

# Kiosk mode, no first-run or translate prompts, no disk cache, no background traffic.
exec cage -d -- "$browser" --kiosk --ozone-platform=wayland --noerrdialogs --no-first-run \
  --disable-translate --disable-features=TranslateUI --disable-background-networking \
  --disk-cache-size=1 --incognito --check-for-update-interval=31536000 \
  --user-data-dir="${XDG_RUNTIME_DIR:-/tmp}/tolk-browser" "$url"
