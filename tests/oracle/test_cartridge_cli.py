"""The `cartridge` CLI's cartridges against the real PEFT, in the same run.

- `cartridge init` writes an adapter that PeftModel.from_pretrained loads on the same base model (a tiny
  random Llama and Qwen3 made by tests/fixtures/make_cartridge.py, and the default SmolLM2 GGUF loaded by
  transformers), and `cartridge generate --cartridge` gives PEFT's logits (1e-4 fp32; 1e-3 for the GGUF)
  and the same greedy 32 tokens;
- its prompt_embeddings equal PEFT's own initialize_kv_prefix_from_text (plain and chat template);
- `cartridge compose` is byte-identical to peft.compose_cartridge_adapters;
- `cartridge inspect`, and one-line errors with a non-zero exit and nothing written on bad input.

Needs CARTRIDGE_BIN (the built CLI) and CARTRIDGE_FIXTURES (make_all.py output).
"""
import json
import os
import pathlib
import subprocess
import warnings

import pytest
import torch
from safetensors.torch import load_file

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


def peft_greedy(peft_model, prompt_ids, steps, eos_id):
    """Greedy tokens through PeftModel.forward (PEFT 0.21.2's generate() ignores the cartridge under
    transformers 5: see tests/fixtures/make_cartridge.py). Stops after `eos_id`, as our CLI does."""
    sequence = list(prompt_ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.tensor([sequence])
            token = int(peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax())
            if token == eos_id:
                break
            out.append(token)
            sequence.append(token)
    return out


def compare_with_peft(base_model, tokenizer, model_arg, adapter, tmp_path, tolerance):
    """Loads `adapter` in PEFT on `base_model` and compares logits and greedy tokens with our CLI."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base_model, str(adapter))
    peft_model.eval()
    ours_file = load_file(str(adapter / "adapter_model.safetensors"))["prompt_embeddings"]
    assert torch.equal(peft_model.prompt_encoder["default"].weight.detach(), ours_file)

    logits_path = tmp_path / "logits.safetensors"
    result = run_cli("generate", "--model", model_arg, "--cartridge", adapter, "--prompt", PROMPT,
                     "--max-new-tokens", GREEDY_TOKENS, "--temperature", 0, "--logits-out", logits_path,
                     "--json", "-q", "--device", "cpu")
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
    print(f"\n{adapter.name} on {pathlib.Path(str(model_arg)).name}: max |logit difference| vs PEFT {difference:.2e}")
    assert difference <= tolerance, f"max |logit difference| {difference}"
    expected = peft_greedy(peft_model, prompt_ids, GREEDY_TOKENS, tokenizer.eos_token_id)
    assert ours["token_ids"] == expected
    return peft_model.get_base_model()


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

    model = compare_with_peft(model, tokenizer, folder, adapter, tmp_path, 1e-4)

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
    model = compare_with_peft(model, tokenizer, gguf, adapter, tmp_path, 1e-3)

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


def test_help_has_an_example():
    for command in ["init", "compose", "inspect", "generate"]:
        result = run_cli(command, "--help")
        assert "Example:" in result.stdout, command
