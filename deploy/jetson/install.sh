#!/usr/bin/env bash
# Install Tolk on a Jetson (Orin Nano / Orin NX / AGX Orin) running JetPack 6 (L4T r36,
# Ubuntu 22.04, CUDA 12.x, Python 3.10). Run from a checkout of the repository:
#   sudo deploy/jetson/install.sh [--config path/to/tolk.toml] [--prebuilt DIR]
# --prebuilt DIR installs `tolk` (and `libgsttolk.so` when present) from DIR, e.g. the output of
# `make jetson-build` copied to the board, instead of building on the board.
# Idempotent. Steps: system packages (GStreamer, ALSA, mosquitto clients), NVIDIA's PyTorch wheel
# for JetPack 6 in /opt/tolk/venv (its libtorch is what `tolk` loads: the binaries carry the
# rpath /opt/tolk/venv/lib/python3.10/site-packages/torch/lib), the Rust toolchain and a release
# build against that torch (LIBTORCH_USE_PYTORCH=1) unless --prebuilt, the `tolk` user,
# /etc/tolk and /var/lib/tolk, the udev rule for USB audio, the systemd units, then
# `tolk config check` and `tolk doctor --require-cuda`; the units start only when both pass.
# The screen (tolk-browser.service) is Chromium in kiosk mode under the cage compositor.
#
# TOLK_INSTALL_ROOT=DIR installs under DIR instead of / (the dry run of
# runtime/tests/jetson_install.rs, with apt-get, pip, useradd, chown, systemctl and udevadm
# stubbed on PATH).
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROOT=${TOLK_INSTALL_ROOT:-}
config=""
prebuilt=""
while (($#)); do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --prebuilt) prebuilt="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)" >&2; exit 1; }
if [ -n "$prebuilt" ] && [ ! -x "$prebuilt/tolk" ]; then
  echo "--prebuilt $prebuilt: no executable tolk there" >&2
  exit 2
fi

if [ -r "$ROOT/etc/nv_tegra_release" ]; then
  head -1 "$ROOT/etc/nv_tegra_release"
  grep -q "R36" "$ROOT/etc/nv_tegra_release" || echo "warning: not L4T r36 (JetPack 6); the torch wheel below targets JetPack 6" >&2
else
  echo "warning: /etc/nv_tegra_release missing: this does not look like a Jetson" >&2
fi

# 1. System packages.
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  build-essential pkg-config git curl ca-certificates openssl \
  python3-venv python3-pip libopenblas-dev libjpeg-dev \
  libasound2-dev alsa-utils \
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev \
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
  gstreamer1.0-plugins-bad gstreamer1.0-alsa \
  mosquitto-clients libssl-dev \
  cage chromium-browser

# 2. NVIDIA's PyTorch for JetPack 6 (CUDA-enabled aarch64 wheel; PyPI's aarch64 torch is built
#    for server GPUs with CUDA 13, not for Jetson). The index below is NVIDIA's Jetson AI Lab
#    mirror for JetPack 6 / CUDA 12.6; override TORCH_INDEX / TORCH_SPEC for another JetPack
#    point release. tch 0.24 expects the libtorch of torch 2.11: pick the matching wheel.
TORCH_INDEX=${TORCH_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}
TORCH_SPEC=${TORCH_SPEC:-torch==2.11.0}
venv=$ROOT/opt/tolk/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q --index-url "$TORCH_INDEX" "$TORCH_SPEC"
"$venv/bin/python" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
assert torch.__version__.split("+")[0] == "2.11.0", "tch 0.24 needs torch 2.11.0"
assert torch.cuda.is_available(), "CUDA is not visible to torch: check JetPack and the wheel"
PY
purelib="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
torch_lib="${purelib#"$ROOT"}/torch/lib"
[ "$torch_lib" = /opt/tolk/venv/lib/python3.10/site-packages/torch/lib ] \
  || echo "note: torch is at $torch_lib, not where prebuilt binaries look (/opt/tolk/venv/lib/python3.10/site-packages/torch/lib); LD_LIBRARY_PATH in the units points there" >&2

# 3. The binaries: prebuilt, or a release build linked against the venv's libtorch.
install -d "$ROOT/usr/local/bin" "$ROOT/usr/local/lib/gstreamer-1.0"
if [ -n "$prebuilt" ]; then
  install -m 0755 "$prebuilt/tolk" "$ROOT/usr/local/bin/tolk"
  [ ! -f "$prebuilt/libgsttolk.so" ] || install -m 0644 "$prebuilt/libgsttolk.so" "$ROOT/usr/local/lib/gstreamer-1.0/"
else
  if ! command -v cargo >/dev/null; then
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
  export LIBTORCH_USE_PYTORCH=1
  export PATH="$venv/bin:$PATH"   # tch's build script asks this python where torch lives
  (cd "$src" && cargo build --release -p tolk-runtime --bin tolk -p gst-plugin-tolk)
  install -m 0755 "$src/target/release/tolk" "$ROOT/usr/local/bin/tolk"
  install -m 0644 "$src/target/release/libgsttolk.so" "$ROOT/usr/local/lib/gstreamer-1.0/"
fi

# 4. User, folders, configuration, udev rule, units.
id tolk >/dev/null 2>&1 || useradd --system --home /var/lib/tolk --shell /usr/sbin/nologin -G audio,video,render tolk
install -d -m 0750 "$ROOT/var/lib/tolk" "$ROOT/var/lib/tolk/models"
chown tolk:tolk "$ROOT/var/lib/tolk" "$ROOT/var/lib/tolk/models"
install -d -m 0755 "$ROOT/etc/tolk" "$ROOT/etc/tolk/tls"
if [ -n "$config" ]; then install -m 0640 "$config" "$ROOT/etc/tolk/tolk.toml"; fi
if [ ! -f "$ROOT/etc/tolk/tolk.toml" ]; then
  install -m 0640 "$src/deploy/tolk.example.toml" "$ROOT/etc/tolk/tolk.toml"
  echo "edit /etc/tolk/tolk.toml (device id, broker, trusted key)"
fi
chown root:tolk "$ROOT/etc/tolk/tolk.toml"
install -d "$ROOT/etc/udev/rules.d"
install -m 0644 "$src/deploy/jetson/99-tolk-audio.rules" "$ROOT/etc/udev/rules.d/"
udevadm control --reload-rules
udevadm trigger --subsystem-match=sound --subsystem-match=usb
install -d "$ROOT/usr/local/lib/tolk"
install -m 0755 "$src/deploy/jetson/kiosk-browser.sh" "$ROOT/usr/local/lib/tolk/"
install -d "$ROOT/etc/systemd/system"
for unit in tolk.service tolk-kiosk.service tolk-browser.service; do
  sed "s|/opt/tolk/venv/lib/python3.10/site-packages/torch/lib|$torch_lib|" \
    "$src/deploy/systemd/$unit" > "$ROOT/etc/systemd/system/$unit"
done
systemctl daemon-reload

# 5. Checks; start when they pass.
export LD_LIBRARY_PATH="$ROOT$torch_lib"
tolk=$ROOT/usr/local/bin/tolk
sysroot=()
[ -z "$ROOT" ] || sysroot=(--sysroot "$ROOT")
if "$tolk" config check "$ROOT/etc/tolk/tolk.toml" \
  && "$tolk" doctor --config "$ROOT/etc/tolk/tolk.toml" --require-cuda "${sysroot[@]}"; then
  systemctl enable --now tolk tolk-kiosk tolk-browser
else
  echo "tolk doctor found problems (above); fix them, then: systemctl enable --now tolk tolk-kiosk tolk-browser" >&2
fi
echo "power mode: see deploy/README.md (nvpmodel / jetson_clocks)"
