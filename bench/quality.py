#!/usr/bin/env python3
"""How much of the document does a cartridge carry? The README's quality table, from the CLI alone.

    .venv/bin/python bench/quality.py [--docs apache-2.0 python-basic-customization] [--fractions 8 16]
                                      [--sets dev] [--no-study] [--out out/quality]

For each document (examples/data/quality/SOURCES.md) and p = document tokens / fraction (rounded down to
a multiple of 16, as `cartridge study` sizes cartridges), makes
  first-p             `cartridge init` (the document as the open system turn, its first p tokens' KV)
  attention matching  `cartridge init --method attention-matching`
and, unless --no-study, each of them after self-study with the default recipe (`cartridge study`'s
synthesis settings and training, started from that cartridge: one dataset per document and p, shared).
Then `cartridge eval` scores answer NLL per question on each question set, beside no context and the
document in context (ICL), and prints one Markdown table: answer NLL, fraction of ICL's gain with its
paired standard error (delta method over questions), self-study's change over its initialisation in
fractions of ICL's gain with its paired standard error, KV bytes, and the wall time to make the cartridge.
The held-out sets are scored only when --sets names them: choose on dev, then score held-out once.
Everything it makes stays in --out; a rerun reuses what is there (delete a folder to redo it).
"""
import argparse
import json
import math
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf")
DOCUMENTS = {
    "apache-2.0": REPO / "examples/data/apache-2.0.txt",
    "python-basic-customization": REPO / "examples/data/quality/python-basic-customization.txt",
}
QUESTIONS = REPO / "examples/data/quality"


def run(command, log):
    """Runs a CLI command; returns (its last JSON line, seconds). Exits with its stderr on failure."""
    started = time.time()
    with open(log, "a") as stderr:
        stderr.write("$ " + " ".join(map(str, command)) + "\n")
        stderr.flush()
        result = subprocess.run(list(map(str, command)), stdout=subprocess.PIPE, stderr=stderr, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed (exit {result.returncode}); see {log}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    text = result.stdout[result.stdout.index("{"):] if "{" in result.stdout else "{}"
    try:
        return json.loads(text), time.time() - started
    except json.JSONDecodeError:
        return json.loads(lines[-1]), time.time() - started


def cartridge_tokens(document_tokens, fraction):
    return max(16, document_tokens // fraction // 16 * 16)


def remembered(folder, make):
    """make() -> dict, cached as folder/bench.json so a rerun skips finished work."""
    record = folder / "bench.json"
    if record.is_file():
        return json.loads(record.read_text())
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted attempt
    value = make()
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(value, indent=2) + "\n")
    return value


def make_cartridges(binary, name, document, p, out, study, log):
    """The cartridges for one document and p: {label: (folder, seconds to make it)}."""
    made = {}
    for label, method in (("first-p", "first"), ("attention matching", "attention-matching")):
        folder = out / method
        info = remembered(folder / "record", lambda: {"seconds": run(
            [binary, "init", "--model", MODEL, "--text-file", document, "--tokens", p, "--method", method,
             "--out", folder / "adapter", "--force", "--json", "-q"], log)[1]})
        made[label] = (folder / "adapter", info["seconds"])
    if not study:
        return made
    # One synthetic dataset per document and p (it does not depend on the initialisation), then training
    # from each initialisation: `cartridge study`'s defaults for both.
    for label, method in (("first-p", "first"), ("attention matching", "attention-matching")):
        folder = out / f"{method}+study"
        initial = made[label][0]

        def train(folder=folder, initial=initial):
            synthesizes = not (out / "dataset.jsonl").is_file()  # the first training makes the dataset
            if not synthesizes:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy(out / "dataset.jsonl", folder / "dataset.jsonl")
            summary, seconds = run([binary, "study", "--model", MODEL, "--corpus", document, "--init", initial,
                                    "--out", folder, "--json", "-q"], log)
            if synthesizes:
                shutil.copy(folder / "dataset.jsonl", out / "dataset.jsonl")
            return {"seconds": seconds, "includes_synthesis": synthesizes, "summary": summary}

        info = remembered(folder / "record", train)
        made[f"{label} + self-study"] = (folder, info["seconds"])
    return made


def fraction_and_error(none, icl, cartridge):
    """Fraction of ICL's gain, mean(none - cartridge) / mean(none - icl), and its delta-method SE."""
    n = len(none)
    x = [a - c for a, c in zip(none, cartridge)]
    y = [a - b for a, b in zip(none, icl)]
    mean_y = sum(y) / n
    fraction = (sum(x) / n) / mean_y
    residual = [xi - fraction * yi for xi, yi in zip(x, y)]
    mean_r = sum(residual) / n
    variance = sum((r - mean_r) ** 2 for r in residual) / (n - 1)
    return fraction, math.sqrt(variance / n) / abs(mean_y)


def change_and_error(none, icl, before, after):
    """Self-study's change in fractions of ICL's gain, mean(before - after) / mean(none - icl), paired SE."""
    n = len(none)
    gain = sum(a - b for a, b in zip(none, icl)) / n
    d = [b - a for b, a in zip(before, after)]
    mean_d = sum(d) / n
    variance = sum((v - mean_d) ** 2 for v in d) / (n - 1)
    return mean_d / gain, math.sqrt(variance / n) / abs(gain)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", nargs="+", default=list(DOCUMENTS), choices=list(DOCUMENTS))
    parser.add_argument("--fractions", nargs="+", type=int, default=[8, 16], help="p = document tokens / F")
    parser.add_argument("--sets", nargs="+", default=["dev"], choices=["dev", "heldout"])
    parser.add_argument("--no-study", action="store_true", help="initialisations only")
    parser.add_argument("--out", default=str(REPO / "out/quality"))
    parser.add_argument("--bin", default=str(REPO / "build/cartridge"))
    args = parser.parse_args()
    out_root = pathlib.Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    log = out_root / "commands.log"

    rows = []
    for name in args.docs:
        document = DOCUMENTS[name]
        tokens = len(run([args.bin, "tokenize", "--model", MODEL, "--text-file", document, "--no-special-tokens",
                             "--json"], log)[0]["ids"])
        for fraction in args.fractions:
            p = cartridge_tokens(tokens, fraction)
            out = out_root / name / f"p{p}"
            made = make_cartridges(args.bin, name, document, p, out, not args.no_study, log)
            for question_set in args.sets:
                qa = QUESTIONS / f"{name}.{question_set}.qa.jsonl"
                scores = remembered(out / f"eval-{question_set}", lambda: run(
                    [args.bin, "eval", "--model", MODEL, "--corpus", document, "--qa", qa,
                     *[a for label, (folder, _) in made.items() for a in ("--cartridge", folder)],
                     "--name", *made.keys(), "--json", "-q"], log)[0])
                by_name = {c["name"]: c for c in scores["conditions"]}
                kinds = {c["kind"]: c for c in scores["conditions"]}
                none = kinds["none"]["answer_nll_per_question"]
                icl = kinds["in_context"]["answer_nll_per_question"]
                for label, (folder, seconds) in made.items():
                    cartridge = by_name[label]["answer_nll_per_question"]
                    fraction_value, error = fraction_and_error(none, icl, cartridge)
                    change = ""
                    if label.endswith(" + self-study"):
                        before = by_name[label[: -len(" + self-study")]]["answer_nll_per_question"]
                        value, change_error = change_and_error(none, icl, before, cartridge)
                        change = f"{value:+.3f} ± {change_error:.3f}"
                    rows.append([name, tokens, p, question_set, label, f"{by_name[label]['answer_nll']:.3f}",
                                 f"{fraction_value:.3f} ± {error:.3f}", change,
                                 f"{by_name[label]['context_kv_bytes'] / 2**20:.1f}", f"{seconds:.0f}"])
                rows.append([name, tokens, p, question_set, "no context", f"{kinds['none']['answer_nll']:.3f}",
                             "0", "", "0", ""])
                rows.append([name, tokens, p, question_set, "ICL", f"{kinds['in_context']['answer_nll']:.3f}", "1",
                             "", f"{kinds['in_context']['context_kv_bytes'] / 2**20:.1f}", ""])
    header = ["document", "N (tokens)", "p", "questions", "cartridge", "answer NLL", "fraction of ICL's gain",
              "self-study's change", "KV MiB", "seconds to make"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
