"""The `cartridge` CLI's cartridges against the real PEFT, in the same run.

- `cartridge init` writes an adapter that PeftModel.from_pretrained loads on the same base model (a tiny
  random Llama and Qwen3 made by tests/fixtures/make_cartridge.py, and the default SmolLM2 GGUF loaded by
  transformers), and `cartridge generate --cartridge` gives PEFT's logits (1e-4 fp32; 1e-3 for the GGUF)
  and the same greedy 32 tokens (--ignore-eos: exactly 32 on both sides, through end-of-sequence);
- an F16-stored adapter (fixture peft_f16) gives PEFT's outputs, and `--cartridge A --cartridge B` gives
  what PEFT gives for compose_cartridge_adapters([A, B]);
- its prompt_embeddings equal PEFT's own initialize_kv_prefix_from_text (plain and chat template);
- `cartridge compose` is byte-identical to peft.compose_cartridge_adapters, and refuses (exit 1, one line,
  nothing written) each config field difference that PEFT refuses;
- a model with the same shapes but other weights gets a fingerprint warning from generate and inspect;
- `cartridge inspect`, and one-line errors with a non-zero exit and nothing written on bad input.

Needs CARTRIDGE_BIN (the built CLI) and CARTRIDGE_FIXTURES (make_all.py output).
"""
import json
import os
import pathlib
import shutil
import subprocess
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CARTRIDGE_BIN", str(REPO / "build" / "cartridge"))
FIXTURES = pathlib.Path(os.environ.get("CARTRIDGE_FIXTURES", str(REPO / "build" / "fixtures"))) / "cartridge"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GREEDY_TOKENS = 32
PROMPT = "Question: what does a cartridge stand in for? Answer:"
DOCUMENT = (
    "The Kalamang language is spoken by fewer than two hundred people on the Karas islands of Indonesia. "
    "A grammar of the language, written by Eline Visser, describes its sounds, words and sentences. "
    "Cartridges compress such a long book into a small key-value cache that a model reads before every "
    "question, so that the book itself no longer needs to be in the context window. "
) * 3


def run_cli(*args, check=True):
    result = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"cartridge {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr}")
    return result


def peft_greedy(peft_model, prompt_ids, steps):
    """Greedy tokens through PeftModel.forward (PEFT 0.21.2's generate() ignores the cartridge under
    transformers 5: see tests/fixtures/make_cartridge.py). Exactly `steps` tokens, through end-of-sequence
    too, as our CLI's --ignore-eos does."""
    sequence = list(prompt_ids)
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.tensor([sequence])
            sequence.append(int(peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()))
    return sequence[len(prompt_ids):]


def compare_with_peft(base_model, tokenizer, model_arg, adapter, tmp_path, tolerance, cartridges=None):
    """Loads `adapter` in PEFT on `base_model` and compares logits and greedy tokens with our CLI given
    `--cartridge` for each of `cartridges` (default: `adapter` alone). Returns (the unwrapped base model,
    PEFT's greedy tokens)."""
    from peft import PeftModel

    cartridges = [adapter] if cartridges is None else cartridges
    peft_model = PeftModel.from_pretrained(base_model, str(adapter))
    peft_model.eval()
    stored = load_file(str(adapter / "adapter_model.safetensors"))["prompt_embeddings"]
    # PEFT's parameters are F32 whatever the file stores (F16/BF16 upcast exactly).
    assert peft_model.prompt_encoder["default"].weight.dtype == torch.float32
    assert torch.equal(peft_model.prompt_encoder["default"].weight.detach(), stored.float())

    logits_path = tmp_path / "logits.safetensors"
    cartridge_args = [arg for cartridge in cartridges for arg in ("--cartridge", cartridge)]
    result = run_cli("generate", "--model", model_arg, *cartridge_args, "--prompt", PROMPT,
                     "--max-new-tokens", GREEDY_TOKENS, "--ignore-eos", "--temperature", 0,
                     "--logits-out", logits_path, "--json", "-q", "--device", "cpu")
    assert "warning:" not in result.stderr, result.stderr
    ours = json.loads(result.stdout.strip().splitlines()[-1])
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    assert ours["prompt_tokens"] == len(prompt_ids)
    assert ours["cartridge_tokens"] == peft_model.peft_config["default"].num_virtual_tokens
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        theirs = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
    our_logits = load_file(str(logits_path))["logits"]
    assert our_logits.shape == theirs.shape
    difference = (our_logits - theirs).abs().max().item()
    name = "+".join(pathlib.Path(str(c)).name for c in cartridges)
    print(f"\n{name} on {pathlib.Path(str(model_arg)).name}: max |logit difference| vs PEFT {difference:.2e}")
    assert difference <= tolerance, f"max |logit difference| {difference}"
    expected = peft_greedy(peft_model, prompt_ids, GREEDY_TOKENS)
    assert len(expected) == GREEDY_TOKENS
    assert len(ours["token_ids"]) == GREEDY_TOKENS and ours["completion_tokens"] == GREEDY_TOKENS, ours
    assert ours["finish_reason"] == "length", ours
    eos_count = expected.count(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else 0
    print(f"greedy: {GREEDY_TOKENS} tokens on both sides ({eos_count} end-of-sequence among PEFT's), "
          f"first difference at {next((i for i, (a, b) in enumerate(zip(ours['token_ids'], expected)) if a != b), None)}")
    assert ours["token_ids"] == expected
    return peft_model.get_base_model(), expected


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny(request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = FIXTURES / request.param / "model"
    assert folder.is_dir(), f"missing fixture {folder} (run tests/fixtures/make_all.py)"
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return folder, model, AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("chat_template", [True, False])
def test_init_on_tiny_model_loads_in_peft_with_same_outputs(tiny, tmp_path, chat_template):
    from peft import CartridgeConfig, get_peft_model, initialize_kv_prefix_from_text

    folder, model, tokenizer = tiny
    text_file = tmp_path / "doc.txt"
    text_file.write_text(DOCUMENT)
    adapter = tmp_path / "adapter"
    result = run_cli("init", "--model", folder, "--text-file", text_file, "--tokens", 24, "--frozen", 2, "--out",
                     adapter, "--json", "-q", "--device", "cpu",
                     "--chat-template" if chat_template else "--no-chat-template")
    summary = json.loads(result.stdout)
    assert summary["num_virtual_tokens"] == 24 and summary["initialization"] == (
        "chat-template" if chat_template else "plain")
    assert (adapter / "cartridge_fingerprint.json").is_file()

    model, _ = compare_with_peft(model, tokenizer, folder, adapter, tmp_path, 1e-4)

    # PEFT's own initialisation from the same text gives the same prompt_embeddings.
    peft_model = get_peft_model(model, CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=24,
                                                       num_frozen_tokens=2))
    theirs = initialize_kv_prefix_from_text(peft_model, tokenizer, text=DOCUMENT, use_chat_template=chat_template)
    ours = load_file(str(adapter / "adapter_model.safetensors"))["prompt_embeddings"]
    print(f"tiny text init vs PEFT: max |difference| {(ours - theirs.float()).abs().max().item():.2e}")
    assert (ours - theirs.float()).abs().max().item() <= 1e-5
    # And the same adapter_config.json, up to the base model's name (PEFT stores the folder it loaded).
    peft_dir = tmp_path / "peft_saved"
    peft_model.save_pretrained(str(peft_dir))
    ours_config = json.loads((adapter / "adapter_config.json").read_text())
    theirs_config = json.loads((peft_dir / "adapter_config.json").read_text())
    ours_config.pop("base_model_name_or_path")
    theirs_config.pop("base_model_name_or_path")
    assert ours_config == theirs_config


def template_parts(tokenizer):
    """The chat template split around a system message's content and a user message's content:
    (before the document, between document and question, after the question with the generation prompt)."""
    document, question = "\u2063DOCUMENT\u2063", "\u2063QUESTION\u2063"
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": document},
                                              {"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
    i, j = rendered.index(document), rendered.index(question)
    return rendered[:i], rendered[i + len(document):j], rendered[j + len(question):]


def attention_matching_init(folder, tmp_path, document):
    """`init --method attention-matching` (p = 24, one frozen row) of `document` on the tiny model: (the adapter
    folder, init's JSON summary)."""
    text_file = tmp_path / "doc.txt"
    text_file.write_text(document)
    adapter = tmp_path / "adapter"
    result = run_cli("init", "--model", folder, "--text-file", text_file, "--tokens", 24, "--frozen", 1,
                     "--method", "attention-matching", "--out", adapter, "--json", "-q", "--device", "cpu")
    return adapter, json.loads(result.stdout)


def repeat_request_parts(tokenizer):
    """(encode, the system turn's opening, the repeat request's ids as asked after it) for the reference."""
    before, between, after = template_parts(tokenizer)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode, before, encode(between + "Repeat the previous context verbatim." + after)


def assert_equals_reference(adapter, theirs, label):
    ours = load_file(str(adapter / "adapter_model.safetensors"))["prompt_embeddings"]
    difference = (ours - theirs).abs().max().item()
    print(f"\n{label} vs the PyTorch reference: max |difference| {difference:.2e}, "
          f"max |value| {theirs.abs().max().item():.1f}")
    assert difference <= 1e-4 * max(1.0, theirs.abs().max().item())


def test_attention_matching_init_equals_the_reference_and_loads_in_peft(tiny, tmp_path):
    """`init --method attention-matching` equals the direct PyTorch implementation of
    tests/fixtures/attention_matching_reference.py on the same token ids (the document as the open system
    turn; the repeat request asked in that conversation, then the document), and PEFT gives our outputs."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    from attention_matching_reference import compact

    folder, model, tokenizer = tiny
    document = DOCUMENT[: len(DOCUMENT) // 3]  # one copy: the repetition must fit the tiny context (512)
    adapter, summary = attention_matching_init(folder, tmp_path, document)
    assert summary["initialization"] == "attention-matching" and summary["framing"] == "system_turn"

    encode, before, request_ids = repeat_request_parts(tokenizer)
    document_ids = encode(before + document)
    assert summary["text_tokens"] == len(document_ids)
    assert_equals_reference(adapter, compact(model, document_ids, request_ids + encode(document), 24, 1),
                            "attention matching")
    compare_with_peft(model, tokenizer, folder, adapter, tmp_path, 1e-4)


def test_attention_matching_of_a_document_longer_than_the_context(tiny, tmp_path):
    """A document longer than the tiny model's context (512) is compacted chunk by chunk, as the reference
    implementation does it from the plan docs/attention_matching.md states; PEFT gives our outputs."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "fixtures"))
    from attention_matching_reference import compact_chunks, plan_chunks

    folder, model, tokenizer = tiny
    document = DOCUMENT * 3
    adapter, summary = attention_matching_init(folder, tmp_path, document)

    encode, before, request_ids = repeat_request_parts(tokenizer)
    context = model.config.max_position_embeddings
    assert len(encode(before + document)) > context, "the document must be longer than the context"
    chunks = plan_chunks(encode(before), encode(document), request_ids, 24, context)
    assert len(chunks) >= 2 and summary["chunks"] == len(chunks), summary
    assert sum(rows for _, _, rows in chunks) == 24
    assert summary["text_tokens"] == sum(len(prefill) for prefill, _, _ in chunks)
    assert_equals_reference(adapter, compact_chunks(model, chunks, 1), f"{len(chunks)} chunks")
    compare_with_peft(model, tokenizer, folder, adapter, tmp_path, 1e-4)

    # --chunk-tokens cuts a document that fits into pieces too.
    short = tmp_path / "short.txt"
    short.write_text(DOCUMENT[: len(DOCUMENT) // 3])
    result = run_cli("init", "--model", folder, "--text-file", short, "--tokens", 24, "--method",
                     "attention-matching", "--chunk-tokens", 40, "--out", tmp_path / "pieces", "--json", "-q",
                     "--device", "cpu")
    pieces = plan_chunks(encode(before), encode(DOCUMENT[: len(DOCUMENT) // 3]), request_ids, 24, context, 40)
    assert json.loads(result.stdout)["chunks"] == len(pieces) >= 2


def test_attention_matching_refuses_what_it_cannot_do(tiny, tmp_path):
    folder, _, _ = tiny
    text_file = tmp_path / "doc.txt"
    text_file.write_text(DOCUMENT[:200])
    for extra, expected in ((["--tokens", 16, "--framing", "new_chat"], "system_turn"),
                            (["--tokens", 16, "--no-chat-template"], "chat template"),
                            (["--tokens", 400], "fewer than the cartridge"),
                            (["--tokens", 2, "--chunk-tokens", 16], "use a larger --tokens")):
        arguments = ["init", "--model", folder, "--text-file", text_file, "--method",
                     "attention-matching", "--out", tmp_path / "adapter", "-q", "--device", "cpu", *extra]
        result = run_cli(*arguments, check=False)
        assert result.returncode != 0 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "adapter").exists()


def test_init_on_default_gguf_loads_in_peft_with_same_outputs(tmp_path):
    from peft import CartridgeConfig, get_peft_model, initialize_kv_prefix_from_text
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = REPO / "models" / GGUF_NAME
    assert gguf.is_file(), "the default model is missing (scripts/setup.sh)"
    text_file = tmp_path / "doc.txt"
    text_file.write_text(DOCUMENT)
    adapter = tmp_path / "adapter"
    run_cli("init", "--model", gguf, "--text-file", text_file, "--tokens", 32, "--out", adapter, "-q",
            "--device", "cpu")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=GGUF_NAME)
    model, _ = compare_with_peft(model, tokenizer, gguf, adapter, tmp_path, 1e-3)

    peft_model = get_peft_model(model, CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=32))
    theirs = initialize_kv_prefix_from_text(peft_model, tokenizer, text=DOCUMENT)  # chat template, PEFT's default
    ours = load_file(str(adapter / "adapter_model.safetensors"))["prompt_embeddings"]
    # Keys/values are activations of a 30-layer model: compare relative to their scale.
    print(f"GGUF text init vs PEFT: max |difference| {(ours - theirs.float()).abs().max().item():.2e}, "
          f"max |value| {theirs.abs().max().item():.1f}")
    assert (ours - theirs.float()).abs().max().item() <= 1e-3 * max(1.0, theirs.abs().max().item())


def test_peft_trained_adapter_generates_as_in_peft(tiny, tmp_path):
    """An adapter trained in PEFT (fixture peft_trained) through our CLI gives PEFT's outputs."""
    folder, model, tokenizer = tiny
    compare_with_peft(model, tokenizer, folder, folder.parent / "peft_trained", tmp_path, 1e-4)


def test_f16_adapter_generates_as_in_peft(tiny, tmp_path):
    """An adapter stored as F16 (fixture peft_f16): PEFT upcasts it into its F32 parameters, so do we."""
    folder, model, tokenizer = tiny
    adapter = folder.parent / "peft_f16"
    assert adapter.is_dir(), f"missing fixture {adapter} (re-run tests/fixtures/make_cartridge.py)"
    assert load_file(str(adapter / "adapter_model.safetensors"))["prompt_embeddings"].dtype == torch.float16
    info = json.loads(run_cli("inspect", adapter, "--json", "--model", folder).stdout)
    assert info["stored_dtype"] == "F16"
    assert info["weights_file_bytes"] == (adapter / "adapter_model.safetensors").stat().st_size
    assert info["model_check"]["fits"] is True
    compare_with_peft(model, tokenizer, folder, adapter, tmp_path, 1e-4)


OTHER_DOCUMENT = "The quick brown fox jumps over the lazy dog. 0123456789 system user assistant\n" * 4


def test_two_cartridges_generate_as_peft_composition(tiny, tmp_path):
    """`generate --cartridge A --cartridge B` is PEFT loading compose_cartridge_adapters([A, B])."""
    from peft import compose_cartridge_adapters

    folder, model, tokenizer = tiny
    (tmp_path / "a.txt").write_text(DOCUMENT)
    (tmp_path / "b.txt").write_text(OTHER_DOCUMENT)
    run_cli("init", "--model", folder, "--text-file", tmp_path / "a.txt", "--tokens", 10, "--out", tmp_path / "a",
            "-q", "--device", "cpu")
    run_cli("init", "--model", folder, "--text-file", tmp_path / "b.txt", "--tokens", 6, "--frozen", 2,
            "--no-chat-template", "--out", tmp_path / "b", "-q", "--device", "cpu")
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))["prompt_embeddings"]
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))["prompt_embeddings"]
    assert a.shape[0] == 10 and b.shape[0] == 6 and not torch.equal(a[:6], b)
    compose_cartridge_adapters([str(tmp_path / "a"), str(tmp_path / "b")], output_path=str(tmp_path / "peft_ab"))
    peft_config = json.loads((tmp_path / "peft_ab" / "adapter_config.json").read_text())
    assert peft_config["num_virtual_tokens"] == 10 + 6 and peft_config["num_frozen_tokens"] == 1
    (tmp_path / "run").mkdir()
    compare_with_peft(model, tokenizer, folder, tmp_path / "peft_ab", tmp_path / "run", 1e-4,
                      cartridges=[tmp_path / "a", tmp_path / "b"])


def _edit_adapter(folder, field):
    """Edits a copy of a `cartridge init` adapter so that only `field` differs, each file consistent in itself
    (the tensor width stays 2 * num_layers * token_dim). Returns the new value written."""
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    weights_path = folder / "adapter_model.safetensors"
    tensor = load_file(str(weights_path))["prompt_embeddings"]
    name, _, variant = field.partition("=")
    if name == "num_layers":
        config["num_layers"] -= 1
        tensor = tensor[:, :2 * config["num_layers"] * config["token_dim"]]
    elif name == "num_attention_heads":  # same token_dim, so a different head_dim: the same width
        config["num_attention_heads"] *= 2
    elif name == "token_dim":  # half the head_dim, the same KV heads
        config["token_dim"] //= 2
        tensor = tensor[:, :2 * config["num_layers"] * config["token_dim"]]
    elif name in ("task_type", "num_transformer_submodules", "peft_type"):
        config[name] = None if variant == "null" else (int(variant) if variant.isdigit() else variant)
    else:
        raise AssertionError(field)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({"prompt_embeddings": tensor.contiguous()}, str(weights_path), metadata={"format": "pt"})
    assert tensor.shape[1] == 2 * config["num_layers"] * config["token_dim"]
    assert config["token_dim"] % config["num_attention_heads"] == 0
    return config[name]


COMPOSE_FIELDS = ["num_layers", "num_attention_heads", "token_dim", "task_type=SEQ_2_SEQ_LM", "task_type=null",
                  "num_transformer_submodules=2", "num_transformer_submodules=null", "peft_type=PREFIX_TUNING"]


@pytest.fixture(scope="module")
def compose_base(tmp_path_factory):
    """One `cartridge init` adapter on the tiny Llama (4 random rows), copied for each compose case."""
    base = tmp_path_factory.mktemp("compose") / "base"
    run_cli("init", "--model", FIXTURES / "llama" / "model", "--random", "--tokens", 4, "--out", base, "-q")
    return base


@pytest.mark.parametrize("field", COMPOSE_FIELDS)
def test_compose_refuses_what_peft_refuses(compose_base, tmp_path, field):
    """Exactly one field differs: PEFT's compose_cartridge_adapters raises, and `cartridge compose` exits 1
    with one `error: ` line and writes nothing, whichever adapter comes first."""
    from peft import compose_cartridge_adapters

    same = tmp_path / "same"
    edited = tmp_path / "edited"
    shutil.copytree(compose_base, same)
    shutil.copytree(compose_base, edited)
    value = _edit_adapter(edited, field)
    name = field.partition("=")[0]
    base_config = json.loads((compose_base / "adapter_config.json").read_text())
    edited_config = json.loads((edited / "adapter_config.json").read_text())
    assert [k for k in base_config if base_config[k] != edited_config[k]] == [name]
    print(f"\n{name}: {base_config[name]!r} -> {value!r}")

    # Control: the unedited copy composes in both.
    compose_cartridge_adapters([str(compose_base), str(same)], output_path=str(tmp_path / "peft_control"))
    run_cli("compose", compose_base, same, "--out", tmp_path / "ours_control")
    for file in ["adapter_config.json", "adapter_model.safetensors"]:
        assert (tmp_path / "ours_control" / file).read_bytes() == (tmp_path / "peft_control" / file).read_bytes()

    for order in [(compose_base, edited), (edited, compose_base)]:
        peft_out = tmp_path / "peft_out"
        with pytest.raises(Exception) as raised:
            compose_cartridge_adapters([str(p) for p in order], output_path=str(peft_out))
        print(f"PEFT [{order[0].name}, {order[1].name}]: {raised.type.__name__}: {raised.value}")
        assert not peft_out.exists()
        before = sorted(p.name for p in tmp_path.iterdir())
        result = run_cli("compose", *order, "--out", tmp_path / "ours_out", check=False)
        print(f"ours [{order[0].name}, {order[1].name}]: exit {result.returncode}: {result.stderr.strip()}")
        assert result.returncode == 1, (order, result.returncode, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert result.stdout == ""
        assert sorted(p.name for p in tmp_path.iterdir()) == before, "compose left something behind"
        # The message names what differs.
        assert (value if name == "peft_type" else name) in result.stderr, result.stderr


def test_compose_ignores_base_model_name_as_peft_does(compose_base, tmp_path):
    """base_model_name_or_path is not compared by PEFT (spec A4.4): both compose, byte-identically."""
    from peft import compose_cartridge_adapters

    other = tmp_path / "other"
    shutil.copytree(compose_base, other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/another-model"
    (other / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    compose_cartridge_adapters([str(compose_base), str(other)], output_path=str(tmp_path / "peft"))
    run_cli("compose", compose_base, other, "--out", tmp_path / "ours")
    for file in ["adapter_config.json", "adapter_model.safetensors"]:
        assert (tmp_path / "ours" / file).read_bytes() == (tmp_path / "peft" / file).read_bytes(), file


def copy_model_with_weights(original, copy, edit):
    """Copies a model folder and rewrites its model.safetensors as edit({name: tensor}) -> {name: tensor},
    with the same names, shapes, dtypes and metadata."""
    from safetensors import safe_open

    shutil.copytree(original, copy)
    weights = copy / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    edited = {key: value.contiguous() for key, value in edit(dict(tensors)).items()}
    assert {k: (t.shape, t.dtype) for k, t in edited.items()} == {k: (t.shape, t.dtype) for k, t in tensors.items()}
    save_file(edited, str(weights), metadata=metadata)
    with safe_open(str(weights), framework="pt") as handle:
        assert handle.metadata() == metadata
    assert (copy / "config.json").read_bytes() == (original / "config.json").read_bytes()
    return tensors, edited


def test_ignore_eos_generates_through_end_of_sequence(tmp_path):
    """A tiny Llama whose lm_head makes end-of-sequence win at some greedy step k: --ignore-eos gives PEFT's 32
    tokens through it; without the flag the CLI stops there with PEFT's tokens before it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = FIXTURES / "llama" / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(original))
    eos = tokenizer.eos_token_id
    assert eos is not None
    init = ["init", "--random", "--seed", 11, "--tokens", 4, "-q"]
    run_cli(*init, "--model", original, "--out", tmp_path / "probe")
    # PEFT's greedy on the original: the first k >= 3 whose token X is new (and has a positive logit).
    model = AutoModelForCausalLM.from_pretrained(str(original), dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(model, str(tmp_path / "probe")).eval()
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    sequence, chosen = list(prompt_ids), None
    with torch.no_grad():
        for step in range(GREEDY_TOKENS):
            ids = torch.tensor([sequence])
            logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
            token = int(logits.argmax())
            if step >= 3 and token not in sequence[len(prompt_ids):] and token != eos and logits[token] > 0.1:
                chosen = (step, token)
                break
            sequence.append(token)
    assert chosen is not None, "no usable greedy step on the tiny Llama"
    step, token = chosen

    # lm_head row of end-of-sequence := 1.05 x row of X: at step k its logit beats X's, all others unchanged.
    def edit(tensors):
        head = tensors["lm_head.weight"].clone()
        head[eos] = 1.05 * head[token]
        tensors["lm_head.weight"] = head
        return tensors

    copy = tmp_path / "eos_model"
    copy_model_with_weights(original, copy, edit)
    adapter = tmp_path / "adapter"
    run_cli(*init, "--model", copy, "--out", adapter)  # same seed: the same rows, the copy's fingerprint
    assert torch.equal(load_file(str(adapter / "adapter_model.safetensors"))["prompt_embeddings"],
                       load_file(str(tmp_path / "probe" / "adapter_model.safetensors"))["prompt_embeddings"])
    model = AutoModelForCausalLM.from_pretrained(str(copy), dtype=torch.float32).eval()
    (tmp_path / "run").mkdir()
    _, expected = compare_with_peft(model, tokenizer, copy, adapter, tmp_path / "run", 1e-4)
    print(f"end-of-sequence made to win at step {step}; PEFT's greedy has it at "
          f"{[i for i, t in enumerate(expected) if t == eos]}")
    assert eos in expected and expected.index(eos) <= step
    # Without --ignore-eos: PEFT's tokens up to (not including) the first end-of-sequence, finish "stop".
    result = run_cli("generate", "--model", copy, "--cartridge", adapter, "--prompt", PROMPT, "--max-new-tokens",
                     GREEDY_TOKENS, "--temperature", 0, "--json", "-q", "--device", "cpu")
    ours = json.loads(result.stdout.strip().splitlines()[-1])
    assert ours["token_ids"] == expected[:expected.index(eos)], (ours, expected)
    assert ours["finish_reason"] == "stop", ours


def test_fingerprint_warns_on_a_model_with_other_weights(tmp_path):
    """Same config, tokenizer and shapes, other weights: generate warns (and still runs), inspect says so."""
    original = FIXTURES / "llama" / "model"
    copy = tmp_path / "perturbed"
    generator = torch.Generator().manual_seed(0)

    def perturb(tensors):  # the final norm (which the fingerprint hashes) a little more than the rest
        return {key: (value + (0.05 if key == "model.norm.weight" else 0.01) *
                      torch.randn(value.shape, generator=generator)).to(value.dtype)
                for key, value in tensors.items()}

    tensors, perturbed = copy_model_with_weights(original, copy, perturb)
    assert not torch.equal(perturbed["model.norm.weight"].bfloat16(), tensors["model.norm.weight"].bfloat16())

    adapter = tmp_path / "adapter"
    run_cli("init", "--model", original, "--random", "--tokens", 4, "--out", adapter, "-q")
    generate = ["generate", "--cartridge", adapter, "--prompt", PROMPT, "--max-new-tokens", 2, "--temperature", 0,
                "-q", "--device", "cpu"]

    result = run_cli(*generate, "--model", copy)
    warning_lines = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    print(f"\ngenerate on the perturbed copy: {warning_lines}")
    assert len(warning_lines) == 1 and "different model" in warning_lines[0], result.stderr
    assert "weights" in warning_lines[0], warning_lines[0]
    result = run_cli(*generate, "--model", original)
    assert "warning:" not in result.stderr, result.stderr

    info = json.loads(run_cli("inspect", adapter, "--model", copy, "--json").stdout)
    print(f"inspect --model copy: model_check {info['model_check']}, warnings {info['warnings']}")
    assert info["model_check"]["fits"] is True
    assert info["model_check"]["fingerprint"] == "different model"
    assert len(info["warnings"]) == 1 and "different model" in info["warnings"][0]
    result = run_cli("inspect", adapter, "--model", copy)
    assert [line for line in result.stderr.splitlines() if line.startswith("warning:")], result.stderr
    info = json.loads(run_cli("inspect", adapter, "--model", original, "--json").stdout)
    assert info["model_check"]["fits"] is True and info["model_check"]["fingerprint"] == "same model"
    assert info["warnings"] == []
    result = run_cli("inspect", adapter, "--model", original)
    assert "warning:" not in result.stderr, result.stderr


def test_compose_is_byte_identical_to_peft(tmp_path):
    from peft import compose_cartridge_adapters

    folder = FIXTURES / "llama" / "model"
    text_file = tmp_path / "doc.txt"
    text_file.write_text(DOCUMENT)
    run_cli("init", "--model", folder, "--text-file", text_file, "--tokens", 8, "--out", tmp_path / "a", "-q")
    run_cli("init", "--model", folder, "--random", "--seed", 7, "--tokens", 5, "--frozen", 0, "--out",
            tmp_path / "b", "-q")
    run_cli("compose", tmp_path / "a", tmp_path / "b", FIXTURES / "llama" / "peft_random", "--out", tmp_path / "ours")
    compose_cartridge_adapters([str(tmp_path / "a"), str(tmp_path / "b"), str(FIXTURES / "llama" / "peft_random")],
                               output_path=str(tmp_path / "peft"))
    for name in ["adapter_config.json", "adapter_model.safetensors"]:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "peft" / name).read_bytes(), name
    # Our random init is PEFT's (torch.manual_seed(7) before get_peft_model).
    from peft import CartridgeConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    base = AutoModelForCausalLM.from_pretrained(str(folder))
    torch.manual_seed(7)
    peft_model = get_peft_model(base, CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, num_frozen_tokens=0))
    ours = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.equal(ours, peft_model.prompt_encoder["default"].weight.detach())


def test_inspect_reports_and_checks_the_model(tmp_path):
    folder = FIXTURES / "qwen3" / "model"
    run_cli("init", "--model", folder, "--random", "--tokens", 6, "--out", tmp_path / "c", "-q")
    info = json.loads(run_cli("inspect", tmp_path / "c", "--json", "--model", folder).stdout)
    assert info["num_virtual_tokens"] == 6 and info["num_frozen_tokens"] == 1
    assert info["num_layers"] == 3 and info["num_kv_heads"] == 2 and info["head_dim"] == 32
    assert info["shape"] == [6, 2 * 3 * 2 * 32]
    assert info["stored_dtype"] == "F32"
    assert info["weights_file_bytes"] == (tmp_path / "c" / "adapter_model.safetensors").stat().st_size
    assert info["model_check"]["fits"] is True and info["model_check"]["fingerprint"] == "same model"
    assert info["fingerprint"]["architecture"] == "qwen3"
    text = run_cli("inspect", tmp_path / "c").stdout
    assert "virtual tokens" in text and "6" in text
    # The qwen3 cartridge does not fit the llama model: one-line error, exit 1.
    result = run_cli("inspect", tmp_path / "c", "--model", FIXTURES / "llama" / "model", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "layers" in result.stderr


def test_errors_are_one_line_and_write_nothing(tmp_path):
    folder = FIXTURES / "llama" / "model"
    cases = [
        ("init", "--model", folder, "--text", "far too short", "--tokens", 64, "--out", tmp_path / "out", "-q"),
        ("init", "--model", tmp_path / "no-such-model", "--text", "x", "--tokens", 4, "--out", tmp_path / "out"),
        ("init", "--model", folder, "--text-file", tmp_path / "missing.txt", "--tokens", 4, "--out", tmp_path / "out"),
        ("init", "--model", folder, "--random", "--tokens", 4, "--frozen", 5, "--out", tmp_path / "out"),
        ("compose", FIXTURES / "llama" / "peft_plain", FIXTURES / "qwen3" / "peft_plain", "--out", tmp_path / "out"),
        ("generate", "--model", folder, "--cartridge", FIXTURES / "qwen3" / "peft_plain", "--prompt", "hi", "-q"),
        ("inspect", tmp_path / "nothing-here"),
    ]
    for args in cases:
        result = run_cli(*args, check=False)
        assert result.returncode == 1, (args, result.returncode, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (args, result.stderr)
        assert not (tmp_path / "out").exists(), args
    short = run_cli(*cases[0], check=False).stderr
    assert "tokens" in short and "64" in short
    # An existing --out is kept unless --force.
    run_cli("init", "--model", folder, "--random", "--tokens", 4, "--out", tmp_path / "kept", "-q")
    before = (tmp_path / "kept" / "adapter_model.safetensors").read_bytes()
    result = run_cli("init", "--model", folder, "--random", "--seed", 3, "--tokens", 4, "--out", tmp_path / "kept",
                     "-q", check=False)
    assert result.returncode == 1 and (tmp_path / "kept" / "adapter_model.safetensors").read_bytes() == before
    run_cli("init", "--model", folder, "--random", "--seed", 3, "--tokens", 4, "--out", tmp_path / "kept", "-q",
            "--force")
    assert (tmp_path / "kept" / "adapter_model.safetensors").read_bytes() != before


def test_damaged_and_hostile_inputs_are_refused_in_one_line(tmp_path):
    """Issue 20's data rules: a NaN or infinity in an adapter is refused on load (naming row and layer) by
    every command that reads one; --force replaces only a folder of what this tool writes; a directory or
    device as a text file, and a cartridge that fills the model's context, are refused."""
    folder = FIXTURES / "llama" / "model"

    def refused(*args, expected):
        result = run_cli(*args, check=False)
        assert result.returncode == 1, (args, result.returncode, result.stderr)
        # (train also warns that the fixture's dataset names another model: one error line after it)
        errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
        assert len(errors) == 1 and errors[0].startswith("error: "), (args, result.stderr)
        assert expected in errors[0], (args, result.stderr)

    good = tmp_path / "good"
    run_cli("init", "--model", folder, "--random", "--tokens", 4, "--out", good, "-q")
    width = load_file(str(good / "adapter_model.safetensors"))["prompt_embeddings"].shape[1]
    config = json.loads((good / "adapter_config.json").read_text())
    for bad_value, word in ((float("nan"), "NaN"), (float("inf"), "infinity")):
        damaged = tmp_path / f"damaged-{word}"
        shutil.copytree(good, damaged)
        rows = load_file(str(damaged / "adapter_model.safetensors"))["prompt_embeddings"]
        column = 2 * config["token_dim"] + config["token_dim"] + 1  # layer 1, values
        rows[2, column] = bad_value
        save_file({"prompt_embeddings": rows}, str(damaged / "adapter_model.safetensors"), metadata={"format": "pt"})
        expected = f"{word} in prompt_embeddings row 2, column {column} (layer 1 values)"
        refused("inspect", damaged, expected=expected)
        refused("generate", "--model", folder, "--cartridge", damaged, "--prompt", "hi", "-q", expected=expected)
        refused("compose", good, damaged, "--out", tmp_path / "composed", expected=expected)
        assert not (tmp_path / "composed").exists()
    assert width > column

    # --force replaces an adapter folder (also one PEFT saved, with its README.md), never other files.
    mine = tmp_path / "mine"
    shutil.copytree(good, mine)
    (mine / "README.md").write_text("model card\n")
    run_cli("init", "--model", folder, "--random", "--seed", 2, "--tokens", 4, "--out", mine, "--force", "-q")
    for intruder in ("notes.txt", "thesis"):
        other = tmp_path / f"other-{intruder}"
        shutil.copytree(good, other)
        if intruder == "thesis":
            (other / intruder).mkdir()
        else:
            (other / intruder).write_text("not the tool's\n")
        before = {path.name: path.stat().st_mtime_ns for path in other.iterdir()}
        refused("init", "--model", folder, "--random", "--tokens", 4, "--out", other, "--force", "-q",
                expected=f"holds {intruder}")
        refused("compose", good, good, "--out", other, "--force", expected=f"holds {intruder}")
        assert {path.name: path.stat().st_mtime_ns for path in other.iterdir()} == before
    # Training into a folder that holds a cartridge and no checkpoint would replace it: refused.
    dataset = pathlib.Path(os.environ.get("CARTRIDGE_FIXTURES", str(REPO / "build" / "fixtures"))) / "selfstudy"
    refused("train", "--model", dataset / "model", "--dataset", dataset / "dataset.jsonl", "--init", "random",
            "--tokens", 6, "--steps", 1, "--out", good, "-q", expected="no training checkpoint")

    # Not a regular file, and a cartridge that leaves no room for a prompt.
    refused("init", "--model", folder, "--text-file", tmp_path, "--tokens", 4, "--out", tmp_path / "x", "-q",
            expected="is a directory")
    refused("init", "--model", folder, "--text-file", "/dev/zero", "--tokens", 4, "--out", tmp_path / "x", "-q",
            expected="not a regular file")
    context = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    refused("init", "--model", folder, "--random", "--tokens", context, "--out", tmp_path / "x", "-q",
            expected="does not fit the model's context")
    assert not (tmp_path / "x").exists()


def test_dataset_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    fixtures = pathlib.Path(os.environ.get("CARTRIDGE_FIXTURES", str(REPO / "build" / "fixtures"))) / "selfstudy"
    vocabulary = json.loads((fixtures / "model" / "config.json").read_text())["vocab_size"]
    lines = (fixtures / "dataset.jsonl").read_text().splitlines()
    conversation = json.loads(lines[3])  # line 4 of the file: conversation 2
    key = next(key for key in conversation if key in ("target_ids", "top_ids", "teacher_ids"))
    ids = conversation[key]
    if isinstance(ids[0], list):
        ids[0][0] = vocabulary + 5
    else:
        ids[0] = vocabulary + 5
    lines[3] = json.dumps(conversation)
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text("\n".join(lines) + "\n")
    result = run_cli("train", "--model", fixtures / "model", "--dataset", dataset, "--init", "random", "--tokens", 6,
                     "--steps", 1, "--out", tmp_path / "out", "-q", check=False)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert f"dataset line 4 (conversation 2): token id {vocabulary + 5}" in errors[0], result.stderr
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    # `eval --dataset` scores held-out KL on the same conversations: refused the same way.
    result = run_cli("eval", "--model", fixtures / "model", "--dataset", dataset, "--eval-fraction", "0.5", "-q",
                     check=False)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert result.returncode == 1 and len(errors) == 1 and "dataset line 4" in errors[0], result.stderr


def test_command_line_mistakes_are_one_line_errors():
    cases = [((), "give a command"), (("frobnicate",), "unknown command 'frobnicate'"),
             (("init", "--tokens", "4"), "--out is required"),
             (("generate", "--prompt", "x", "--max-new-tokens", "abc"), "must be a number >= 0, got 'abc'"),
             (("train", "--dataset", "d", "--out", "o", "--steps", "0"), "must be > 0"),
             (("init", "--tokens", "4", "--out", "o", "--random", "--no-such-option"), "--no-such-option")]
    for args, expected in cases:
        result = run_cli(*args, check=False)
        assert result.returncode != 0, args
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (args, result.stderr)
        assert expected in result.stderr and len(result.stderr) < 300, (args, result.stderr)
    assert run_cli("init", "--help").returncode == 0


def test_help_has_an_example():
    for command in ["init", "compose", "inspect", "generate"]:
        result = run_cli(command, "--help")
        assert "Example:" in result.stdout, command
