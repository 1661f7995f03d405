"""`cartridge study` and `cartridge train --init ...` driven as a user would, on the tiny random Llama and
corpus of tests/fixtures/make_synthesis.py, against PEFT / transformers in the same run:

- `cartridge study` end to end: exit 0, prints how to use the cartridge, writes the dataset, the adapter,
  loss.csv / loss.svg and checkpoints; the adapter loads in PeftModel.from_pretrained and gives the logits
  of `cartridge generate --cartridge` (1e-4); its frozen row is PEFT's initialize_kv_prefix_from_text.
- Rerunning the same command leaves a finished run alone; another --samples is refused in one line before
  any synthesis; a larger --steps continues from the checkpoint and ends where a run with that many steps
  from scratch ends (byte-identical adapter, same losses).
- `cartridge train --init text` starts from PEFT's initialize_kv_prefix_from_text(use_chat_template=True)
  (the corpus as the system turn that the default system_turn framing continues) and never moves its frozen rows; `--init ADAPTER_DIR` (a PEFT-saved adapter) keeps the adapter's p, frozen
  count and frozen rows.

Needs CARTRIDGE_BIN (our binary) and CARTRIDGE_FIXTURES (written by tests/fixtures/make_all.py).
"""
import json
import math
import os
import pathlib
import shutil
import subprocess
import warnings
import xml.etree.ElementTree as ElementTree

import pytest
import torch
from safetensors.torch import load_file

warnings.filterwarnings("ignore")

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CARTRIDGE_BIN", str(ROOT / "build" / "cartridge"))
FIXTURES = pathlib.Path(os.environ.get("CARTRIDGE_FIXTURES", str(ROOT / "build" / "fixtures"))) / "synthesis"
MODEL = FIXTURES / "tiny_llama"
CORPUS = FIXTURES / "corpus.txt"
TOKENS = 16
SAMPLES = 6
STEPS = 4
PROMPT = "The harbour master of Varnholm kept a record of"
# Small enough that a whole study takes seconds on the tiny model. `--init text` so that the frozen row is
# PEFT's text init (the default, auto, is attention matching here:
# test_study_default_init_is_attention_matching_with_the_system_turn_framing).
STUDY_OPTIONS = {"--init": "text", "--tokens": str(TOKENS), "--samples": str(SAMPLES), "--steps": str(STEPS), "--batch-size": "2",
                 "--batch": "3", "--min-chunk": "60", "--max-chunk": "200", "--max-question-tokens": "12",
                 "--max-answer-tokens": "24", "--eval-every": "2", "--checkpoint-every": "2", "--seed": "3"}


def study_command(out, replace=None, extra=()):
    options = dict(STUDY_OPTIONS, **(replace or {}))
    args = [BIN, "study", "--model", str(MODEL), "--corpus", str(CORPUS), "--out", str(out), "--device", "cpu", "--dtype", "fp32", "-q"]
    for option, value in options.items():
        args += [option, value]
    return args + list(extra)


def run(args, expect=0):
    result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, f"{' '.join(map(str, args))} exited {result.returncode}: {result.stderr}"
    return result


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


def folder_bytes(folder):
    """Every file under `folder` (relative path -> bytes)."""
    folder = pathlib.Path(folder)
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def loss_rows(out):
    """step -> the row of loss.csv as written (the header checked)."""
    lines = (pathlib.Path(out) / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,tokens,positions,seconds,heldout_kl,validation_answer_nll", lines[0]
    return {int(line.split(",")[0]): line for line in lines[1:]}


def losses(out):
    """step -> (loss, heldout_kl) columns of loss.csv (empty string where a row has none)."""
    return {step: (row.split(",")[1], row.split(",")[5]) for step, row in loss_rows(out).items()}


def embeddings(folder):
    return load_file(str(pathlib.Path(folder) / "adapter_model.safetensors"))["prompt_embeddings"]


def adapter_config(folder):
    return json.loads((pathlib.Path(folder) / "adapter_config.json").read_text())


def checkpoint_steps(out):
    return sorted(int(path.name.split("-")[1]) for path in pathlib.Path(out).glob("checkpoint-*"))


def hf_model():
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32).eval()


def hf_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(MODEL))


def peft_text_init(num_virtual_tokens, num_frozen_tokens):
    """PEFT's own initialisation of a CARTRIDGE from the corpus as a system message through the chat template
    (what the default system_turn framing continues), [p, W]."""
    from peft import CartridgeConfig, get_peft_model, initialize_kv_prefix_from_text

    config = CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
                             num_frozen_tokens=num_frozen_tokens)
    peft_model = get_peft_model(hf_model(), config)
    text = CORPUS.read_text(encoding="utf-8")
    return initialize_kv_prefix_from_text(peft_model, hf_tokenizer(), text=text, use_chat_template=True).float()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One finished `cartridge study` run (human output) and a snapshot of its folder."""
    assert MODEL.is_dir(), f"missing fixture {MODEL} (run tests/fixtures/make_all.py)"
    out = tmp_path_factory.mktemp("study") / "cartridge"
    result = run(study_command(out))
    return out, result, folder_bytes(out)


def copy_of(study, tmp_path):
    out, _, _ = study
    copy = tmp_path / "cartridge"
    shutil.copytree(out, copy)
    return copy


def test_study_end_to_end_gives_a_cartridge_that_peft_loads(study, tmp_path):
    from peft import PeftModel

    out, result, _ = study
    # It says how to use the cartridge, naming the output folder.
    lines = result.stdout.splitlines()
    assert "use it:" in lines, result.stdout
    usage = lines[lines.index("use it:") + 1:]
    assert any(line.split()[:2] == ["cartridge", "chat"] and f"--cartridge {out}" in line for line in usage), usage
    assert any(line.split()[:2] == ["cartridge", "generate"] and f"--cartridge {out}" in line for line in usage), usage

    # The dataset: a header and one line per requested conversation.
    dataset_lines = (out / "dataset.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(dataset_lines) == 1 + SAMPLES
    for line in dataset_lines:
        json.loads(line)

    # The adapter, the cartridge asked for (p, frozen rows from the defaults), fp32 [p, W].
    config = adapter_config(out)
    assert config["peft_type"] == "CARTRIDGE"
    assert config["num_virtual_tokens"] == TOKENS and config["num_frozen_tokens"] == 1
    assert (out / "cartridge_fingerprint.json").is_file()
    stored = embeddings(out)
    assert stored.dtype == torch.float32 and stored.shape[0] == TOKENS

    # Loss curves: step 0 (before training) has a held-out score, steps 1..STEPS a loss each.
    rows = losses(out)
    assert sorted(step for step, (loss, _) in rows.items() if loss) == list(range(1, STEPS + 1))
    assert rows[0][1] and rows[STEPS][1]
    assert all(math.isfinite(float(loss)) and float(loss) > 0 for loss, _ in rows.values() if loss)
    assert ElementTree.parse(out / "loss.svg").getroot().tag.endswith("svg")

    # Checkpoints: the last one is complete; at most --keep-checkpoints (2).
    steps = checkpoint_steps(out)
    assert steps[-1] == STEPS and len(steps) <= 2, steps
    last = out / f"checkpoint-{STEPS}"
    for name in ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "optimizer.safetensors"):
        assert (last / name).is_file(), name
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["settings"]["dataset_conversations"] == SAMPLES
    # The folder holds the evaluated step with the lowest held-out KL (the earliest of equals), as best/ does.
    heldout = {step: float(kl) for step, (_, kl) in rows.items() if kl}
    lowest = min(sorted(heldout), key=lambda step: heldout[step])
    best = json.loads((out / "best" / "best_heldout_kl.json").read_text())
    assert best["step"] == lowest and math.isclose(best["heldout_kl"], heldout[lowest], rel_tol=1e-6), best
    assert (out / "best" / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()
    checkpoint = out / f"checkpoint-{lowest}"
    if checkpoint.is_dir():
        assert (checkpoint / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()

    # PEFT loads it and gives our logits.
    peft_model = PeftModel.from_pretrained(hf_model(), str(out)).eval()
    assert torch.equal(peft_model.prompt_encoder["default"].weight.detach(), stored)
    logits_path = tmp_path / "logits.safetensors"
    generated = last_json(run([BIN, "generate", "--model", MODEL, "--cartridge", out, "--prompt", PROMPT,
                               "--max-new-tokens", "0", "--logits-out", logits_path, "--device", "cpu", "--json",
                               "-q"]))
    prompt_ids = hf_tokenizer()(PROMPT)["input_ids"]
    assert generated["prompt_tokens"] == len(prompt_ids) and generated["cartridge_tokens"] == TOKENS
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        theirs = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
    ours = load_file(str(logits_path))["logits"]
    assert ours.shape == theirs.shape
    difference = (ours - theirs).abs().max().item()
    print(f"\nstudy cartridge: max |logit difference| vs PEFT {difference:.2e}")
    assert difference <= 1e-4

    # Trained from the corpus's first p tokens: the frozen row, which training never moves, is PEFT's text init.
    initial = peft_text_init(TOKENS, 1)
    assert (stored[:1] - initial[:1]).abs().max().item() <= 1e-5
    # ... and training moved the trainable rows.
    assert (embeddings(last)[1:] - initial[1:]).abs().max().item() > 1e-4


def test_keep_last_leaves_the_last_step_and_keep_best_the_lowest_heldout_kl(study, tmp_path):
    """`--keep last`: the folder's adapter is the last step's; the default (best): best/'s, the lowest held-out
    KL, which a learning rate far too large makes the initialisation (step 0)."""
    dataset = study[0] / "dataset.jsonl"
    last = tmp_path / "last"
    summary = last_json(run(train_command(dataset, last, "--init", "random", "--tokens", TOKENS, "--keep", "last",
                                          "--eval-every", "1")))
    assert summary["kept"] == "last"
    assert (last / "checkpoint-2" / "adapter_model.safetensors").read_bytes() == \
        (last / "adapter_model.safetensors").read_bytes()
    # From a trained cartridge, Adam steps of about 5 per element (far beyond its scale) only make it worse.
    best = tmp_path / "best"
    summary = last_json(run(train_command(dataset, best, "--init", study[0], "--lr", "5", "--eval-every", "1")))
    assert summary["kept"] == "best" and summary["best_by"] == "heldout_kl" and summary["best_step"] == 0, summary
    assert torch.equal(embeddings(best), embeddings(study[0]))
    printed = [arg for arg in train_command(dataset, tmp_path / "printed", "--init", study[0], "--lr", "5")
               if arg != "--json"]
    result = run(printed)
    assert "lowest held-out KL" in result.stdout and "at step 0" in result.stdout, result.stdout


def test_study_default_init_is_attention_matching_with_the_system_turn_framing(tmp_path):
    """With the system_turn framing and a chat template, `study` starts from `init --method
    attention-matching`, chunk by chunk for a corpus longer than the model's context (1024 for the tiny
    model); with the new_chat framing from the first p tokens (tokenized plainly). A learning rate of 1e-9
    leaves the trained rows at their initial values (to ~1e-8), so every row is compared."""
    short = tmp_path / "short.txt"
    short.write_text(CORPUS.read_text(encoding="utf-8")[:1500], encoding="utf-8")
    cases = ((short, [], ["--method", "attention-matching"]),
             (CORPUS, [], ["--method", "attention-matching"]),
             (short, ["--framing", "new_chat"], ["--method", "first", "--no-chat-template", "--framing", "new_chat"]))
    for index, (corpus, study_extra, init_extra) in enumerate(cases):
        out = tmp_path / f"cartridge-{index}"
        command = study_command(out, replace={"--steps": "2", "--lr": "1e-9"}, extra=study_extra)
        at = command.index("--init")
        command = command[:at] + command[at + 2:]  # no --init: the default
        command[command.index("--corpus") + 1] = corpus
        run(command)
        expected = tmp_path / f"expected-{index}"
        summary = json.loads(run([BIN, "init", "--model", MODEL, "--text-file", corpus, "--tokens", TOKENS,
                                  *init_extra, "--out", expected, "--device", "cpu", "-q", "--json"]).stdout)
        if corpus == CORPUS:
            assert summary["chunks"] >= 2, summary  # longer than the context
        difference = (embeddings(out) - embeddings(expected)).abs().max().item()
        assert difference <= 1e-5, (corpus, init_extra, difference)
    # What the comparison can tell apart: the two initialisations of the same text differ.
    assert (embeddings(tmp_path / "expected-0") - embeddings(tmp_path / "expected-2")).abs().max().item() > 1e-2


def test_study_json_summary(study, tmp_path):
    # A run of its own (with --json), so the summary describes a run that trained.
    out = tmp_path / "cartridge"
    summary = last_json(run(study_command(out, extra=["--json"])))
    assert summary["steps"] == STEPS and summary["conversations"] == SAMPLES
    assert summary["interrupted"] is False
    assert pathlib.Path(summary["adapter"]) == out and pathlib.Path(summary["dataset"]) == out / "dataset.jsonl"
    rows = losses(out)
    assert math.isclose(summary["final_loss"], float(rows[STEPS][0]), rel_tol=1e-6)
    assert math.isclose(summary["final_heldout_kl"], float(rows[STEPS][1]), rel_tol=1e-6)
    assert math.isclose(summary["initial_heldout_kl"], float(rows[0][1]), rel_tol=1e-6)
    # Same command, same seed: the same run as the fixture's.
    assert folder_bytes(out)["adapter_model.safetensors"] == study[2]["adapter_model.safetensors"]


def test_study_with_validation_questions_keeps_the_best_adapter_and_refuses_to_switch_them(study, tmp_path):
    from peft import PeftModel

    questions = tmp_path / "qa.jsonl"
    questions.write_text(json.dumps({"question": "Who founded Varnholm?", "answer": "Ottilie Brask, in 1643."}) + "\n")
    out = tmp_path / "cartridge"
    out.mkdir()
    shutil.copy(study[0] / "dataset.jsonl", out / "dataset.jsonl")  # the fixture's conversations: no synthesis
    summary = last_json(run(study_command(out, extra=["--json", "--validation-qa", str(questions)])))
    best = json.loads((out / "best" / "best_validation.json").read_text())
    assert summary["best_adapter"] == str(out / "best") and summary["best_step"] == best["step"]
    recorded = {int(row.split(",")[0]): float(row.split(",")[6]) for row in loss_rows(out).values() if row.split(",")[6]}
    assert sorted(recorded) == list(range(0, STEPS + 1, 2))  # every --eval-every 2 steps, and the initialisation
    assert best["step"] == min(recorded, key=lambda step: (recorded[step], step))
    assert math.isclose(summary["best_validation_answer_nll"], recorded[best["step"]], rel_tol=1e-9)
    # The last step's adapter is the one trained without validation questions: they only watch (and choose).
    last = f"checkpoint-{STEPS}/adapter_model.safetensors"
    assert folder_bytes(out)[last] == study[2][last]
    assert summary["kept"] == "best" and summary["best_by"] == "validation_answer_nll"
    assert (out / "adapter_model.safetensors").read_bytes() == (out / "best" / "adapter_model.safetensors").read_bytes()
    peft_model = PeftModel.from_pretrained(hf_model(), str(out / "best"))
    assert torch.equal(peft_model.prompt_encoder["default"].weight.detach(), embeddings(out / "best"))
    # Continuing with other questions (or none) would mix two choices of "best": one line, nothing changed.
    before = folder_bytes(out)
    result = run(study_command(out, replace={"--steps": str(STEPS + 2)}), expect=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "validation_questions_sha256" in errors[0], result.stderr
    assert folder_bytes(out) == before


def test_rerunning_a_finished_study_leaves_it_alone(study, tmp_path):
    out = copy_of(study, tmp_path)
    before = folder_bytes(out)
    summary = last_json(run(study_command(out, extra=["--json"])))
    assert summary["steps"] == STEPS and summary["conversations"] == SAMPLES and not summary["interrupted"]
    after = folder_bytes(out)
    assert sorted(after) == sorted(before)
    for name in before:
        assert after[name] == before[name], name


def as_written_before_dataset_version_2(out):
    """Rewrites a finished study folder as a build before question targets left it: a version 1 dataset
    (answer targets only, no answer_start, generator revision 1) and checkpoints without "distill"."""
    lines = (out / "dataset.jsonl").read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    header["version"] = 1
    header["settings"]["generator"] = "cartridge.cpp self-study 1"
    conversations = []
    for line in lines[1:]:
        c = json.loads(line)
        question_rows = c.pop("answer_start") - c["target_start"]
        c["target_start"] += question_rows
        c["target_ids"] = c["target_ids"][question_rows:]
        c["target_logprobs"] = c["target_logprobs"][question_rows:]
        conversations.append(json.dumps(c))
    (out / "dataset.jsonl").write_text("\n".join([json.dumps(header)] + conversations) + "\n", encoding="utf-8")
    for state_path in out.glob("checkpoint-*/trainer_state.json"):
        state = json.loads(state_path.read_text())
        del state["settings"]["distill"]
        state["settings"]["dataset_settings"]["generator"] = "cartridge.cpp self-study 1"
        state_path.write_text(json.dumps(state))


def test_a_study_folder_from_before_question_targets_still_reruns_and_continues(study, tmp_path):
    out = copy_of(study, tmp_path)
    as_written_before_dataset_version_2(out)
    before = folder_bytes(out)
    # The README's main command reruns `study` on its folder: a finished old one is left alone (its
    # checkpoint's trainer_state.json may be written again, now naming "distill") ...
    summary = last_json(run(study_command(out, extra=["--json"])))
    assert summary["steps"] == STEPS and summary["conversations"] == SAMPLES
    after = folder_bytes(out)
    assert sorted(after) == sorted(before)
    for name in before:
        if not name.endswith("trainer_state.json"):
            assert after[name] == before[name], name
    # ... and more steps continue it on its answer targets.
    summary = last_json(run(study_command(out, replace={"--steps": str(STEPS + 2)}, extra=["--json"])))
    assert summary["steps"] == STEPS + 2
    assert (out / "dataset.jsonl").read_bytes() == before["dataset.jsonl"]


def test_another_sample_count_is_refused_before_synthesis(study, tmp_path):
    out = copy_of(study, tmp_path)
    before = folder_bytes(out)
    result = run(study_command(out, replace={"--samples": str(SAMPLES + 2)}), expect=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    # Refused before synthesizing anything: the dataset (and everything else) is as it was.
    after = folder_bytes(out)
    assert after["dataset.jsonl"] == before["dataset.jsonl"], "the dataset changed before the refusal: " + errors[0]
    assert after == before
    # The message names the option the user changed.
    assert "--samples" in errors[0], errors[0]


def test_raising_steps_continues_from_the_checkpoint(study, tmp_path):
    more = STEPS + 2
    out = copy_of(study, tmp_path)
    before_rows = loss_rows(out)
    dataset = (out / "dataset.jsonl").read_bytes()
    summary = last_json(run(study_command(out, replace={"--steps": str(more)}, extra=["--json"])))
    assert summary["steps"] == more and summary["conversations"] == SAMPLES
    assert (out / "dataset.jsonl").read_bytes() == dataset
    assert checkpoint_steps(out)[-1] == more
    # Steps 0..STEPS are the finished run's, as recorded then (not trained again).
    after_rows = loss_rows(out)
    assert {step: row for step, row in after_rows.items() if step <= STEPS} == before_rows
    assert sorted(step for step, (loss, _) in losses(out).items() if loss) == list(range(1, more + 1))
    # And it ends where a run of `more` steps from scratch ends.
    straight = tmp_path / "straight"
    reference = last_json(run(study_command(straight, replace={"--steps": str(more)}, extra=["--json"])))
    assert (straight / "dataset.jsonl").read_bytes() == dataset
    assert summary["final_loss"] == reference["final_loss"]
    assert summary["final_heldout_kl"] == reference["final_heldout_kl"]
    assert losses(out) == losses(straight)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name


def train_command(dataset, out, *extra):
    return [BIN, "train", "--model", MODEL, "--dataset", dataset, "--out", out, "--steps", "2", "--batch-size", "2",
            "--seed", "4", "--device", "cpu", "--dtype", "fp32", "--json", "-q", *extra]


def test_train_init_text_starts_from_peft_text_init(study, tmp_path):
    dataset = study[0] / "dataset.jsonl"
    frozen = 2
    expected = peft_text_init(TOKENS, frozen)
    # --lr must be > 0; at lr 1e-30 an Adam step moves a row by at most ~1e-30, so the adapter written after
    # one step is the initial cartridge (within far less than the tolerance).
    still = tmp_path / "still"
    summary = last_json(run(train_command(dataset, still, "--corpus", CORPUS, "--tokens", TOKENS, "--frozen", frozen,
                                          "--lr", "1e-30")))
    assert summary["steps"] == 2
    config = adapter_config(still)
    assert config["num_virtual_tokens"] == TOKENS and config["num_frozen_tokens"] == frozen
    initial = embeddings(still)
    assert initial.shape == expected.shape
    difference = (initial - expected).abs().max().item()
    print(f"\ntrain --init text vs PEFT initialize_kv_prefix_from_text: max |difference| {difference:.2e}")
    assert difference <= 1e-5
    # `--init text` is the default; at the usual lr the trainable rows move and the frozen rows do not.
    trained = tmp_path / "trained"
    run(train_command(dataset, trained, "--corpus", CORPUS, "--tokens", TOKENS, "--frozen", frozen))
    moved = embeddings(trained)
    assert torch.equal(moved[:frozen], initial[:frozen])
    assert (moved[:frozen] - expected[:frozen]).abs().max().item() <= 1e-5
    assert (moved[frozen:] - expected[frozen:]).abs().max().item() > 1e-4


def test_train_init_adapter_keeps_its_size_and_frozen_rows(study, tmp_path):
    from peft import CartridgeConfig, get_peft_model, initialize_kv_prefix_from_text

    p, frozen = 10, 3  # neither the default p (from the corpus) nor the default frozen count (1)
    peft_model = get_peft_model(hf_model(), CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=p,
                                                            num_frozen_tokens=frozen))
    initialize_kv_prefix_from_text(peft_model, hf_tokenizer(), text=CORPUS.read_text(encoding="utf-8")[500:],
                                   use_chat_template=False)
    source = tmp_path / "peft_adapter"
    peft_model.save_pretrained(str(source))
    source_rows = embeddings(source)

    out = tmp_path / "continued"
    summary = last_json(run(train_command(study[0] / "dataset.jsonl", out, "--init", source)))
    assert summary["steps"] == 2
    config = adapter_config(out)
    assert config["num_virtual_tokens"] == p and config["num_frozen_tokens"] == frozen
    rows = embeddings(out)
    assert rows.shape == source_rows.shape
    assert torch.equal(rows[:frozen], source_rows[:frozen])
    assert (rows[frozen:] - source_rows[frozen:]).abs().max().item() > 1e-4  # it trained from there
    # A --tokens that contradicts the adapter is refused in one line.
    result = run(train_command(study[0] / "dataset.jsonl", tmp_path / "refused", "--init", source, "--tokens", p + 1),
                 expect=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--tokens" in errors[0], result.stderr


def peft_distillation_loss(peft_model, conversations, first_target):
    """Mean over targets of -sum_k p_teacher(k) log p_student(k), the student being the PEFT model with its
    cartridge and the conversation's tokens; targets from first_target(conversation) on."""
    total, count = 0.0, 0
    for c in conversations:
        ids = torch.tensor([c["input_ids"][:-1]])
        with torch.no_grad():
            log_q = torch.log_softmax(peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float(), -1)
        skipped = first_target(c) - c["target_start"]
        for j in range(skipped, len(c["input_ids"]) - c["target_start"]):
            position = c["target_start"] + j - 1
            teacher_ids = torch.tensor(c["target_ids"][j])
            teacher_p = torch.tensor(c["target_logprobs"][j]).exp()
            total += -(teacher_p * log_q[position, teacher_ids]).sum().item()
            count += 1
    return total / count


def test_first_step_loss_covers_question_and_answer_tokens_as_peft_computes_it(study, tmp_path):
    """The step-1 loss over the whole dataset (one batch, nothing held out) from a PEFT-saved adapter equals
    the loss computed with PEFT over the answer's targets (--distill answer, the default) or over the
    question's and the answer's (--distill conversation)."""
    from peft import CartridgeConfig, PeftModel, get_peft_model, initialize_kv_prefix_from_text

    peft_model = get_peft_model(hf_model(), CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=10,
                                                            num_frozen_tokens=1))
    initialize_kv_prefix_from_text(peft_model, hf_tokenizer(), text=CORPUS.read_text(encoding="utf-8"),
                                   use_chat_template=False)
    source = tmp_path / "peft_adapter"
    peft_model.save_pretrained(str(source))
    reference_model = PeftModel.from_pretrained(hf_model(), str(source)).eval()
    dataset = study[0] / "dataset.jsonl"
    conversations = [json.loads(line) for line in dataset.read_text(encoding="utf-8").splitlines()[1:]]
    assert all(c["target_start"] < c["answer_start"] for c in conversations)
    for distill, first_target in (("conversation", lambda c: c["target_start"]),
                                  ("answer", lambda c: c["answer_start"])):
        out = tmp_path / distill
        run([BIN, "train", "--model", MODEL, "--dataset", dataset, "--out", out, "--init", source, "--steps", "1",
             "--batch-size", len(conversations), "--eval-fraction", "0", "--distill", distill, "--seed", "4",
             "--device", "cpu", "--dtype", "fp32", "--json", "-q"])
        ours = float(losses(out)[1][0])
        reference = peft_distillation_loss(reference_model, conversations, first_target)
        print(f"\n--distill {distill}: step-1 loss {ours:.6f}, PEFT reference {reference:.6f}")
        assert abs(ours - reference) <= 1e-5 * max(1.0, abs(reference))
    # The two really differ (the question's targets change the loss).
    assert losses(tmp_path / "conversation")[1][0] != losses(tmp_path / "answer")[1][0]
    result = run([BIN, "train", "--model", MODEL, "--dataset", dataset, "--out", tmp_path / "bad", "--distill",
                  "questions", "-q"], expect=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "conversation" in errors[0] and "answer" in errors[0], result.stderr
    assert not (tmp_path / "bad").exists()


def test_study_on_a_gguf_decodes_the_conversations_with_its_blocks_kept_as_stored(tmp_path):
    """The default GGUF: synthesis decodes with the file's quantised blocks (float32 activations: fp32's
    results up to rounding, model_test's SmolLM2QuantizedTest), training with the dense model (in bf16 where
    the CPU has bf16 units). The teacher's
    recorded top-k log-probabilities then equal those of `--weights dense` (every matrix dequantised, the
    path held to transformers by model_test) wherever the two runs decoded the same tokens."""
    gguf = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.is_file(), f"missing {gguf} (run scripts/setup.sh)"
    small = {"--tokens": "16", "--samples": "2", "--batch": "2", "--steps": "1", "--batch-size": "2",
             "--eval-every": "0", "--max-question-tokens": "8", "--max-answer-tokens": "8"}
    cpu_flags = pathlib.Path("/proc/cpuinfo").read_text()
    bf16_units = " avx512_bf16" in cpu_flags or " amx_bf16" in cpu_flags
    runs = {}
    for weights in ("auto", "dense"):
        out = tmp_path / weights
        args = [BIN, "study", "--model", gguf, "--corpus", CORPUS, "--out", out, "--device", "cpu", "--init", "text",
                "--min-chunk", "60", "--max-chunk", "200", "--seed", "3", "--weights", weights,
                "--dtype", "auto" if weights == "auto" else "fp32"]
        for option, value in small.items():
            args += [option, value]
        result = run(args)
        assert ("kept as stored" in result.stderr) == (weights == "auto"), result.stderr
        # --dtype auto trains in bf16 exactly where the CPU has bf16 units.
        assert ("frozen model runs in bf16" in result.stderr) == (weights == "auto" and bf16_units), result.stderr
        lines = (out / "dataset.jsonl").read_text(encoding="utf-8").split("\n")[1:-1]
        runs[weights] = [json.loads(line) for line in lines]
    compared = 0
    for stored, dense in zip(runs["auto"], runs["dense"]):
        assert stored["target_start"] == dense["target_start"]
        same = 0  # leading tokens both runs hold (prompt, then what each decoded)
        while (same < min(len(stored["input_ids"]), len(dense["input_ids"]))
               and stored["input_ids"][same] == dense["input_ids"][same]):
            same += 1
        # Target row i is the teacher's top-k after input_ids[: target_start + i + 1].
        for row in range(max(0, same - stored["target_start"])):
            stored_top = dict(zip(stored["target_ids"][row], stored["target_logprobs"][row]))
            dense_top = dict(zip(dense["target_ids"][row], dense["target_logprobs"][row]))
            common = stored_top.keys() & dense_top.keys()
            assert len(common) >= 15  # the same top-k up to ties at its edge
            for token in common:
                assert stored_top[token] == pytest.approx(dense_top[token], abs=2e-3)
            compared += 1
    assert compared >= 8
