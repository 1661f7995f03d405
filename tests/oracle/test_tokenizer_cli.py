"""`cartridge tokenize` against transformers' GGUF tokenizer, in the same run.

For the default SmolLM2 GGUF the ids (with and without special tokens) and pieces equal
AutoTokenizer.from_pretrained(models, gguf_file=...)(text)["input_ids"] / convert_ids_to_tokens, on strings
that cover scripts, emoji, whitespace runs, CRLF, code and special-token text; a missing model or file is a
one-line error with a non-zero exit. (The full >= 5,000-string comparison is tests/tokenizer/*_test.cc.)

Needs CARTRIDGE_BIN (the built CLI).
"""
import json
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CARTRIDGE_BIN", str(REPO / "build" / "cartridge"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF = REPO / "models" / GGUF_NAME

TEXTS = [
    "Hello world",
    " Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\r\n\treturn x ** 2  # squared\r\n",
    "Привет мир — שלום עולם — مرحبا بالعالم — नमस्ते दुनिया",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, e\u0301 combining, \u3000 ideographic space",
    "   leading and trailing spaces   \n\n\n",
    "<think>reasoning</think> <|endoftext|>",
]


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF_NAME)


def tokenize(tmp_path, text, *flags):
    text_file = tmp_path / "text.txt"
    text_file.write_bytes(text.encode("utf-8"))
    result = subprocess.run([BIN, "tokenize", "--model", str(GGUF), "--text-file", str(text_file), "--json", *flags],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("index", range(len(TEXTS)))
def test_ids_and_pieces_match_transformers(reference, tmp_path, index):
    text = TEXTS[index]
    ours = tokenize(tmp_path, text)
    assert ours["ids"] == reference(text)["input_ids"]
    assert ours["pieces"] == reference.convert_ids_to_tokens(ours["ids"])
    plain = tokenize(tmp_path, text, "--no-special-tokens")
    assert plain["ids"] == reference(text, add_special_tokens=False)["input_ids"]


def test_missing_model_is_a_one_line_error(tmp_path):
    result = subprocess.run([BIN, "tokenize", "--model", str(tmp_path / "nope.gguf"), "--text", "hi"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "nope.gguf" in lines[0]


def test_damaged_gguf_is_a_one_line_error(tmp_path):
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(GGUF.read_bytes()[:100_000])  # cut inside the tokenizer metadata
    result = subprocess.run([BIN, "tokenize", "--model", str(damaged), "--text", "hi"], capture_output=True, text=True)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "damaged.gguf" in lines[0]
