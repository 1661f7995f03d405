#!/usr/bin/env bash
# The main job (README, first command): installs what is missing, builds, makes a cartridge for a document
# with the default model, then answers a question with it.
#   scripts/main.sh [DOCUMENT] [QUESTION]
# Defaults: the sample document examples/data/varnholm.md and a question about it. Output: out/cartridge.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCUMENT=${1:-examples/data/varnholm.md}
QUESTION=${2:-"Who was the longest-serving lighthouse keeper of Varnholm, and for how many years?"}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
TOKENS=${TOKENS:-128}

bash scripts/setup.sh
bash scripts/build.sh cartridge_cli
mkdir -p out
echo "== making a $TOKENS-token cartridge for $DOCUMENT"
build/cartridge init --model "$MODEL" --text-file "$DOCUMENT" --tokens "$TOKENS" --out out/cartridge --overwrite
echo "== asking, with the cartridge in place of the document: $QUESTION"
build/cartridge generate --model "$MODEL" --cartridge out/cartridge --chat --prompt "$QUESTION" --max-new-tokens 64
