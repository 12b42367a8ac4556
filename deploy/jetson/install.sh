#!/usr/bin/env bash
# Install Tolk on a Jetson (Orin Nano / Orin NX / AGX Orin) running JetPack 6 (L4T r36,
# Ubuntu 22.04, CUDA 12.x, Python 3.10). Run from a checkout of the repository:
#   sudo deploy/jetson/install.sh [--config path/to/tolk.toml]
# Idempotent. Steps: system packages (GStreamer, ALSA, mosquitto clients), NVIDIA's PyTorch wheel
# for JetPack 6 in /opt/tolk/venv, the Rust toolchain, a release build of `tolk` against that
# torch (LIBTORCH_USE_PYTORCH=1), the `tolk` user, /etc/tolk and /var/lib/tolk, the systemd unit.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
config=""
while (($#)); do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)" >&2; exit 1; }

if [ -r /etc/nv_tegra_release ]; then
  head -1 /etc/nv_tegra_release
  grep -q "R36" /etc/nv_tegra_release || echo "warning: not L4T r36 (JetPack 6); the torch wheel below targets JetPack 6" >&2
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
  mosquitto-clients libssl-dev

# 2. NVIDIA's PyTorch for JetPack 6 (CUDA-enabled aarch64 wheel; PyPI's aarch64 torch has no
#    CUDA for Jetson). The index below is NVIDIA's Jetson AI Lab mirror for JetPack 6 / CUDA 12.6;
#    override TORCH_INDEX / TORCH_SPEC for another JetPack point release. tch 0.24 expects the
#    libtorch of torch 2.11: pick the matching wheel, or build tch against what the wheel ships
#    (TORCH_SPEC must satisfy tch's version check, see tch-rs README "LIBTORCH_BYPASS_VERSION_CHECK").
TORCH_INDEX=${TORCH_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}
TORCH_SPEC=${TORCH_SPEC:-torch==2.11.0}
venv=/opt/tolk/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q --index-url "$TORCH_INDEX" "$TORCH_SPEC"
"$venv/bin/python" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
assert torch.cuda.is_available(), "CUDA is not visible to torch: check JetPack and the wheel"
PY

# 3. Rust and the release build, linked against the venv's libtorch.
if ! command -v cargo >/dev/null; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH="$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export PATH="$venv/bin:$PATH"   # tch's build script asks this python where torch lives
(cd "$root" && cargo build --release -p tolk-runtime)
install -m 0755 "$root/target/release/tolk" /usr/local/bin/tolk

# 4. User, folders, configuration, unit.
id tolk >/dev/null 2>&1 || useradd --system --home /var/lib/tolk --shell /usr/sbin/nologin -G audio,video,render tolk
install -d -o tolk -g tolk -m 0750 /var/lib/tolk /var/lib/tolk/models
install -d -m 0755 /etc/tolk /etc/tolk/tls
if [ -n "$config" ]; then install -m 0640 -g tolk "$config" /etc/tolk/tolk.toml; fi
[ -f /etc/tolk/tolk.toml ] || { install -m 0640 -g tolk "$root/deploy/tolk.example.toml" /etc/tolk/tolk.toml; echo "edit /etc/tolk/tolk.toml (device id, broker, trusted key)"; }
sed "s|/opt/tolk/venv/lib/python3.10|$("$venv/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"].rsplit("/site-packages",1)[0])')|" \
  "$root/deploy/systemd/tolk.service" > /etc/systemd/system/tolk.service
systemctl daemon-reload

# 5. Checks; start when they pass.
LD_LIBRARY_PATH="$venv/lib/python3.10/site-packages/torch/lib" tolk config check /etc/tolk/tolk.toml
if LD_LIBRARY_PATH="$venv/lib/python3.10/site-packages/torch/lib" tolk doctor --config /etc/tolk/tolk.toml --require-cuda; then
  systemctl enable --now tolk
else
  echo "tolk doctor found problems (above); fix them, then: systemctl enable --now tolk" >&2
fi
echo "power mode: see deploy/README.md (nvpmodel / jetson_clocks)"
