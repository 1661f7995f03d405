#!/usr/bin/env bash
# The main job (README, first command): installs what is missing, builds, makes a cartridge for a document
# with the default model by self-study (`cartridge study`: synthetic conversations about the document, then
# training), then answers a question with it in place of the document.
#   scripts/main.sh [DOCUMENT] [QUESTION]
# Defaults: the sample document examples/data/varnholm.md and a question about it. Output:
# out/<document name>-cartridge (a PEFT adapter, its dataset.jsonl, checkpoints, loss.svg). Rerunning it
# continues an interrupted run and leaves a finished one as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCUMENT=${1:-examples/data/varnholm.md}
QUESTION=${2:-"Who was the longest-serving lighthouse keeper of Varnholm, and for how many years?"}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
TOKENS=${TOKENS:-128}

bash scripts/setup.sh
bash scripts/build.sh cartridge_cli
mkdir -p out
OUT=${OUT:-out/$(basename "${DOCUMENT%.*}")-cartridge}
echo "== self-study: a $TOKENS-token cartridge for $DOCUMENT in $OUT"
build/cartridge study --model "$MODEL" --corpus "$DOCUMENT" --tokens "$TOKENS" --out "$OUT"
echo "== asking, with the cartridge in place of the document: $QUESTION"
build/cartridge generate --model "$MODEL" --cartridge "$OUT" --chat --prompt "$QUESTION" --max-new-tokens 64
