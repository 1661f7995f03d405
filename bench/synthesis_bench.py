#!/usr/bin/env python3
"""Self-study synthesis speed, cartridge.cpp vs transformers generate, in one run, on the same machine.

    .venv/bin/python bench/synthesis_bench.py --bin build/cartridge [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--corpus examples/data/varnholm.md] [--samples 8] [--batch 4] [--min-chunk 256] [--max-chunk 512]
        [--max-question-tokens 32] [--max-answer-tokens 64] [--dtype fp32|bf16] [--threads N]

Rows of the table (each in its own process, so peak memory is its own):
  ours                  `cartridge synthesize`: each chunk's prompt prefilled once per group, the group's
                        questions then answers decoded as one batch, top-20 recorded while decoding; with
                        fp32, once with the GGUF's blocks kept as stored (`--weights stored`, the default
                        path) and once dense (`--weights dense`, the exact reference)
  ours, per-row prefill the same with --no-shared-prefill (every row prefills its whole prompt)
  transformers, 1 row   PEFT's self-study example (examples/cartridge_self_study/synthesize.py, HF path):
                        `model.generate` one conversation at a time, question sampled at 0.6, answer greedy;
                        here the answer's top-20 log-probabilities are taken from `output_logits` during
                        generation, as ours are
  transformers, batched the same with the group's conversations in one left-padded `generate` call
The transformers rows replay our dataset: the same chunks (system message from the dataset header), a seed
prompt per conversation, and our questions for the answer stage, so both sides do comparable work. Throughput
is generated tokens (questions + answers) per second of generation (model loading excluded); prompt tokens
are reported too. Peak memory is the process's maximum resident set size. On a shared machine run it when
the machine is otherwise idle.
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
QUESTION_SEED = ("Write one question that tests whether someone knows what the document above says. Include "
                 "specific names, dates, numbers or terms from it. Reply with the question only.")


def run_with_rusage(command, env=None):
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            sys.exit(f"{' '.join(map(str, command))} failed:\n{err.read()}")
        return out.read(), usage.ru_maxrss / 1024.0  # KiB -> MiB


def synthesis_arguments(args, weights="dense"):
    return ["--model", args.model, "--corpus", args.corpus, "--samples", str(args.samples), "--batch",
            str(args.batch), "--min-chunk", str(args.min_chunk), "--max-chunk", str(args.max_chunk),
            "--max-question-tokens", str(args.max_question_tokens), "--max-answer-tokens",
            str(args.max_answer_tokens), "--dtype", args.dtype, "--weights", weights, "--device", "cpu", "--seed", "0",
            "--quiet", "--json"]


def run_ours(args, folder, shared, weights="dense"):
    command = [args.bin, "synthesize", *synthesis_arguments(args, weights), "--out", str(folder)]
    if not shared:
        command.append("--no-shared-prefill")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    stdout, peak = run_with_rusage(command, env)
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"generated": summary["generated_tokens"], "prompt": summary["prefill_tokens"],
            "seconds": summary["seconds"], "peak_mib": peak, "conversations": summary["written_conversations"]}


def transformers_worker(args):
    """Runs in its own process: replays the dataset with transformers generate, prints one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model_path = pathlib.Path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name, dtype=dtype,
                                                 attn_implementation="sdpa").eval()
    lines = pathlib.Path(args.dataset).read_text(encoding="utf-8").split("\n")[:-1]
    header = json.loads(lines[0])
    conversations = [json.loads(line) for line in lines[1:]]
    settings = header["settings"]
    corpus_ids = tokenizer(pathlib.Path(args.corpus).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]

    def system_message(conversation):
        chunk = tokenizer.decode(corpus_ids[conversation["chunk_start"]:
                                            conversation["chunk_start"] + conversation["chunk_tokens"]])
        if settings["description"]:
            chunk = settings["description"] + "\n\n" + chunk
        return settings["system_prompt"].replace("{chunk}", chunk)

    def prompt(system, user):
        return tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                             add_generation_prompt=True, tokenize=False)

    groups = [conversations[i:i + args.hf_batch] for i in range(0, len(conversations), args.hf_batch)]
    generated = prompt_tokens = 0
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.inference_mode():
        for group in groups:
            systems = [system_message(c) for c in group]
            # Question stage (sampled at the question temperature).
            batch = tokenizer([prompt(s, QUESTION_SEED) for s in systems], return_tensors="pt", padding=True,
                              add_special_tokens=False)
            out = model.generate(**batch, do_sample=True, temperature=settings["question_temperature"], top_k=0,
                                 top_p=1.0, max_new_tokens=settings["max_question_tokens"], eos_token_id=eos,
                                 pad_token_id=eos)
            new = out[:, batch["input_ids"].shape[1]:]
            generated += int(((new != eos).cumsum(1) == torch.arange(1, new.shape[1] + 1)).sum()) + \
                int((new == eos).any(1).sum())
            prompt_tokens += int(batch["attention_mask"].sum())
            # Answer stage: greedy, top-20 log-probabilities from the logits of each generated token.
            batch = tokenizer([prompt(s, c["question"]) for s, c in zip(systems, group)], return_tensors="pt",
                              padding=True, add_special_tokens=False)
            out = model.generate(**batch, do_sample=False, max_new_tokens=settings["max_answer_tokens"],
                                 eos_token_id=eos, pad_token_id=eos, output_logits=True,
                                 return_dict_in_generate=True)
            top = [torch.log_softmax(step.float(), dim=-1).topk(header["top_k"], dim=-1) for step in out.logits]
            new = out.sequences[:, batch["input_ids"].shape[1]:]
            generated += int(((new != eos).cumsum(1) == torch.arange(1, new.shape[1] + 1)).sum()) + \
                int((new == eos).any(1).sum())
            prompt_tokens += int(batch["attention_mask"].sum())
            del top
    seconds = time.perf_counter() - start
    print(json.dumps({"generated": generated, "prompt": prompt_tokens, "seconds": seconds,
                      "conversations": len(conversations)}))


def run_transformers(args, dataset, batch):
    command = [sys.executable, __file__, "--hf-worker", "--dataset", str(dataset), "--hf-batch", str(batch),
               "--model", args.model, "--corpus", args.corpus, "--dtype", args.dtype, "--threads", str(args.threads)]
    stdout, peak = run_with_rusage(command, dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mib"] = peak
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(ROOT / "build" / "cartridge"))
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--corpus", default=str(ROOT / "examples" / "data" / "varnholm.md"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--min-chunk", type=int, default=256)
    parser.add_argument("--max-chunk", type=int, default=512)
    parser.add_argument("--max-question-tokens", type=int, default=32)
    parser.add_argument("--max-answer-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--hf-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_worker:
        transformers_worker(args)
        return

    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        rows = []
        if args.dtype == "fp32":
            rows.append(("cartridge.cpp (shared chunk prefill, blocks as stored: the default)",
                         run_ours(args, folder / "stored", True, "stored")))
        rows += [("cartridge.cpp (shared chunk prefill, dense)", run_ours(args, folder / "shared", True)),
                 ("cartridge.cpp (per-row prefill, dense)", run_ours(args, folder / "per_row", False))]
        dataset = folder / "shared" / "dataset.jsonl"
        rows.append(("transformers generate, 1 conversation at a time (PEFT example)",
                     run_transformers(args, dataset, 1)))
        rows.append((f"transformers generate, batch {args.batch}", run_transformers(args, dataset, args.batch)))

    print(f"\nSynthesis, {args.samples} conversations, {args.batch} per chunk, chunks {args.min_chunk}-{args.max_chunk} "
          f"tokens, questions <= {args.max_question_tokens} and answers <= {args.max_answer_tokens} tokens, "
          f"{args.dtype}, CPU, {args.threads} threads, model {pathlib.Path(args.model).name}\n")
    print("| implementation | prompt tokens | generated tokens | seconds | generated tok/s | all tok/s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows:
        print(f"| {name} | {row['prompt']} | {row['generated']} | {row['seconds']:.1f} | "
              f"{row['generated'] / row['seconds']:.1f} | {(row['generated'] + row['prompt']) / row['seconds']:.1f} | "
              f"{row['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
