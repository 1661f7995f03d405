#!/usr/bin/env python3
"""Model forward speed, cartridge.cpp vs transformers, in one run: prefill tokens/s and decode tokens/s
(batch 1 and 8) for the default model, same dtype, same thread count, same libtorch.

    .venv/bin/python bench/model_bench.py --bin build/model_bench [--dtype f32|bf16] [--prompt-tokens 256]
        [--decode-steps 32] [--repeats 3] [--threads N]

Runs our binary first (it prints JSON lines), then transformers (GGUF loaded with `gguf_file=`, dequantised
to the same dtype, SDPA attention, KV cache, logits of the last position only), then prints one markdown
table. Timings are best-of-N wall clock; on a shared machine run it when the machine is otherwise idle.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_ours(args):
    command = [args.bin, "--model", args.model, "--dtype", args.dtype, "--prompt-tokens", str(args.prompt_tokens),
               "--decode-steps", str(args.decode_steps), "--batches", ",".join(map(str, args.batches)),
               "--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def run_transformers(args):
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model_path = pathlib.Path(args.model)
    model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name, dtype=dtype,
                                                 attn_implementation="sdpa")
    model.eval()
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    results = []
    with torch.inference_mode():
        for batch in args.batches:
            ids = torch.randint(vocab, (batch, args.prompt_tokens), generator=generator)
            best = float("inf")
            for run in range(args.repeats + 1):
                start = time.perf_counter()
                model(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
                if run > 0:
                    best = min(best, time.perf_counter() - start)
            results.append({"impl": "transformers", "phase": "prefill", "batch": batch,
                            "tokens": batch * args.prompt_tokens, "seconds": best,
                            "tokens_per_second": batch * args.prompt_tokens / best})
        for batch in args.batches:
            ids = torch.randint(vocab, (batch, 32), generator=generator)
            best = float("inf")
            for run in range(args.repeats + 1):
                out = model(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
                cache = out.past_key_values
                logits = out.logits
                start = time.perf_counter()
                for _ in range(args.decode_steps):
                    out = model(input_ids=logits[:, -1].argmax(-1, keepdim=True), cache=cache, use_cache=True,
                                logits_to_keep=1)
                    cache, logits = out.past_key_values, out.logits
                if run > 0:
                    best = min(best, time.perf_counter() - start)
            results.append({"impl": "transformers", "phase": "decode", "batch": batch,
                            "tokens": batch * args.decode_steps, "seconds": best,
                            "tokens_per_second": batch * args.decode_steps / best})
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(ROOT / "build" / "model_bench"))
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    ours = run_ours(args)
    theirs = run_transformers(args)
    by_key = {}
    for row in ours + theirs:
        by_key.setdefault((row["phase"], row["batch"]), {})[row["impl"]] = row
    print(f"\nModel: {pathlib.Path(args.model).name}, dtype {args.dtype}, CPU, {args.threads} threads, "
          f"prefill {args.prompt_tokens} tokens, decode {args.decode_steps} steps after 32 tokens, best of "
          f"{args.repeats}\n")
    print("| phase | batch | cartridge.cpp tokens/s | transformers tokens/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for (phase, batch), row in sorted(by_key.items(), key=lambda item: (item[0][0] != "prefill", item[0][1])):
        a = row.get("cartridge.cpp", {}).get("tokens_per_second", float("nan"))
        b = row.get("transformers", {}).get("tokens_per_second", float("nan"))
        print(f"| {phase} | {batch} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
