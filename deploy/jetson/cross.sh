#!/usr/bin/env bash
# The kiosk for a Jetson (aarch64), built on an x86-64 Debian host and checked under emulation.
#
#   deploy/jetson/cross.sh setup   arm64 multiarch dev packages, the cross compilers and
#                                  qemu-user-static (apt); the Rust target; PyPI's aarch64 torch
#                                  2.11.0 and the CUDA libraries it loads, downloaded as wheels
#                                  and unpacked under $TOLK_JETSON_CACHE (never installed)
#   deploy/jetson/cross.sh build   release `tolk` and `libgsttolk.so` for aarch64-unknown-linux-gnu
#                                  in target/aarch64-unknown-linux-gnu/release
#   deploy/jetson/cross.sh check   the aarch64 binaries under qemu-aarch64 on the demo model:
#                                  --version, config check, one translation per direction (text
#                                  compared with the x86 build's), gst-inspect of the element
#
# The binaries carry the rpath of the torch that deploy/jetson/install.sh installs on a device
# ($JETSON_TORCH_LIB); the emulated run finds the unpacked wheel through LD_LIBRARY_PATH.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
CACHE=${TOLK_JETSON_CACHE:-$HOME/.cache/tolk/jetson}
TARGET=aarch64-unknown-linux-gnu
OUT=$root/target/$TARGET/release
# Where NVIDIA's torch for JetPack 6 lands on the device (install.sh: /opt/tolk/venv, Python 3.10).
JETSON_TORCH_LIB=${JETSON_TORCH_LIB:-/opt/tolk/venv/lib/python3.10/site-packages/torch/lib}
SITE=$CACHE/site
MULTIARCH=/usr/lib/aarch64-linux-gnu

# Multi-Arch "same" packages only: they install beside the host's amd64 ones.
# libgstreamer-plugins-base1.0-dev is not (apt would remove the amd64 one the host build needs),
# so its arm64 .pc files and link names are unpacked under $CACHE/gst-dev instead.
apt_packages=(crossbuild-essential-arm64 qemu-user-static libasound2-dev:arm64
  libgstreamer1.0-dev:arm64 libgstreamer-plugins-base1.0-0:arm64 gstreamer1.0-plugins-base:arm64)

setup() {
  local sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "jetson setup: installing ${missing[*]}"
    dpkg --print-foreign-architectures | grep -qx arm64 || "${sudo_cmd[@]}" dpkg --add-architecture arm64
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

  # The wheels, unpacked once per requirements file (a stamp holds its hash).
  local want
  want="$(sha256sum deploy/jetson/requirements-aarch64.txt | cut -d' ' -f1)"
  if [ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$want" ]; then
    mkdir -p "$CACHE/wheels"
    "$root/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: \
      --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
      --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --python-version 3.11 \
      -r deploy/jetson/requirements-aarch64.txt -d "$CACHE/wheels"
    rm -rf "$SITE.partial"
    mkdir -p "$SITE.partial"
    for w in "$CACHE"/wheels/*.whl; do
      "$root/.venv/bin/python" -m zipfile -e "$w" "$SITE.partial"
    done
    # libcupti.so.13 (CUDA's profiling interface, called only when profiling) has no aarch64 wheel
    # in the registry: an empty library with its soname and version node lets libtorch_cpu.so load
    # under emulation. A Jetson has the real one from JetPack.
    mkdir -p "$SITE.partial/stub"
    printf 'libcupti.so.13 { local: *; };\n' > "$SITE.partial/stub/cupti.map"
    echo 'int tolk_cupti_stub;' > "$SITE.partial/stub/cupti.c"
    aarch64-linux-gnu-gcc -shared -fPIC -o "$SITE.partial/stub/libcupti.so.13" \
      -Wl,-soname,libcupti.so.13 -Wl,--version-script="$SITE.partial/stub/cupti.map" \
      "$SITE.partial/stub/cupti.c"
    echo "$want" > "$SITE.partial/.stamp"
    rm -rf "$SITE"
    mv "$SITE.partial" "$SITE"
  fi
  # gst-inspect-1.0 for arm64 (gstreamer1.0-tools cannot be installed beside the amd64 one).
  if [ ! -x "$CACHE/gst-tools/usr/bin/gst-inspect-1.0" ]; then
    (cd "$CACHE" && rm -f gstreamer1.0-tools_*_arm64.deb && apt-get download -q gstreamer1.0-tools:arm64 2>/dev/null)
    dpkg -x "$CACHE"/gstreamer1.0-tools_*_arm64.deb "$CACHE/gst-tools"
  fi
  # The arm64 pkg-config files of gst-plugins-base and its link names (libgstaudio-1.0.so ...),
  # pointing at the arm64 runtime libraries installed above.
  if [ ! -f "$CACHE/gst-dev/pkgconfig/gstreamer-audio-1.0.pc" ]; then
    rm -rf "$CACHE/gst-dev"
    mkdir -p "$CACHE/gst-dev/deb" "$CACHE/gst-dev/pkgconfig" "$CACHE/gst-dev/lib"
    (cd "$CACHE/gst-dev" && apt-get download -q libgstreamer-plugins-base1.0-dev:arm64 2>/dev/null)
    dpkg -x "$CACHE"/gst-dev/libgstreamer-plugins-base1.0-dev_*_arm64.deb "$CACHE/gst-dev/deb"
    cp "$CACHE"/gst-dev/deb/usr/lib/aarch64-linux-gnu/pkgconfig/*.pc "$CACHE/gst-dev/pkgconfig/"
    for l in "$CACHE"/gst-dev/deb/usr/lib/aarch64-linux-gnu/*.so; do
      ln -sf "$MULTIARCH/$(readlink "$l")" "$CACHE/gst-dev/lib/$(basename "$l")"
    done
  fi
  echo "jetson setup: ok (aarch64 torch $(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$SITE/torch/version.py") in $SITE)"
}

# Every folder of the unpacked wheels that holds shared libraries, then the cupti stub.
lib_path() {
  local dirs=("$SITE/torch/lib")
  for d in "$SITE"/nvidia/*/lib "$SITE"/nvidia/cu13/lib; do
    [ -d "$d" ] && dirs+=("$d")
  done
  dirs+=("$SITE/stub")
  local IFS=:
  echo "${dirs[*]}"
}

build() {
  [ -f "$SITE/.stamp" ] || { echo "run deploy/jetson/cross.sh setup first" >&2; exit 1; }
  # libtorch from the unpacked wheel (LIBTORCH), not from the host venv's torch.
  env -u LIBTORCH_USE_PYTORCH \
    LIBTORCH="$SITE/torch" \
    TOLK_LIBTORCH_RPATH="$JETSON_TORCH_LIB" \
    TOLK_LIBTORCH_RPATH_LINK="$(lib_path)" \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    PKG_CONFIG_ALLOW_CROSS=1 \
    PKG_CONFIG_LIBDIR="$CACHE/gst-dev/pkgconfig:$MULTIARCH/pkgconfig:/usr/share/pkgconfig" \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-L native=$CACHE/gst-dev/lib" \
    cargo build --release --target "$TARGET" -p tolk-runtime --bin tolk -p gst-plugin-tolk
  file "$OUT/tolk" "$OUT/libgsttolk.so"
}

# Runs an aarch64 program under qemu with the wheel's libraries.
emulate() {
  LD_LIBRARY_PATH="$(lib_path):$MULTIARCH" qemu-aarch64-static "$@"
}

# The translated text `tolk translate` prints (one line per utterance; its figures are indented).
subtitles() {
  grep -v -e '^ ' -e 'utterance(s) ->' "$1" || true
}

check() {
  [ -x "$OUT/tolk" ] || { echo "run deploy/jetson/cross.sh build first" >&2; exit 1; }
  local work=$root/target/jetson-check
  rm -rf "$work"
  mkdir -p "$work"
  local start=$SECONDS
  file "$OUT/tolk" | grep -q "ARM aarch64" || { echo "$OUT/tolk is not an aarch64 binary" >&2; exit 1; }
  readelf -d "$OUT/tolk" | grep -q "$JETSON_TORCH_LIB" \
    || { echo "$OUT/tolk lacks the device rpath $JETSON_TORCH_LIB" >&2; exit 1; }
  readelf -d "$OUT/tolk" | grep -q 'libtorch_cuda.so' \
    || { echo "$OUT/tolk does not link libtorch_cuda.so (--no-as-needed)" >&2; exit 1; }
  echo "== tolk --version (aarch64, emulated)"
  emulate "$OUT/tolk" --version
  echo "== tolk config check"
  emulate "$OUT/tolk" config check deploy/tolk.example.toml
  [ -x target/release/tolk ] || cargo build --release -p tolk-runtime --bin tolk
  local failed=0
  for d in en-fr fr-en; do
    local wav=models/demo/samples/${d%%-*}.wav
    echo "== tolk translate $wav --direction $d"
    target/release/tolk translate "$wav" --model models/demo --direction "$d" \
      -o "$work/x86-$d.wav" > "$work/x86-$d.txt" 2>&1
    emulate "$OUT/tolk" translate "$wav" --model models/demo --direction "$d" \
      -o "$work/aarch64-$d.wav" > "$work/aarch64-$d.txt" 2>&1
    cat "$work/aarch64-$d.txt"
    if diff <(subtitles "$work/x86-$d.txt") <(subtitles "$work/aarch64-$d.txt"); then
      echo "$d: the same text as on x86-64"
    else
      echo "$d: the aarch64 text differs from x86-64 (above)" >&2
      failed=1
    fi
  done
  echo "== gst-inspect-1.0 tolktranslate (aarch64, emulated)"
  GST_PLUGIN_SYSTEM_PATH_1_0="$MULTIARCH/gstreamer-1.0" GST_PLUGIN_PATH_1_0="$OUT" \
    GST_PLUGIN_SCANNER_1_0="$MULTIARCH/gstreamer1.0/gstreamer-1.0/gst-plugin-scanner" \
    GST_REGISTRY_1_0="$work/registry.bin" \
    emulate "$CACHE/gst-tools/usr/bin/gst-inspect-1.0" tolktranslate > "$work/gst-inspect.txt" 2>&1 \
    || { cat "$work/gst-inspect.txt" >&2; echo "gst-inspect of the aarch64 element failed" >&2; failed=1; }
  grep -E "Factory Details|Long-name|Klass|Version" "$work/gst-inspect.txt" || true
  echo "jetson check: $((SECONDS - start)) s under emulation"
  return $failed
}

case "${1:-}" in
  setup) setup ;;
  build) build ;;
  check) check ;;
  *) echo "usage: $0 setup|build|check" >&2; exit 2 ;;
esac
