"""`cartridge train` / `cartridge eval` driven as a user would, on the tiny model and synthetic dataset of
tests/fixtures/make_selfstudy.py (same test run):

- a run killed with SIGKILL mid-training and resumed gives a valid PEFT adapter and exactly the same losses
  and final adapter as an uninterrupted run with the same seed; the same after Ctrl-C (SIGINT);
- resuming with other settings, or training into a folder that already holds a run, is refused in one line;
- `cartridge eval` gives transformers' answer NLL (no context, corpus in context, a PEFT-saved cartridge);
- `--validation-qa`: every recorded validation answer NLL is transformers' for that step's adapter loaded in
  PeftModel, <out>/best/ is the adapter of the lowest one, and a killed run resumes to the same best/.
"""
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest
import torch

BIN = os.environ.get("CARTRIDGE_BIN", "build/cartridge")
FIXTURES = pathlib.Path(os.environ.get("CARTRIDGE_FIXTURES", "build/fixtures")) / "selfstudy"

STEPS = 240


def train_args(out, *extra):
    # With validation questions, so the kill/resume tests cover <out>/best/ too.
    return [BIN, "train", "--model", str(FIXTURES / "model"), "--dataset", str(FIXTURES / "dataset.jsonl"),
            "--init", "random", "--tokens", "6", "--steps", str(STEPS), "--batch-size", "2",
            "--checkpoint-every", "5", "--eval-fraction", "0.25", "--eval-every", "40", "--seed", "5",
            "--validation-qa", str(FIXTURES / "qa.jsonl"), "--out", str(out), "--dtype", "fp32", "--json", "-q", *extra]


def run_json(args):
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def losses(out):
    """step -> loss from loss.csv (the loss column as written)."""
    rows = (pathlib.Path(out) / "loss.csv").read_text().splitlines()[1:]
    return {int(row.split(",")[0]): row.split(",")[1] for row in rows if row.split(",")[1]}


def validation_column(out):
    """step -> validation_answer_nll from loss.csv, for the rows that have one."""
    rows = [row.split(",") for row in (pathlib.Path(out) / "loss.csv").read_text().splitlines()[1:]]
    return {int(row[0]): row[6] for row in rows if row[6]}


def checkpoint_steps(out):
    return sorted(int(p.name.split("-")[1]) for p in pathlib.Path(out).glob("checkpoint-*")
                  if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists())


def start_and_stop(out, stop_signal, min_step):
    """Starts a training run and sends `stop_signal` once a checkpoint at or after `min_step` exists."""
    process = subprocess.Popen(train_args(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        steps = checkpoint_steps(out)
        if steps and steps[-1] >= min_step:
            process.send_signal(stop_signal)
            break
        time.sleep(0.005)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "cartridge"
    summary = run_json(train_args(out))
    assert summary["steps"] == STEPS and not summary["interrupted"]
    return out, summary


def assert_same_as(out, reference):
    reference_out, reference_summary = reference
    summary = run_json(train_args(out, "--resume"))
    assert summary["steps"] == STEPS
    assert summary["final_loss"] == reference_summary["final_loss"]
    assert summary["final_heldout_kl"] == reference_summary["final_heldout_kl"]
    assert losses(out) == losses(reference_out)
    for name in ("adapter_model.safetensors", "adapter_config.json", "best/adapter_model.safetensors",
                 "best/best_validation.json"):
        assert (out / name).read_bytes() == (reference_out / name).read_bytes(), name
    assert summary["best_step"] == reference_summary["best_step"]
    assert validation_column(out) == validation_column(reference_out)


def assert_valid_peft_adapter(out):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(FIXTURES / "model"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out))
    stored = load_file(str(out / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.equal(model.prompt_encoder["default"].weight.detach(), stored)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.isfinite(logits).all()


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "cartridge"
    returncode, _, _ = start_and_stop(out, signal.SIGKILL, min_step=20)
    assert returncode == -signal.SIGKILL, "the run finished before it could be killed"
    steps = checkpoint_steps(out)
    assert steps and steps[-1] < STEPS
    # What is on disk right after the kill is a valid adapter.
    assert_valid_peft_adapter(out)
    assert_same_as(out, uninterrupted)
    assert_valid_peft_adapter(out)


def test_ctrl_c_saves_a_checkpoint_and_resume_equals_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "cartridge"
    returncode, stdout, stderr = start_and_stop(out, signal.SIGINT, min_step=10)
    assert returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["interrupted"] and summary["steps"] < STEPS
    assert checkpoint_steps(out)[-1] == summary["steps"]
    assert_same_as(out, uninterrupted)


def test_refusals_are_one_line(tmp_path, uninterrupted):
    reference_out, _ = uninterrupted
    # Training again into a folder that holds a run, without --resume.
    result = subprocess.run(train_args(reference_out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--resume" in errors[0], result.stderr
    # Resuming with another batch size.
    args = train_args(reference_out, "--resume")
    args[args.index("--batch-size") + 1] = "3"
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "batch_size" in result.stderr, result.stderr
    # --init text needs the corpus; a missing dataset is named.
    args = train_args(tmp_path / "x")
    args[args.index("--init") + 1] = "text"
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "--corpus" in result.stderr, result.stderr
    args = train_args(tmp_path / "y")
    args[args.index("--dataset") + 1] = str(tmp_path / "missing.jsonl")
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "missing.jsonl" in result.stderr, result.stderr
    assert not (tmp_path / "y").exists()


def test_eval_answer_nll_matches_transformers():
    expected = json.loads((FIXTURES / "expected.json").read_text())["eval"]
    result = subprocess.run([BIN, "eval", "--model", str(FIXTURES / "model"), "--corpus", str(FIXTURES / "corpus.txt"),
                             "--qa", str(FIXTURES / "qa.jsonl"), "--cartridge", str(FIXTURES / "init_adapter"),
                             "--name", "init", "--json", "-q"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    rows = {row["kind"]: row for row in output["conditions"]}
    for kind, key in (("none", "no_context"), ("in_context", "icl"), ("cartridge", "cartridge")):
        reference = expected[key]
        assert abs(rows[kind]["answer_nll"] - sum(reference) / len(reference)) < 1e-4, kind
        assert len(rows[kind]["answer_nll_per_question"]) == len(reference)
        for ours, theirs in zip(rows[kind]["answer_nll_per_question"], reference):
            assert abs(ours - theirs) < 1e-4, kind
    assert rows["cartridge"]["name"] == "init" and rows["cartridge"]["context_tokens"] == 6


def test_validation_questions_score_each_adapter_as_transformers_and_keep_the_best(tmp_path):
    import importlib.util
    import math

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.spec_from_file_location("make_selfstudy", pathlib.Path(__file__).parents[1] / "fixtures" /
                                                  "make_selfstudy.py")
    make_selfstudy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_selfstudy)
    out = tmp_path / "cartridge"
    args = train_args(out)
    for option, value in (("--steps", "12"), ("--eval-every", "2"), ("--checkpoint-every", "2")):
        args[args.index(option) + 1] = value
    summary = run_json(args + ["--keep-checkpoints", "100", "--lr", "0.05"])
    header = (out / "loss.csv").read_text().splitlines()[0]
    assert header == "step,loss,tokens,positions,seconds,heldout_kl,validation_answer_nll"
    recorded = {step: float(value) for step, value in validation_column(out).items()}
    assert sorted(recorded) == list(range(0, 13, 2))

    tokenizer = AutoTokenizer.from_pretrained(str(FIXTURES / "model"))
    pairs = [json.loads(line) for line in (FIXTURES / "qa.jsonl").read_text().splitlines() if line.strip()]

    def transformers_nll(adapter):
        base = AutoModelForCausalLM.from_pretrained(str(FIXTURES / "model"), dtype=torch.float32)
        means = make_selfstudy.answer_nll(PeftModel.from_pretrained(base, str(adapter)).eval(), tokenizer, pairs)
        return sum(means) / len(means)

    for step, value in recorded.items():
        if step > 0:  # the step-0 adapter is the random initialisation, not kept as a checkpoint
            assert abs(value - transformers_nll(out / f"checkpoint-{step}")) < 1e-4, step
    best_step = min(recorded, key=lambda step: (recorded[step], step))
    best = json.loads((out / "best" / "best_validation.json").read_text())
    assert best["step"] == best_step == summary["best_step"]
    assert math.isclose(best["validation_answer_nll"], recorded[best_step], rel_tol=1e-6)
    assert abs(transformers_nll(out / "best") - recorded[best_step]) < 1e-4
    assert summary["best_adapter"] == str(out / "best")
    assert math.isclose(summary["initial_validation_answer_nll"], recorded[0], rel_tol=1e-6)
    assert math.isclose(summary["final_validation_answer_nll"], recorded[12], rel_tol=1e-6)
