#!/usr/bin/env python3
"""Tokenizer encode throughput, cartridge.cpp vs HF `tokenizers`, in one run, on a 1 MB text.

    .venv/bin/python bench/tokenizer_bench.py [--bin build/tokenizer_bench] [--repeats 3] [--threads N]
        [--text FILE]

The text (unless --text is given) is built deterministically: the installed transformers package's Python
sources (English docstrings and code), then multilingual lines from the tokenizer test corpus (scripts,
emoji, CJK, numbers, whitespace), cut at 1,000,000 bytes on a line boundary. For each tokenizer (SmolLM2 from
the default GGUF saved as tokenizer.json, Qwen3, Llama 3) it times:
  single  one encode call on the whole text, one thread (HF: Tokenizer.encode)
  lines   every line encoded separately, N threads sharing one tokenizer (HF: encode_batch, rayon)
Both sides run a warm-up first (which fills their word caches) and report the best of --repeats runs. The ids
of both must be identical (checked by a checksum). Prints one markdown table.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT_BYTES = 1_000_000


def build_text() -> str:
    import transformers

    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import make_tokenizer  # the test corpus generator

    source_root = pathlib.Path(transformers.__file__).parent
    english = []
    size = 0
    for path in sorted(source_root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        english.append(text)
        size += len(text.encode("utf-8"))
        if size > TEXT_BYTES * 0.7:
            break
    multilingual = [s for s in make_tokenizer.make_strings() if 0 < len(s) < 400]
    text = "".join(english) + "\n".join(multilingual)
    data = text.encode("utf-8")[:TEXT_BYTES]
    data = data[: data.rfind(b"\n") + 1]
    return data.decode("utf-8")


def checksum(id_lists) -> int:
    value = 1469598103934665603
    for ids in id_lists:
        for i in ids:
            value ^= i & 0xFFFFFFFF
            value = (value * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return value


def split_lines(text: str) -> list:
    """Lines ending at "\n" only, each keeping it (str.splitlines also splits at \r, \x85, \u2028, ...)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return [line for line in lines if line]


def time_hf(tokenizer_json: pathlib.Path, text: str, repeats: int, threads: int):
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    from tokenizers import Tokenizer

    start = time.perf_counter()
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    load_seconds = time.perf_counter() - start
    results = []
    best = float("inf")
    for run in range(repeats + 1):
        start = time.perf_counter()
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if run > 0:
            best = min(best, time.perf_counter() - start)
    results.append({"impl": "HF tokenizers", "mode": "single", "threads": 1, "tokens": len(ids), "seconds": best,
                    "checksum": str(checksum([ids])), "load_seconds": load_seconds})
    lines = split_lines(text)
    best = float("inf")
    for run in range(repeats + 1):
        start = time.perf_counter()
        encodings = tokenizer.encode_batch(lines, add_special_tokens=False)
        if run > 0:
            best = min(best, time.perf_counter() - start)
    id_lists = [e.ids for e in encodings]
    results.append({"impl": "HF tokenizers", "mode": "lines", "threads": threads,
                    "tokens": sum(len(i) for i in id_lists), "seconds": best, "checksum": str(checksum(id_lists))})
    return results


def run_ours(binary: str, tokenizer_json: pathlib.Path, text_path: pathlib.Path, repeats: int, threads: int):
    config = tokenizer_json.parent / "tokenizer_config.json"
    command = [binary, "--tokenizer-json", str(tokenizer_json), "--text", str(text_path), "--repeats", str(repeats),
               "--threads", str(threads)]
    if config.exists():
        command += ["--tokenizer-config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(ROOT / "build" / "tokenizer_bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--text", help="text file to encode instead of the built 1 MB text")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        if args.text:
            text_path = pathlib.Path(args.text)
            text = text_path.read_text(encoding="utf-8")
        else:
            text = build_text()
            text_path = scratch / "text.txt"
            text_path.write_bytes(text.encode("utf-8"))
        # SmolLM2's tokenizer as transformers builds it from the default GGUF, saved as tokenizer.json.
        import transformers

        transformers.logging.set_verbosity_error()
        smollm2 = transformers.AutoTokenizer.from_pretrained(str(ROOT / "models"),
                                                             gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        smollm2.save_pretrained(str(scratch / "smollm2"))
        tokenizers = {
            "SmolLM2": scratch / "smollm2" / "tokenizer.json",
            "Qwen3": ROOT / ".testdata" / "tokenizers" / "qwen3" / "tokenizer.json",
            "Llama 3": ROOT / ".testdata" / "tokenizers" / "llama3" / "tokenizer.json",
        }
        size = len(text.encode("utf-8"))
        rows = []
        for name, path in tokenizers.items():
            ours = run_ours(args.bin, path, text_path, args.repeats, args.threads)
            theirs = time_hf(path, text, args.repeats, args.threads)
            for mode in ("single", "lines"):
                mine = next(r for r in ours if r["mode"] == mode)
                hf = next(r for r in theirs if r["mode"] == mode)
                same = "yes" if (mine["checksum"], mine["tokens"]) == (hf["checksum"], hf["tokens"]) else "NO"
                for result in (mine, hf):
                    rows.append((name, mode, result["threads"], result["impl"], size / result["seconds"] / 1e6,
                                 result["tokens"] / result["seconds"], result["tokens"], same))

    print(f"\nEncode throughput on a {size / 1e6:.2f} MB text (best of {args.repeats} after a warm-up; "
          f"{os.cpu_count()} CPUs)\n")
    print("| tokenizer | mode | threads | implementation | MB/s | tokens/s | tokens | same ids |")
    print("|---|---|---:|---|---:|---:|---:|---|")
    for name, mode, threads, impl, mb_per_s, tokens_per_s, tokens, same in rows:
        print(f"| {name} | {mode} | {threads} | {impl} | {mb_per_s:.2f} | {tokens_per_s:,.0f} | {tokens:,} | {same} |")
    return 0 if all(row[-1] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
