#!/usr/bin/env python3
"""Self-study across processes (docs/distributed.md): one process with T threads against T processes with
one thread each under torchrun (gloo), same machine, same run, same work.

    .venv/bin/python bench/distributed_bench.py --bin build/cartridge [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--corpus examples/data/varnholm.md] [--threads 2] [--samples 16] [--batch 4] [--steps 12]
        [--batch-size 8] [--tokens 64]

Rows:
  synthesis  `cartridge synthesize`: conversations per second of generation (the command's own "seconds",
             model loading excluded; across processes rank 0's, which ends after every rank's groups are
             merged) and per second of the whole command (loading and, for torchrun, its start included)
  training   `cartridge train` on the dataset the single process wrote: real tokens per second over the
             steps after the first (each step's time is rank 0's, the gradient all-reduce included)
Both runs of each row produce the same dataset / the same losses (tests/oracle/test_distributed.py checks
it), so the rows compare the same work. On a shared machine run it when the machine is otherwise idle.
"""
import argparse
import csv
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCHRUN = pathlib.Path(sys.executable).with_name("torchrun")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(command, processes, threads):
    """Runs `command` as one process or under torchrun; returns (--json summary, wall seconds)."""
    if processes > 1:
        command = [str(TORCHRUN), "--no-python", "--nproc-per-node", str(processes), "--master-addr",
                   "127.0.0.1", "--master-port", str(free_port()), *command]
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return summaries[-1], seconds


def training_tokens_per_second(out):
    with open(out / "loss.csv") as file:
        steps = [row for row in csv.DictReader(file) if row["loss"] and int(row["step"]) > 1]
    return sum(int(row["tokens"]) for row in steps) / sum(float(row["seconds"]) for row in steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(ROOT / "build" / "cartridge"))
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--corpus", default=str(ROOT / "examples" / "data" / "varnholm.md"))
    parser.add_argument("--threads", type=int, default=2, help="threads of the single process = processes")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="conversations per chunk group")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="cartridge size p")
    args = parser.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="distributed_bench_"))
    try:
        synthesis = [args.bin, "synthesize", "--model", args.model, "--corpus", args.corpus, "--samples",
                     str(args.samples), "--batch", str(args.batch), "--min-chunk", "256", "--max-chunk", "512",
                     "--max-question-tokens", "32", "--max-answer-tokens", "64", "--seed", "0", "--device",
                     "cpu", "--quiet", "--json"]
        rows = []
        datasets = {}
        for processes, threads in ((1, args.threads), (args.threads, 1)):
            out = work / f"synthesis-{processes}"
            summary, wall = run([*synthesis, "--out", str(out)], processes, threads)
            datasets[processes] = (out / "dataset.jsonl").read_bytes()
            rows.append(("synthesis", processes, threads, f"{args.samples / summary['seconds']:.3f} conversations/s",
                         f"{args.samples / wall:.3f} conversations/s"))
        same_dataset = datasets[1] == datasets[args.threads]

        training = [args.bin, "train", "--model", args.model, "--dataset", str(work / "synthesis-1"),
                    "--corpus", args.corpus, "--init", "text", "--tokens", str(args.tokens), "--steps",
                    str(args.steps), "--batch-size", str(args.batch_size), "--eval-every", "0",
                    "--checkpoint-every", "0", "--eval-fraction", "0", "--keep", "last", "--device", "cpu",
                    "-q", "--json"]
        losses = {}
        for processes, threads in ((1, args.threads), (args.threads, 1)):
            out = work / f"training-{processes}"
            summary, wall = run([*training, "--out", str(out)], processes, threads)
            losses[processes] = summary["final_loss"]
            rows.append(("training", processes, threads, f"{training_tokens_per_second(out):.0f} tokens/s",
                         f"{wall:.1f} s for {args.steps} steps"))

        print(f"model {pathlib.Path(args.model).name}, corpus {pathlib.Path(args.corpus).name}; synthesis: "
              f"{args.samples} conversations in groups of {args.batch}; training: {args.steps} steps of "
              f"{args.batch_size} conversations, p = {args.tokens}")
        print()
        print("| work | processes x threads | throughput (model loaded) | whole command |")
        print("|---|---|---:|---:|")
        for work_name, processes, threads, rate, whole in rows:
            print(f"| {work_name} | {processes} x {threads} | {rate} | {whole} |")
        print()
        print(f"same dataset bytes: {same_dataset}; final loss {losses[1]:.6f} (1 process) vs "
              f"{losses[args.threads]:.6f} ({args.threads} processes)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
