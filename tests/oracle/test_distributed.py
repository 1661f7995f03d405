"""Self-study across processes (docs/distributed.md), 2 ranks on this machine over gloo, each rank with the
threads of the single process it is compared with (OMP_NUM_THREADS=1 everywhere). The oracle is the
single-process run with the same global batch, itself checked against PEFT/transformers by the other tests:

- `cartridge train` under torchrun with world size 2 gives every step's loss within 1e-5, and after 20 steps
  the adapter within 1e-4 (and Adam's moments), of world size 1; the evaluations agree too.
- A 2-rank checkpoint resumed by 1 process (and a 1-process checkpoint resumed by 2 ranks) ends where the
  uninterrupted 1-process run ends.
- `cartridge synthesize` with 2 ranks writes the byte-identical dataset.jsonl; a run continued from an
  interrupted run's chunk-group files (any world size) too; `cartridge study` with 2 ranks equals 1 process.
- A rank killed with SIGKILL, or stopped with SIGSTOP, makes the other exit non-zero with a message naming
  its rank within the --distributed-timeout (launched with the environment variables alone, no torchrun
  to kill the survivors); a rank whose peers never come gives up after the timeout.

Needs CARTRIDGE_BIN, CARTRIDGE_FIXTURES (tests/fixtures/make_all.py) and torchrun in the venv.
"""
import csv
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CARTRIDGE_BIN", str(ROOT / "build" / "cartridge"))
FIXTURES = pathlib.Path(os.environ.get("CARTRIDGE_FIXTURES", str(ROOT / "build" / "fixtures")))
SELFSTUDY = FIXTURES / "selfstudy"
SYNTHESIS = FIXTURES / "synthesis"
TORCHRUN = pathlib.Path(sys.executable).with_name("torchrun")

# One thread per process in every run, so the single process and each rank do the same arithmetic.
ENVIRONMENT = dict(os.environ, OMP_NUM_THREADS="1")
for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENVIRONMENT.pop(name, None)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_args(out, steps=20, extra=(), checkpoint_every=10, eval_every=5):
    return [BIN, "train", "--model", str(SELFSTUDY / "model"), "--dataset", str(SELFSTUDY / "dataset.jsonl"),
            "--init", "random", "--tokens", "6", "--steps", str(steps), "--batch-size", "4",
            "--checkpoint-every", str(checkpoint_every), "--eval-fraction", "0.25", "--eval-every",
            str(eval_every), "--seed", "5", "--validation-qa", str(SELFSTUDY / "qa.jsonl"), "--out", str(out),
            "--dtype", "fp32", "--json", "-q", *extra]


SYNTHESIS_ARGS = ["--samples", "8", "--batch", "3", "--seed", "11", "--min-chunk", "60", "--max-chunk", "200",
                  "--max-question-tokens", "12", "--max-answer-tokens", "24", "--device", "cpu", "--quiet"]


def synthesize_args(out, extra=()):
    return [BIN, "synthesize", "--model", str(SYNTHESIS / "tiny_llama"), "--corpus", str(SYNTHESIS / "corpus.txt"),
            "--out", str(out), *SYNTHESIS_ARGS, "--json", *extra]


def run(args, ranks=1):
    """Runs `args` as one process, or under torchrun with `ranks` processes; returns the --json summary."""
    if ranks > 1:
        args = [str(TORCHRUN), "--no-python", "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1",
                "--master-port", str(free_port()), *args]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=ENVIRONMENT)
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, result.stdout  # printed once, by the writing rank
    return summaries[0]


def losses(out):
    with open(out / "loss.csv") as file:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(file) if row["loss"]}


def evaluations(out):
    with open(out / "loss.csv") as file:
        return {int(row["step"]): (float(row["heldout_kl"]), float(row["validation_answer_nll"]))
                for row in csv.DictReader(file) if row["heldout_kl"]}


def assert_same_training(ours, reference, steps):
    ours_losses, reference_losses = losses(ours), losses(reference)
    assert sorted(ours_losses) == sorted(reference_losses) == list(range(1, steps + 1))
    for step, loss in reference_losses.items():
        assert abs(ours_losses[step] - loss) <= 1e-5, (step, ours_losses[step], loss)
    ours_evaluations, reference_evaluations = evaluations(ours), evaluations(reference)
    assert sorted(ours_evaluations) == sorted(reference_evaluations)
    for step, (kl, nll) in reference_evaluations.items():
        assert abs(ours_evaluations[step][0] - kl) <= 1e-5 and abs(ours_evaluations[step][1] - nll) <= 1e-5
    checkpoint = f"checkpoint-{steps}"
    for file, tolerance in (("adapter_model.safetensors", 1e-4), ("optimizer.safetensors", 1e-6)):
        ours_tensors = load_file(ours / checkpoint / file)
        reference_tensors = load_file(reference / checkpoint / file)
        assert sorted(ours_tensors) == sorted(reference_tensors)
        for name, tensor in reference_tensors.items():
            difference = (ours_tensors[name] - tensor).abs().max().item()
            assert difference <= tolerance, (file, name, difference)
    # The run really moved the cartridge (else equal adapters would prove nothing).
    initial = load_file(reference / "checkpoint-10" / "adapter_model.safetensors")["prompt_embeddings"]
    final = load_file(reference / checkpoint / "adapter_model.safetensors")["prompt_embeddings"]
    assert (final - initial).abs().max().item() > 1e-3


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "one"
    summary = run(train_args(out))
    assert summary["world_size"] == 1 and summary["rank_batch_conversations"] == [4]
    return out


def test_training_on_two_ranks_equals_one_process(single_process_run, tmp_path):
    out = tmp_path / "two"
    summary = run(train_args(out), ranks=2)
    assert summary["world_size"] == 2 and summary["rank_batch_conversations"] == [2, 2]
    assert_same_training(out, single_process_run, 20)
    assert (out / "best" / "adapter_model.safetensors").exists()


def test_a_checkpoint_resumes_with_another_world_size(single_process_run, tmp_path):
    for first, second in ((2, 1), (1, 2)):
        out = tmp_path / f"{first}-then-{second}"
        assert run(train_args(out, steps=10), ranks=first)["steps"] == 10
        assert run(train_args(out, steps=20, extra=["--resume"]), ranks=second)["steps"] == 20
        assert_same_training(out, single_process_run, 20)


def test_synthesis_on_two_ranks_writes_the_same_bytes(tmp_path):
    one = run(synthesize_args(tmp_path / "one"))
    two = run(synthesize_args(tmp_path / "two"), ranks=2)
    reference = (tmp_path / "one" / "dataset.jsonl").read_bytes()
    assert (tmp_path / "two" / "dataset.jsonl").read_bytes() == reference
    # 8 conversations in chunk groups of 3: groups 0 and 2 (3 + 2) on rank 0, group 1 on rank 1.
    assert one["rank_conversations"] == [8] and two["rank_conversations"] == [5, 3]
    assert two["written_conversations"] == one["written_conversations"] == 8
    assert two["generated_tokens"] == one["generated_tokens"]
    assert not (tmp_path / "two" / "dataset.jsonl.groups").exists()

    # An interrupted run across processes leaves finished chunk groups in dataset.jsonl.groups/: one process
    # continues it (groups 0 and 2 generated, group 1 taken from its file) to the same bytes. Group 2's file
    # is from a run with another --samples (3 conversations where this run's last group has 2): made again.
    lines = reference.decode("utf-8").split("\n")
    groups = tmp_path / "three" / "dataset.jsonl.groups"
    groups.mkdir(parents=True)
    (groups / "group-00000001.jsonl").write_text("\n".join([lines[0], *lines[4:7]]) + "\n", encoding="utf-8")
    (groups / "group-00000002.jsonl").write_text("\n".join([lines[0], *lines[1:4]]) + "\n", encoding="utf-8")
    three = run(synthesize_args(tmp_path / "three"))
    assert (tmp_path / "three" / "dataset.jsonl").read_bytes() == reference
    assert three["rank_conversations"] == [5] and not groups.exists()


def test_study_on_two_ranks_equals_one_process(tmp_path):
    def study(out, ranks):
        args = [BIN, "study", "--model", str(SYNTHESIS / "tiny_llama"), "--corpus", str(SYNTHESIS / "corpus.txt"),
                "--out", str(out), "--device", "cpu", "--dtype", "fp32", "-q", "--json", "--init", "text", "--tokens", "16",
                "--samples", "6", "--steps", "4", "--batch-size", "2", "--batch", "3", "--min-chunk", "60",
                "--max-chunk", "200", "--max-question-tokens", "12", "--max-answer-tokens", "24",
                "--eval-every", "2", "--checkpoint-every", "2", "--seed", "3", "--keep", "last"]
        return run(args, ranks)

    one, two = study(tmp_path / "one", 1), study(tmp_path / "two", 2)
    assert two["world_size"] == 2 and two["rank_conversations"] == [3, 3]
    assert (tmp_path / "two" / "dataset.jsonl").read_bytes() == (tmp_path / "one" / "dataset.jsonl").read_bytes()
    assert abs(two["final_loss"] - one["final_loss"]) <= 1e-5
    ours = load_file(tmp_path / "two" / "adapter_model.safetensors")["prompt_embeddings"]
    reference = load_file(tmp_path / "one" / "adapter_model.safetensors")["prompt_embeddings"]
    assert (ours - reference).abs().max().item() <= 1e-4


def launch_ranks(args, timeout_seconds, world_size=2):
    """Starts the ranks with torchrun's variables set by hand (no torchrun to stop the survivors)."""
    port = free_port()
    processes = []
    for rank in range(world_size):
        environment = dict(ENVIRONMENT, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        processes.append(subprocess.Popen([*args, "--distributed-timeout", str(timeout_seconds)], env=environment,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def long_training(out):
    # Thousands of steps: far longer than the test waits, so a rank is always mid-run when it is hit.
    return train_args(out, steps=100000, checkpoint_every=0, eval_every=0)


@pytest.mark.parametrize("hit", ["SIGKILL", "SIGSTOP"])
def test_a_rank_that_dies_or_hangs_stops_the_other(tmp_path, hit):
    timeout = 5
    survivor, victim = launch_ranks(long_training(tmp_path / "out"), timeout)
    try:
        time.sleep(3)  # both have joined and are stepping
        assert survivor.poll() is None and victim.poll() is None
        victim.send_signal(getattr(signal, hit))
        hit_at = time.monotonic()
        _, stderr = survivor.communicate(timeout=timeout + 30)
        waited = time.monotonic() - hit_at
    finally:
        for process in (survivor, victim):
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert survivor.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().endswith(errors[0]), stderr  # one line, no stack trace
    assert errors[0].startswith("error: rank 0 of 2: lost the other ranks during "), errors  # ... of step N
    # A killed peer closes its sockets: noticed at once. A stopped one: after the timeout.
    assert waited <= timeout + 10, waited


def test_a_rank_whose_peers_never_come_gives_up(tmp_path):
    port = free_port()
    environment = dict(ENVIRONMENT, RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    started = time.monotonic()
    result = subprocess.run([*train_args(tmp_path / "out"), "--distributed-timeout", "2"], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and time.monotonic() - started < 60
    assert "rank 0 of 2" in result.stderr and "did not all join" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_torchrun_variables_are_refused_in_one_line(tmp_path):
    environment = dict(ENVIRONMENT, RANK="2", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1234")
    result = subprocess.run(train_args(tmp_path / "out"), env=environment, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: RANK=2 with WORLD_SIZE=2: the rank must be in [0, WORLD_SIZE)"
