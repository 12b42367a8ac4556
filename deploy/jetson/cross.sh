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
# so its arm64 .pc files and link names are unpacked under $CACHE/gst-dev instead. Its .pc files
# name orc-0.4 (Requires.private), which pkg-config resolves even without --static. The emulated
# run needs the arm64 C++ runtime (crossbuild-essential only brings the cross linker's copy).
apt_packages=(crossbuild-essential-arm64 qemu-user-static file libasound2-dev:arm64
  libgstreamer1.0-dev:arm64 libgstreamer-plugins-base1.0-0:arm64 gstreamer1.0-plugins-base:arm64
  liborc-0.4-dev:arm64 libstdc++6:arm64)

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
    # Into a fresh folder, taking wheels already cached from the old one, so that only the
    # wheels of this requirements file are unpacked.
    mkdir -p "$CACHE/wheels"
    rm -rf "$CACHE/wheels.new"
    "$root/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: \
      --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
      --platform manylinux_2_18_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --python-version 3.11 \
      --find-links "$CACHE/wheels" -r deploy/jetson/requirements-aarch64.txt -d "$CACHE/wheels.new"
    rm -rf "$CACHE/wheels"
    mv "$CACHE/wheels.new" "$CACHE/wheels"
    rm -rf "$SITE.partial"
    mkdir -p "$SITE.partial"
    for w in "$CACHE"/wheels/*.whl; do
      "$root/.venv/bin/python" -m zipfile -e "$w" "$SITE.partial"
    done
    echo "$want" > "$SITE.partial/.stamp"
    rm -rf "$SITE"
    mv "$SITE.partial" "$SITE"
  fi
  # libcupti.so.13 (CUDA's profiling interface, called only when profiling) has no aarch64 wheel
  # in the registry. A stub with its soname and version node defines every cupti function the
  # unpacked libraries import, each failing with CUPTI_ERROR_UNKNOWN (999), so that libtorch loads
  # under emulation, also with dlopen(RTLD_NOW) as GStreamer loads the element. A Jetson has the
  # real library from JetPack.
  mkdir -p "$SITE/stub"
  local cupti_syms
  cupti_syms=$(for f in "$SITE"/torch/lib/*.so* "$SITE"/nvidia/*/lib/*.so*; do
    aarch64-linux-gnu-readelf --dyn-syms -W "$f" 2>/dev/null |
      awk '$7 == "UND" && $8 ~ /@libcupti\.so\.13$/ { sub(/@.*/, "", $8); print $8 }'
  done | sort -u)
  [ -n "$cupti_syms" ] || { echo "jetson setup: no cupti imports found in $SITE" >&2; exit 1; }
  {
    echo 'libcupti.so.13 { global:'
    printf '  %s;\n' $cupti_syms
    echo 'local: *; };'
  } > "$SITE/stub/cupti.map"
  {
    echo '/* Generated by deploy/jetson/cross.sh setup: every function fails (CUPTI_ERROR_UNKNOWN). */'
    for sym in $cupti_syms; do
      if [ "$sym" = cuptiGetResultString ]; then
        echo 'int cuptiGetResultString(int r, const char **s) { (void)r; if (s) *s = "cupti stub"; return 0; }'
      else
        echo "int $sym(void) { return 999; }"
      fi
    done
  } > "$SITE/stub/cupti.c"
  aarch64-linux-gnu-gcc -shared -fPIC -o "$SITE/stub/libcupti.so.13" \
    -Wl,-soname,libcupti.so.13 -Wl,--version-script="$SITE/stub/cupti.map" \
    "$SITE/stub/cupti.c"
  # oneDNN (inside libtorch_cpu.so) reads the CPU's MIDR_EL1 from sysfs and gives up when it is
  # missing, as it is under qemu-user on an x86-64 host. A preloaded shim answers that one path
  # with the file named by $TOLK_FAKE_MIDR_EL1 (emulate() writes a Cortex-A78AE, Jetson Orin's CPU).
  cp deploy/jetson/sysfs-midr-shim.c "$SITE/stub/"
  aarch64-linux-gnu-gcc -shared -fPIC -O2 -o "$SITE/stub/libtolk-sysfs-midr.so" \
    "$SITE/stub/sysfs-midr-shim.c" -ldl
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
  # Every GStreamer library the element and the runtime link, resolved as the build will.
  local pc
  for pc in gstreamer-1.0 gstreamer-base-1.0 gstreamer-audio-1.0 gstreamer-app-1.0 alsa; do
    gst_pkg_config --exists "$pc" || {
      echo "jetson setup: pkg-config cannot resolve $pc for arm64:" >&2
      gst_pkg_config --print-errors --exists "$pc" >&2 || true
      exit 1
    }
  done
  echo "jetson setup: ok (aarch64 torch $(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$SITE/torch/version.py") in $SITE)"
}

# pkg-config as the aarch64 build runs it.
gst_pkg_config() {
  PKG_CONFIG_LIBDIR="$CACHE/gst-dev/pkgconfig:$MULTIARCH/pkgconfig:/usr/share/pkgconfig" \
    PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 pkg-config "$@"
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

cross_cargo() {
  # libtorch from the unpacked wheel (LIBTORCH), not from the host venv's torch; every library it
  # needs is found through TOLK_LIBTORCH_RPATH_LINK (the cupti stub included), so the link is
  # checked in full.
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
    cargo build --release --target "$TARGET" "$@"
}

build() {
  [ -f "$SITE/.stamp" ] || { echo "run deploy/jetson/cross.sh setup first" >&2; exit 1; }
  # Two invocations: with --bin, cargo would skip the element's cdylib.
  cross_cargo -p tolk-runtime --bin tolk
  cross_cargo -p gst-plugin-tolk --lib
  file "$OUT/tolk" "$OUT/libgsttolk.so"
}

# Runs an aarch64 program under qemu with the wheel's libraries.
emulate() {
  local midr=$root/target/jetson-check/midr_el1
  mkdir -p "${midr%/*}"
  # Cortex-A78AE r0p1: implementer 0x41 (Arm), part 0xd42.
  echo 0x00000000410fd421 > "$midr"
  TOLK_FAKE_MIDR_EL1="$midr" QEMU_SET_ENV="LD_PRELOAD=$SITE/stub/libtolk-sysfs-midr.so" \
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
  # The x86-64 side: the debug build `make test` already made (the same libtorch ops; Rust's float
  # code is not reassociated at any optimization level, so the text does not depend on it).
  (source deploy/host/env.sh && cargo build -q -p tolk-runtime --bin tolk)
  local failed=0
  for d in en-fr fr-en; do
    local wav=models/demo/samples/${d%%-*}.wav
    echo "== tolk translate $wav --direction $d"
    target/debug/tolk translate "$wav" --model models/demo --direction "$d" \
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
  # GST_REGISTRY_FORK=no: plugins are scanned in the emulated process (qemu-user cannot exec the
  # aarch64 gst-plugin-scanner without a binfmt handler).
  GST_PLUGIN_SYSTEM_PATH_1_0="$MULTIARCH/gstreamer-1.0" GST_PLUGIN_PATH_1_0="$OUT" \
    GST_REGISTRY_FORK=no GST_REGISTRY_1_0="$work/registry.bin" \
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
