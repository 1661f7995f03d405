#!/usr/bin/env python3
"""Prefill and decode speed, cartridge.cpp beside llama.cpp on the same GGUF, same threads, same run.

    .venv/bin/python bench/decode_vs_llamacpp.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--threads 2] [--prompt-tokens 256] [--decode-tokens 64] [--repeats 3] [--bin build/model_bench]

llama.cpp: `llama-bench` (prefill of --prompt-tokens, decode of --decode-tokens at batch 1) and
`llama-batched-bench` (decode with 1 and 8 sequences after a --prompt-tokens prompt each), built from the
`llama-cpp-python` source distribution on PyPI (its vendor/llama.cpp; pinned by --llama-cpp-python) into
.cache/llama.cpp/<version>/ the first time (about 8 minutes on 2 cores), reused afterwards.
cartridge.cpp: build/model_bench with the GGUF's blocks kept as stored and float32 activations (`stored`,
the default of generate, chat and serve), with int8 activations as llama.cpp (`stored-int8`), and with
every weight dequantised to fp32 (`--dtype fp32`, the exact reference).

Every decode row also shows the bandwidth ceiling: memory read bandwidth (measured here, 2 threads
summing a 1 GiB tensor) divided by the weight bytes each implementation reads per decoded token at batch 1
(the GGUF's tensors as stored for llama.cpp and our stored paths; every weight in fp32 for ours dense),
and the fraction of it each
reaches. On a shared machine run it when the machine is otherwise idle.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "llama.cpp"
TOOLS = ("llama-bench", "llama-batched-bench")


def say(text):
    print(f"[decode_vs_llamacpp] {text}", file=sys.stderr, flush=True)


def build_llama_cpp(version):
    """The folder holding llama-bench and llama-batched-bench of llama-cpp-python==`version`'s llama.cpp."""
    folder = CACHE / version
    binaries = folder / "build" / "bin"
    if all((binaries / tool).exists() for tool in TOOLS) and (folder / "built").exists():
        return binaries
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    say(f"downloading the llama-cpp-python=={version} source distribution")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={version}", "-d", str(folder)], check=True)
    archive = next(folder.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        members = [member for member in tar.getmembers() if "/vendor/llama.cpp/" in member.name]
        tar.extractall(folder, members=members, filter="data")
    source = next(folder.glob("llama_cpp_python-*/vendor/llama.cpp"))
    say(f"building llama-bench and llama-batched-bench from {source} (minutes)")
    started = time.monotonic()
    subprocess.run(["cmake", "-S", str(source), "-B", str(folder / "build"), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                    "-DBUILD_SHARED_LIBS=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(folder / "build"), "-j", str(os.cpu_count() or 2), "--target", *TOOLS],
                   check=True, stdout=subprocess.DEVNULL)
    (folder / "built").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    return binaries


def run_json_lines(command, env=None):
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{result.stderr[-4000:]}")
    return [json.loads(line) for line in (result.stdout + "\n" + result.stderr).splitlines()
            if line.startswith("{")]


def llama_cpp_rows(binaries, args):
    bench = subprocess.run([str(binaries / "llama-bench"), "-m", args.model, "-t", str(args.threads),
                            "-p", str(args.prompt_tokens), "-n", str(args.decode_tokens), "-r", str(args.repeats),
                            "-o", "json"], capture_output=True, text=True)
    if bench.returncode != 0:
        sys.exit(f"llama-bench failed:\n{bench.stderr[-4000:]}")
    rows = {}
    for entry in json.loads(bench.stdout):
        if entry["n_prompt"] > 0 and entry["n_gen"] == 0:
            rows[("prefill", 1)] = entry["avg_ts"]
        elif entry["n_gen"] > 0 and entry["n_prompt"] == 0:
            rows[("decode", 1)] = entry["avg_ts"]
    context = (args.prompt_tokens + args.decode_tokens) * 8 + 64
    for entry in run_json_lines([str(binaries / "llama-batched-bench"), "-m", args.model, "-t", str(args.threads),
                                 "-tb", str(args.threads), "-c", str(context), "-b", "2048", "-ub", "512",
                                 "-npp", str(args.prompt_tokens), "-ntg", str(args.decode_tokens), "-npl", "1,8",
                                 "--output-format", "jsonl"]):
        rows[("decode all rows", entry["pl"])] = entry["speed_tg"]
    return rows


def our_rows(args, weights):
    lines = run_json_lines([args.bin, "--model", args.model, "--weights", weights, "--prompt-tokens",
                            str(args.prompt_tokens), "--decode-steps", str(args.decode_tokens), "--batches", "1", "8",
                            "--repeats", str(args.repeats)], env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    rows = {}
    for line in lines:
        if line["phase"] == "prefill" and line["batch"] == 1:
            rows[("prefill", 1)] = line["tokens_per_second"]
        elif line["phase"] == "decode":
            rows[("decode all rows", line["batch"])] = line["tokens_per_second"]
            if line["batch"] == 1:
                rows[("decode", 1)] = line["tokens_per_second"]
    return rows


def read_bandwidth(threads):
    """Bytes per second that `threads` threads read summing a 1 GiB float32 tensor (best of 5)."""
    torch.set_num_threads(threads)
    data = torch.ones(1 << 28, dtype=torch.float32)
    data.sum()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best


def weight_bytes(model):
    """(bytes as stored in the GGUF, parameter count) of its tensors."""
    from gguf import GGUFReader
    reader = GGUFReader(model)
    return sum(int(tensor.n_bytes) for tensor in reader.tensors), sum(int(tensor.n_elements) for tensor in reader.tensors)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--bin", default=str(ROOT / "build" / "model_bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-cpp-python", default="0.3.16", help="the PyPI version whose llama.cpp is built")
    args = parser.parse_args()

    binaries = build_llama_cpp(args.llama_cpp_python)
    say("measuring read bandwidth")
    bandwidth = read_bandwidth(args.threads)
    stored_bytes, parameters = weight_bytes(args.model)
    ours = (("stored", "ours stored (default)"), ("stored-int8", "ours stored-int8"), ("dense", "ours fp32"))
    columns = [("llama.cpp", stored_bytes), ("ours stored (default)", stored_bytes),
               ("ours stored-int8", stored_bytes), ("ours fp32", parameters * 4)]
    say("running llama.cpp")
    results = {"llama.cpp": llama_cpp_rows(binaries, args)}
    for weights, name in ours:
        say(f"running cartridge.cpp --weights {weights}")
        results[name] = our_rows(args, weights)

    print(f"{pathlib.Path(args.model).name}, {args.threads} threads, llama.cpp from llama-cpp-python=="
          f"{args.llama_cpp_python}; read bandwidth {bandwidth / 1e9:.1f} GB/s; weights read per token: "
          + ", ".join(f"{name} {size / 2**20:.0f} MiB (ceiling {bandwidth / size:.0f} tok/s)" for name, size in columns))
    print()
    print("| tokens/s | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    labels = [(("prefill", 1), f"prefill {args.prompt_tokens} tokens, batch 1"),
              (("decode", 1), f"decode, batch 1 ({args.decode_tokens} tokens)"),
              (("decode all rows", 1), "decode after the prompt, 1 sequence"),
              (("decode all rows", 8), "decode after the prompt, 8 sequences (all rows)")]
    for key, label in labels:
        cells = []
        for name, size in columns:
            value = results[name].get(key)
            if value is None:
                cells.append("")
            elif key == ("decode", 1):
                cells.append(f"{value:.1f} ({value / (bandwidth / size):.0%} of ceiling)")
            else:
                cells.append(f"{value:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
