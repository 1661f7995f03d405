#!/usr/bin/env python3
"""Self-study training throughput and peak memory: `cartridge train` vs the PEFT self-study example's
approach (transformers model + PEFT CARTRIDGE adapter + a transformers Trainer whose compute_loss is the
same distillation loss), on the same machine, the same dataset and in the same run.

Both sides train a cartridge of --tokens rows (random N(0,1) init) for --steps steps of --batch-size
conversations with Adam at lr 2e-2, fp32, no document in context. The dataset is written here: random
token sequences of the given prompt/answer lengths with top-20 teacher log-probabilities (a log-softmax of
random logits): throughput does not depend on what the tokens say. Each side runs in its own process so
peak memory (max RSS, which includes the model weights) is its own. Tokens/s counts every token of the
conversations trained on (sum of their lengths) over the steps after the first (warm-up).

Prints one markdown table. Example:
  .venv/bin/python bench/training_bench.py --bin build/cartridge --steps 6 --batch-size 4
"""
import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TOP_K = 20


def write_dataset(path: pathlib.Path, vocab_size: int, count: int, prompt_tokens: int, answer_tokens: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    header = {"format": "cartridge-selfstudy-dataset", "version": 1, "model": "bench",
              "model_fingerprint": "training_bench.py", "corpus_sha256": "0" * 64, "corpus_tokens": 0,
              "seed": seed, "top_k": TOP_K, "settings": {"generator": "bench/training_bench.py"}}
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for index in range(count):
            ids = torch.randint(10, vocab_size, (prompt_tokens + answer_tokens,), generator=generator).tolist()
            log_probs = torch.log_softmax(torch.randn(answer_tokens, vocab_size, generator=generator) * 4, dim=-1)
            top = log_probs.topk(TOP_K, dim=-1)
            f.write(json.dumps({
                "index": index, "seed_type": "question", "chunk_start": 0, "chunk_tokens": 0, "question": "",
                "answer": "", "input_ids": ids, "target_start": prompt_tokens, "target_ids": top.indices.tolist(),
                "target_logprobs": top.values.tolist()}) + "\n")


def ours(args, dataset: pathlib.Path, out: pathlib.Path):
    command = [args.bin, "train", "--model", args.model, "--dataset", str(dataset), "--init", "random",
               "--tokens", str(args.tokens), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--eval-fraction", "0", "--max-batch-tokens", "0", "--dtype", args.dtype, "--out", str(out),
               "--json", "-q"]
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - start
    if result.returncode != 0:
        sys.exit(f"cartridge train failed:\n{result.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    state = json.loads(next(out.glob("checkpoint-*")).joinpath("trainer_state.json").read_text())
    history = state["history"][1:]  # drop the warm-up step
    # history tokens exclude each conversation's last token (its logits predict nothing): add them back.
    tokens = sum(row["tokens"] + args.batch_size for row in history)
    seconds = sum(row["seconds"] for row in history)
    return {"tokens_per_second": tokens / seconds, "step_seconds": seconds / len(history), "peak_mib": peak,
            "wall": wall, "final_loss": state["history"][-1]["loss"]}


def reference_main(args):
    """The PEFT example's approach, run in this (child) process; prints one JSON line."""
    import torch
    from peft import CartridgeConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    model_path = pathlib.Path(args.model)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    if model_path.suffix == ".gguf":
        base = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name, dtype=dtype)
        # transformers dequantises GGUF weights into plain tensors but still marks the model as quantized,
        # and its Trainer then refuses to train it; the weights are plain fp32 here, so drop the mark.
        base.hf_quantizer = None
        base.is_quantized = False
    else:
        base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype)
    model = get_peft_model(base, CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.tokens,
                                                 num_frozen_tokens=1))
    rows = [json.loads(line) for line in open(args.reference_dataset)][1:]

    class Collate:
        def __call__(self, batch):
            width = max(len(row["input_ids"]) for row in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for i, row in enumerate(batch):
                ids[i, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
                mask[i, :len(row["input_ids"])] = 1
            return {"input_ids": ids, "attention_mask": mask, "rows": batch}

    class DistillationTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            batch = inputs.pop("rows")
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            log_q = torch.log_softmax(logits.float(), dim=-1)
            total, count = 0.0, 0
            for i, row in enumerate(batch):
                start = row["target_start"]
                n = len(row["target_ids"])
                positions = torch.arange(start - 1, start - 1 + n)
                ids = torch.tensor(row["target_ids"])
                p = torch.tensor(row["target_logprobs"]).exp()
                total = total - (p * log_q[i, positions.unsqueeze(1), ids]).sum()
                count += n
            loss = total / count
            return (loss, logits) if return_outputs else loss

    timings = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *unused, **kwargs):
            self.start = time.time()

        def on_step_end(self, *unused, **kwargs):
            timings.append(time.time() - self.start)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, index):
            return rows[index]

    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=2e-2, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
            optim="adamw_torch", logging_steps=1000, save_strategy="no", report_to=[],
            remove_unused_columns=False, dataloader_pin_memory=False, use_cpu=True, seed=0)
        trainer = DistillationTrainer(model=model, args=training_args, train_dataset=Rows(), data_collator=Collate(),
                                      callbacks=[Timer()])
        # Tokens per step: the Trainer shuffles with its own seed; count what each step really fed.
        fed = []
        original = trainer.compute_loss

        def counting(model, inputs, *rest, **kwargs):
            fed.append(int(inputs["attention_mask"].sum()))
            return original(model, inputs, *rest, **kwargs)

        trainer.compute_loss = counting
        trainer.train()
    tokens = sum(fed[1:])
    seconds = sum(timings[1:])
    print(json.dumps({"tokens_per_second": tokens / seconds, "step_seconds": seconds / len(timings[1:]),
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(REPO / "build/cartridge"))
    parser.add_argument("--model", default=str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--tokens", type=int, default=128, help="cartridge size p")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--answer-tokens", type=int, default=192)
    parser.add_argument("--reference-dataset", help=argparse.SUPPRESS)  # internal: run the reference side
    args = parser.parse_args()
    if args.reference_dataset:
        reference_main(args)
        return
    from transformers import AutoConfig  # noqa: F401  (fail early if the oracle venv is missing)

    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        dataset = folder / "dataset.jsonl"
        write_dataset(dataset, 49152 if args.model.endswith(".gguf") else
                      json.load(open(pathlib.Path(args.model) / "config.json"))["vocab_size"],
                      args.conversations, args.prompt_tokens, args.answer_tokens, seed=0)
        ours_result = ours(args, dataset, folder / "ours")
        reference = subprocess.run([sys.executable, __file__, "--reference-dataset", str(dataset), "--model", args.model,
                                    "--dtype", args.dtype, "--tokens", str(args.tokens), "--steps", str(args.steps),
                                    "--batch-size", str(args.batch_size)], capture_output=True, text=True)
        if reference.returncode != 0:
            sys.exit(f"reference failed:\n{reference.stderr}")
        reference_result = json.loads(reference.stdout.strip().splitlines()[-1])
    print(f"Self-study training, {pathlib.Path(args.model).name}, {args.dtype}, p={args.tokens}, "
          f"batch {args.batch_size} x {args.prompt_tokens + args.answer_tokens} tokens, {args.steps} steps "
          f"(first excluded), {os.cpu_count()} CPU cores\n")
    print("| implementation | training tokens/s | s/step | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    print(f"| cartridge.cpp (`cartridge train`) | {ours_result['tokens_per_second']:.1f} | "
          f"{ours_result['step_seconds']:.2f} | {ours_result['peak_mib']:.0f} |")
    print(f"| transformers + PEFT + Trainer (same loss) | {reference_result['tokens_per_second']:.1f} | "
          f"{reference_result['step_seconds']:.2f} | {reference_result['peak_mib']:.0f} |")
    print(f"\nspeed-up: {ours_result['tokens_per_second'] / reference_result['tokens_per_second']:.2f}x")


if __name__ == "__main__":
    main()
