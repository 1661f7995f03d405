#!/usr/bin/env python3
"""Speed of two builds of cartridge.cpp, run alternately in one run on the same machine: did a change
(a refactor, a new kernel) make anything slower?

    .venv/bin/python bench/compare_builds.py --base /path/to/old/build --new build [--rounds 3]

Each build folder must hold `cartridge`, `model_bench` and `cartridge_bench` (a tree built at the old
commit, e.g. `git worktree add /tmp/old <commit> && BUILD_DIR=... scripts/build.sh`, or copies of its
binaries). Every round runs every measurement once with the old build, then once with the new one, so a
machine that slows down or speeds up during the run affects both alike. Measurements (default model,
fp32, the threads libtorch picks):
  model_bench      prefill 256 tokens batch 1; decode batch 1 and 8 (tokens/s)
  cartridge_bench  init a 128-token cartridge from text (s); decode with it (tokens/s)
  synthesize       `cartridge synthesize` of 8 conversations on examples/data/varnholm.md (generated tokens/s)
  train            `cartridge train` 6 steps of 4 random conversations (training tokens/s, steps 2-6)
Prints one markdown table: the median of the rounds for each build and new/old.
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from training_bench import write_dataset  # noqa: E402  (the same random dataset as the training benchmark)

MODEL = str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf")
DOCUMENT = str(REPO / "examples/data/varnholm.md")


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def model_bench(build):
    rows = json_lines(run([f"{build}/model_bench", "--model", MODEL, "--prompt-tokens", "256",
                           "--decode-steps", "32", "--batches", "1,8", "--repeats", "3"]))
    out = {}
    for row in rows:
        if row["phase"] == "prefill" and row["batch"] == 1:
            out["prefill 256, batch 1 (tok/s)"] = row["tokens_per_second"]
        if row["phase"] == "decode":
            out[f"decode, batch {row['batch']} (tok/s)"] = row["tokens_per_second"]
    return out


def cartridge_bench(build):
    rows = json_lines(run([f"{build}/cartridge_bench", "--model", MODEL, "--text-file", DOCUMENT,
                           "--tokens", "128", "--decode-steps", "32", "--repeats", "3"]))
    out = {}
    for row in rows:
        if row.get("measure") == "init":
            out["cartridge init, 128 tokens (s)"] = row["seconds"]
        if row.get("measure") == "decode_cartridge":
            out["decode with cartridge (tok/s)"] = row["tokens_per_second"]
    return out


def synthesize(build, work):
    out = work / f"synth-{pathlib.Path(build).name}"
    run(["rm", "-rf", str(out)])
    result = json.loads(run([f"{build}/cartridge", "synthesize", "--model", MODEL, "--corpus", DOCUMENT,
                             "--out", str(out), "--samples", "8", "--batch", "4", "--min-chunk", "256",
                             "--max-chunk", "512", "--max-question-tokens", "32", "--max-answer-tokens", "64",
                             "--json", "-q"]).splitlines()[-1])
    return {"synthesis (generated tok/s)": result["generated_tokens_per_second"]}


def train(build, work, dataset):
    out = work / f"train-{pathlib.Path(build).name}"
    run(["rm", "-rf", str(out)])
    run([f"{build}/cartridge", "train", "--model", MODEL, "--dataset", str(dataset), "--init", "random",
         "--tokens", "128", "--steps", "6", "--batch-size", "4", "--eval-fraction", "0", "--max-batch-tokens", "0",
         "--out", str(out), "--json", "-q"])
    state = json.loads(next(out.glob("checkpoint-*")).joinpath("trainer_state.json").read_text())
    history = state["history"][1:]  # the first step warms up
    return {"training (tok/s)": sum(row["tokens"] for row in history) / sum(row["seconds"] for row in history)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="folder with the old build's binaries")
    parser.add_argument("--new", required=True, help="folder with the new build's binaries")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = {"base": {}, "new": {}}
    with tempfile.TemporaryDirectory() as temporary:
        work = pathlib.Path(temporary)
        dataset = work / "dataset.jsonl"
        write_dataset(dataset, vocab_size=49152, count=24, prompt_tokens=48, answer_tokens=96, seed=0)
        for round_index in range(args.rounds):
            for name in ("base", "new"):
                build = getattr(args, name)
                for measure in (model_bench, cartridge_bench):
                    for key, value in measure(build).items():
                        results[name].setdefault(key, []).append(value)
                for key, value in synthesize(build, work).items():
                    results[name].setdefault(key, []).append(value)
                for key, value in train(build, work, dataset).items():
                    results[name].setdefault(key, []).append(value)
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    print(f"| measurement (median of {args.rounds} alternating rounds) | old build | new build | new / old |")
    print("|---|---:|---:|---:|")
    for key in results["base"]:
        old = statistics.median(results["base"][key])
        new = statistics.median(results["new"][key])
        print(f"| {key} | {old:.3f} | {new:.3f} | {new / old:.3f} |")


if __name__ == "__main__":
    main()
