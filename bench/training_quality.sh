#!/usr/bin/env bash
# Does self-study teach a cartridge the document? On a real document not written for this project (the
# Apache License 2.0 text, examples/data/apache-2.0.txt, 2224 tokens) with the default model, compares the
# first-p-tokens initialisation with the same cartridge after self-study, next to no context and the whole
# document in context (ICL): held-out KL to the teacher and answer NLL on two sets of 12 questions whose
# answers are quoted from the text: examples/data/apache-2.0.qa.jsonl (the set the learning rate was chosen
# on) and examples/data/apache-2.0.heldout.qa.jsonl (written afterwards, never used to choose anything).
# p = 256 <= 1/8 of the document. Early stopping: the dev questions are also given to training as
# --validation-qa, so $OUT/trained/best is the adapter of the evaluation step (every 10) with the lowest dev
# answer NLL; the held-out questions score it, the last step's adapter, and the initialisation.
#   bench/training_quality.sh [OUT]       (default OUT: out/apache-2.0; BIN=build/cartridge; LR, SAMPLES, STEPS,
#                                          CHUNK_PLACEMENT, CONVERSATIONS_PER_CHUNK, DISTILL)
# Rerunning continues an interrupted run (synthesis and training resume). Prints the markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/cartridge}
OUT=${1:-out/apache-2.0}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DOC=examples/data/apache-2.0.txt
QA=examples/data/apache-2.0.qa.jsonl
HELDOUT_QA=examples/data/apache-2.0.heldout.qa.jsonl
TOKENS=256
SEED=0
# Adam learning rate. The CLI default (2e-2, spec §B1) fits the held-out conversations best
# but overfits them on this small run (answer NLL ends above the initialisation's); 5e-3 lowers both. It
# was picked from {2e-2, 5e-3} on this same question set: README, "Does self-study work?".
LR=${LR:-5e-3}
# How much self-study: synthetic conversations and Adam steps of 4 conversations (about 2.5 epochs by default).
SAMPLES=${SAMPLES:-96}
STEPS=${STEPS:-60}
# Where chunks go (--chunk-placement): uniform_start (the paper's) or even_coverage.
CHUNK_PLACEMENT=${CHUNK_PLACEMENT:-uniform_start}
# Conversations sharing one chunk (--batch): 8 gives 12 distinct chunks for 96 conversations; the official
# arXiv example uses 1 (spec §B1.3).
CONVERSATIONS_PER_CHUNK=${CONVERSATIONS_PER_CHUNK:-8}
# Tokens the loss covers (--distill): answer, or conversation (question and answer, the paper's objective).
DISTILL=${DISTILL:-answer}

# 1. Self-study: $SAMPLES synthetic conversations about random 512-1024-token chunks, then $STEPS steps of 4 at $LR.
"$BIN" study --model "$MODEL" --corpus "$DOC" --tokens "$TOKENS" --out "$OUT/trained" --seed "$SEED" \
  --samples "$SAMPLES" --min-chunk 512 --max-chunk 1024 --chunk-placement "$CHUNK_PLACEMENT" --batch "$CONVERSATIONS_PER_CHUNK" --max-question-tokens 64 --max-answer-tokens 192 \
  --steps "$STEPS" --batch-size 4 --eval-fraction 0.1 --eval-every 10 --checkpoint-every 10 --lr "$LR" --distill "$DISTILL" \
  --validation-qa "$QA" -q
# 2. The initialisation on its own: the KV of the document's first 256 tokens (what training started from).
[ -f "$OUT/init/adapter_config.json" ] ||
  "$BIN" init --model "$MODEL" --text-file "$DOC" --tokens "$TOKENS" --no-chat-template --out "$OUT/init" -q
best_step() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$OUT/trained/best/best_validation.json"; }
# 3. The tables, one per question set: held-out conversations are the ones training never saw (same seed
#    and fraction).
for questions in "$QA" "$HELDOUT_QA"; do
  echo "questions: $questions"
  "$BIN" eval --model "$MODEL" --corpus "$DOC" --qa "$questions" --dataset "$OUT/trained/dataset.jsonl" \
    --eval-fraction 0.1 --seed "$SEED" --cartridge "$OUT/init" --name "cartridge, init (first $TOKENS tokens)" \
    --cartridge "$OUT/trained" --name "cartridge, after self-study (last step)" \
    --cartridge "$OUT/trained/best" --name "cartridge, after self-study (best dev step: $(best_step))" --markdown -q
done
