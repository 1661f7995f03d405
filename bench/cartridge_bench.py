#!/usr/bin/env python3
"""Cartridges, cartridge.cpp vs PEFT + transformers, in one run, on the default model:

- initialisation from a text (tokenize with the chat template, prefill, keep the first p KV slots):
  ours prefills only the p tokens it keeps; PEFT's initialize_kv_prefix_from_text prefills the whole text
  by default, and only p tokens with max_length=p (both are shown);
- greedy decode tokens/s with the cartridge in front of a chat question (batch 1);
- greedy decode tokens/s with the whole document in context instead (ICL), the thing a cartridge replaces;
- the cartridge's KV bytes vs the document's KV bytes in context.

    .venv/bin/python bench/cartridge_bench.py --bin build/cartridge_bench [--tokens 128] [--decode-steps 32]
        [--repeats 3] [--dtype f32|bf16] [--text-file examples/data/varnholm.md] [--threads N]

Runs our binary first (JSON lines), then PEFT + transformers (GGUF loaded with `gguf_file=`, same dtype),
then prints one markdown table. NOTE: PeftModel.generate() is not used for decoding: with transformers 5.x
it ignores the CARTRIDGE prefix (see tests/fixtures/make_cartridge.py); the PEFT side prefills the
question through PeftModel.forward (which injects the prefix) and continues with the base model on that
cache, which is what generate() would do if it worked. Timings are best-of-N wall clock.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
ROOT = pathlib.Path(__file__).resolve().parents[1]
QUESTION = "In which year was the town founded, and by whom?"  # the same as cartridge_bench.cc


def run_ours(args):
    command = [args.bin, "--model", args.model, "--text-file", args.text_file, "--tokens", str(args.tokens),
               "--decode-steps", str(args.decode_steps), "--repeats", str(args.repeats), "--dtype", args.dtype]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return {row["measure"]: row for row in map(json.loads, filter(lambda l: l.startswith("{"),
                                                                  result.stdout.splitlines()))}


def best_of(repeats, function):
    function()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def greedy_decode_seconds(forward_prefill, base_model, steps):
    """Seconds for `steps` greedy tokens after the prefill `forward_prefill()` (not timed)."""
    out = forward_prefill()
    cache, logits = out.past_key_values, out.logits
    start = time.perf_counter()
    for _ in range(steps):
        out = base_model(input_ids=logits[:, -1].argmax(-1, keepdim=True), cache=cache, use_cache=True,
                         logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits
    return time.perf_counter() - start


def run_peft(args):
    from peft import CartridgeConfig, get_peft_model, initialize_kv_prefix_from_text
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model_path = pathlib.Path(args.model)
    base = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name, dtype=dtype,
                                                attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    text = pathlib.Path(args.text_file).read_text()
    model = get_peft_model(base, CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.tokens))
    model.eval()
    results = {}
    with torch.inference_mode():
        results["init_whole_text"] = best_of(args.repeats, lambda: initialize_kv_prefix_from_text(
            model, tokenizer, text=text))
        results["init_max_length_p"] = best_of(args.repeats, lambda: initialize_kv_prefix_from_text(
            model, tokenizer, text=text, max_length=args.tokens))

        def chat_ids(messages):
            return torch.tensor([tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                               return_dict=False)])

        question = chat_ids([{"role": "user", "content": QUESTION}])
        in_context = chat_ids([{"role": "system", "content": text}, {"role": "user", "content": QUESTION}])

        def decode_tps(prefill):
            best = min(greedy_decode_seconds(prefill, base, args.decode_steps) for _ in range(args.repeats + 1))
            return args.decode_steps / best

        results["decode_cartridge"] = decode_tps(
            lambda: model(input_ids=question, attention_mask=torch.ones_like(question), use_cache=True))
        results["decode_in_context"] = decode_tps(lambda: base(input_ids=in_context, use_cache=True))
    results["in_context_tokens"] = in_context.shape[1]
    return results


def human_bytes(count):
    for unit in ["B", "KiB", "MiB", "GiB"]:
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(ROOT / "build" / "cartridge_bench"))
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--text-file", default=str(ROOT / "examples" / "data" / "varnholm.md"))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    ours = run_ours(args)
    theirs = run_peft(args)
    init, sizes = ours["init"], ours["bytes"]
    print(f"\nModel: {pathlib.Path(args.model).name}, dtype {args.dtype}, CPU, {args.threads} threads; document "
          f"{pathlib.Path(args.text_file).name} ({init['document_tokens']} tokens with the chat template), "
          f"cartridge p = {args.tokens}; decode {args.decode_steps} greedy tokens, batch 1, best of {args.repeats}\n")
    print("| measure | cartridge.cpp | PEFT + transformers | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| init from text, s (PEFT: whole text) | {init['seconds']:.3f} | {theirs['init_whole_text']:.3f} | "
          f"{theirs['init_whole_text'] / init['seconds']:.2f}x |")
    print(f"| init from text, s (PEFT: max_length=p) | {init['seconds']:.3f} | {theirs['init_max_length_p']:.3f} | "
          f"{theirs['init_max_length_p'] / init['seconds']:.2f}x |")
    for key, label in [("decode_cartridge", "decode tokens/s, cartridge + question"),
                       ("decode_in_context", "decode tokens/s, document in context + question")]:
        a, b = ours[key]["tokens_per_second"], theirs[key]
        print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    print(f"| KV bytes, cartridge ({args.tokens} tokens, {args.dtype}) | {human_bytes(sizes['cartridge_kv_bytes'])} | "
          f"same | |")
    print(f"| KV bytes, document in context ({ours['decode_in_context']['prompt_tokens']} tokens, {args.dtype}) | "
          f"{human_bytes(sizes['in_context_kv_bytes'])} | same | "
          f"{sizes['in_context_kv_bytes'] / sizes['cartridge_kv_bytes']:.1f}x the cartridge |")
    print(f"| adapter file (float32 prompt_embeddings) | {human_bytes(sizes['cartridge_file_bytes_f32'])} | same | |")


if __name__ == "__main__":
    main()
