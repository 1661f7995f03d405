"""`cartridge synthesize` against transformers, on the tiny random Llama of tests/fixtures/make_synthesis.py.

- The teacher's top-20 log-probabilities recorded during generation equal transformers' full-vocabulary
  log-softmax of the teacher sequence (chunk in the system prompt, question, answer), rebuilt in Python
  from the dataset file alone with the HF tokenizer and chat template.
- The header's corpus hash and token count, and the student sequences, equal what hashlib and the HF
  tokenizer give.
- A run killed with SIGKILL mid-way, then rerun, leaves a file byte-identical to an uninterrupted run.

Needs CARTRIDGE_BIN (our binary) and CARTRIDGE_FIXTURES (written by tests/fixtures/make_all.py).
"""
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CARTRIDGE_BIN", str(ROOT / "build" / "cartridge"))
FIXTURES = pathlib.Path(os.environ.get("CARTRIDGE_FIXTURES", str(ROOT / "build" / "fixtures"))) / "synthesis"
MODEL = FIXTURES / "tiny_llama"
CORPUS = FIXTURES / "corpus.txt"
ARGS = ["--samples", "8", "--batch", "3", "--seed", "11", "--min-chunk", "60", "--max-chunk", "200",
        "--max-question-tokens", "12", "--max-answer-tokens", "24", "--description",
        "Records of a fictional harbour town.", "--quiet"]


def synthesize_command(out: pathlib.Path, extra=(), replace=None):
    args = list(ARGS)
    for option, value in (replace or {}).items():
        args[args.index(option) + 1] = value
    return [BIN, "synthesize", "--model", str(MODEL), "--corpus", str(CORPUS), "--out", str(out),
            "--device", "cpu", *args, *extra]


def synthesize(out: pathlib.Path, extra=(), replace=None):
    return subprocess.run(synthesize_command(out, extra, replace), capture_output=True, text=True, timeout=600)


def read_dataset(path: pathlib.Path):
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthesis")
    result = synthesize(out, ["--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["conversations"] == 8 and summary["written_conversations"] == 8
    return out / "dataset.jsonl"


def chat_ids(tokenizer, messages):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids)


def test_header_matches_hashlib_and_the_hf_tokenizer(dataset, hf):
    tokenizer, _ = hf
    header, conversations = read_dataset(dataset)
    corpus = CORPUS.read_bytes()
    assert header["format"] == "cartridge-selfstudy-dataset" and header["version"] == 2
    assert header["corpus_sha256"] == hashlib.sha256(corpus).hexdigest()
    assert header["corpus_tokens"] == len(tokenizer(corpus.decode("utf-8"), add_special_tokens=False)["input_ids"])
    assert header["seed"] == 11 and header["top_k"] == 20
    assert header["settings"]["description"] == "Records of a fictional harbour town."
    assert len(conversations) == 8 and [c["index"] for c in conversations] == list(range(8))


def after_document_ids(tokenizer, messages):
    """The system_turn framing (docs/framing.md) computed with transformers: the template's rendering of
    [system: DOCUMENT, *messages] after the document's text, tokenized without special tokens."""
    placeholder = "@@a document the cartridge stands for@@"
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": placeholder}, *messages],
                                             add_generation_prompt=True, tokenize=False)
    after = rendered[rendered.index(placeholder) + len(placeholder):]
    return tokenizer(after, add_special_tokens=False)["input_ids"]


def test_student_sequence_is_the_question_after_the_cartridge_then_the_answer(dataset, hf):
    tokenizer, _ = hf
    header, conversations = read_dataset(dataset)
    assert header["settings"]["student_framing"] == "system_turn"
    for c in conversations:
        # The question continues the conversation whose system turn the cartridge holds.
        prompt = after_document_ids(tokenizer, [{"role": "user", "content": c["question"]}])
        assert c["input_ids"][:c["answer_start"]] == prompt
        answer = c["input_ids"][c["answer_start"]:]
        # Targets from the second token on (the first follows the cartridge): the end of the system turn,
        # the question's turn, then every answer token.
        # The whole student prompt ends the teacher's prompt too, so all its tokens but the first have targets.
        assert c["target_start"] == 1
        assert len(c["target_ids"]) == len(c["input_ids"]) - c["target_start"] == len(c["target_logprobs"])
        # The final end-of-turn token is special, so skipping special tokens drops it.
        assert c["answer"] == tokenizer.decode(answer, skip_special_tokens=True)


def test_new_chat_framing_puts_the_question_alone_in_the_chat_template(tmp_path, hf):
    tokenizer, _ = hf
    result = synthesize(tmp_path, ["--framing", "new_chat"], replace={"--samples": "3"})
    assert result.returncode == 0, result.stderr
    header, conversations = read_dataset(tmp_path / "dataset.jsonl")
    assert header["settings"]["student_framing"] == "new_chat"
    for c in conversations:
        prompt = chat_ids(tokenizer, [{"role": "user", "content": c["question"]}])
        assert c["input_ids"][:c["answer_start"]] == prompt
        # Targets from the user turn on (the template's own system turn differs from the teacher's).
        assert 1 < c["target_start"] < c["answer_start"]


def check_recorded_top_k(c, settings, corpus_ids, tokenizer, model, greedy_from):
    """Every recorded target of conversation c equals transformers' log-softmax of the teacher sequence
    (chunk in the system prompt, question, answer); tokens from index greedy_from of the student sequence
    on are the teacher's greedy choices. Returns (question targets, answer targets) checked."""
    chunk = tokenizer.decode(corpus_ids[c["chunk_start"]:c["chunk_start"] + c["chunk_tokens"]])
    if settings["description"]:
        chunk = settings["description"] + "\n\n" + chunk
    system = settings["system_prompt"].replace("{chunk}", chunk)
    teacher = chat_ids(tokenizer, [{"role": "system", "content": system},
                                   {"role": "user", "content": c["question"]}])
    answer = c["input_ids"][c["answer_start"]:]
    sequence = teacher + answer
    # The student's tokens from the one before the first target on end the teacher's sequence too.
    offset = len(sequence) - len(c["input_ids"])
    assert c["input_ids"][c["target_start"] - 1:] == sequence[c["target_start"] - 1 + offset:]
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    checked_question = checked_answer = 0
    for j, token in enumerate(c["input_ids"][c["target_start"]:]):
        expected = log_probs[offset + c["target_start"] + j - 1]
        ids = torch.tensor(c["target_ids"][j])
        recorded = torch.tensor(c["target_logprobs"][j])
        # Our ids carry transformers' log-probabilities, and they are its top 20 values.
        torch.testing.assert_close(recorded, expected[ids], atol=1e-4, rtol=0)
        torch.testing.assert_close(recorded, expected.topk(20).values, atol=1e-4, rtol=0)
        if c["target_start"] + j >= greedy_from:
            # Generated greedily: its token is the most likely one (up to rounding).
            assert expected[token] >= expected.max() - 1e-4
        if c["target_start"] + j >= c["answer_start"]:
            checked_answer += 1
        else:
            checked_question += 1
    return checked_question, checked_answer


def test_recorded_top_k_equals_transformers_log_softmax(dataset, hf):
    tokenizer, model = hf
    header, conversations = read_dataset(dataset)
    corpus_ids = tokenizer(CORPUS.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    checked_answer = checked_question = 0
    for c in conversations:
        question, answer = check_recorded_top_k(c, header["settings"], corpus_ids, tokenizer, model,
                                                greedy_from=c["answer_start"])
        checked_question += question
        checked_answer += answer
    assert checked_answer > 50 and checked_question > 50


def test_quote_conversations_answer_with_the_passage_and_record_the_teacher_over_it(tmp_path, hf):
    """--seed-types quote: the question quotes a passage's first words, the answer is the passage (taken
    from the corpus, teacher-forced) then one greedy token of the teacher's; the teacher's recorded top-20
    over all of it equal transformers'. Mixed with generated questions in the same chunk groups."""
    tokenizer, model = hf
    result = synthesize(tmp_path, ["--seed-types", "quote", "question"], replace={"--samples": "6"})
    assert result.returncode == 0, result.stderr
    header, conversations = read_dataset(tmp_path / "dataset.jsonl")
    assert header["settings"]["seed_prompt_types"] == ["quote", "question"]
    corpus = CORPUS.read_text(encoding="utf-8")
    corpus_ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    kinds = [c["seed_type"] for c in conversations]
    assert "quote" in kinds and "question" in kinds, kinds
    for c in conversations:
        if c["seed_type"] != "quote":
            check_recorded_top_k(c, header["settings"], corpus_ids, tokenizer, model, greedy_from=c["answer_start"])
            continue
        chunk = tokenizer.decode(corpus_ids[c["chunk_start"]:c["chunk_start"] + c["chunk_tokens"]])
        # The answer is a passage of the chunk (max-answer-tokens of it) and the teacher's one token.
        answer_ids = c["input_ids"][c["answer_start"]:]
        passage = tokenizer.decode(answer_ids[:-1])
        assert 20 <= len(answer_ids) - 1 <= 26 and passage.strip() and passage in chunk, (passage, chunk)
        # The question quotes the passage's first words.
        quoted = c["question"][c["question"].index('"') + 1:c["question"].rindex('"')]
        assert quoted and passage.strip().startswith(quoted), (quoted, passage)
        question, answer = check_recorded_top_k(c, header["settings"], corpus_ids, tokenizer, model,
                                                greedy_from=len(c["input_ids"]) - 1)
        assert answer == len(answer_ids)


def test_killed_run_resumes_to_a_byte_identical_file(tmp_path):
    # 24 conversations in groups of 3, so that the kill lands mid-run even on a fast machine.
    more = {"--samples": "24"}
    reference = tmp_path / "reference"
    result = synthesize(reference, replace=more)
    assert result.returncode == 0, result.stderr
    expected = (reference / "dataset.jsonl").read_bytes()

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(synthesize_command(resumed, replace=more), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = resumed / "dataset.jsonl"
    deadline = time.time() + 300
    # Kill it once the header and at least two conversations are on disk.
    while time.time() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = path.read_bytes().count(b"\n") - 1
    assert 2 <= written < 24, f"the kill came too late ({written} conversations written)"
    result = synthesize(resumed, replace=more)
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == expected


def test_other_settings_on_an_existing_dataset_fail_with_one_line(tmp_path):
    assert synthesize(tmp_path).returncode == 0
    result = synthesize(tmp_path, replace={"--max-answer-tokens": "20"})
    assert result.returncode == 1
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert "max_answer_tokens 24 in the file vs 20 now" in message and "delete the file" in message


def test_chunk_placement_is_recorded_and_even_coverage_stays_in_the_corpus(tmp_path, dataset):
    header, _ = read_dataset(dataset)
    assert header["settings"]["chunk_placement"] == "uniform_start"  # the default, the paper's chunker
    result = synthesize(tmp_path, ["--chunk-placement", "even_coverage"], replace={"--batch": "1"})
    assert result.returncode == 0, result.stderr
    header, conversations = read_dataset(tmp_path / "dataset.jsonl")
    assert header["settings"]["chunk_placement"] == "even_coverage"
    assert len(conversations) == 8
    for conversation in conversations:
        assert conversation["chunk_start"] >= 0 and conversation["chunk_tokens"] >= 60
        assert conversation["chunk_start"] + conversation["chunk_tokens"] <= header["corpus_tokens"]
    # Another placement on the same folder is another dataset: refused like any other setting.
    result = synthesize(tmp_path, replace={"--batch": "1"})
    assert result.returncode == 1 and "chunk_placement" in result.stderr and "\n" not in result.stderr.strip()


def test_unknown_chunk_placement_is_refused_with_the_choices(tmp_path):
    result = synthesize(tmp_path, ["--chunk-placement", "middle"])
    assert result.returncode == 1
    message = result.stderr.strip()
    assert message.startswith("error: --chunk-placement") and "\n" not in message
    assert "uniform_start" in message and "even_coverage" in message
    assert not (tmp_path / "dataset.jsonl").exists()
