# Source this to run cargo by hand: it puts the project's venv (with torch 2.11.0) first on PATH
# so that torch-sys finds libtorch. `make` targets do the same by themselves.
_tolk_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export VIRTUAL_ENV="$_tolk_root/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
unset _tolk_root
