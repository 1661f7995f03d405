"""The `cartridge` CLI's model-level commands against transformers, the gguf package and safetensors, in the
same run.

- `cartridge inspect-model --json`: layers, attention heads, KV heads, head dim, vocabulary, hidden size,
  context length and tied embeddings equal transformers' config of the same model (the default SmolLM2
  GGUF, as transformers' GGUF loader parses it, and tiny HF folders from tests/fixtures/make_model.py);
  kv_bytes_per_token is 2*L*H_kv*D*4 (fp32) and half that (bf16); parameters and tensor types are those of
  the file's tensors (gguf.GGUFReader / the safetensors headers); the plain text names the layer count;
- `cartridge generate` (no cartridge) on the default GGUF: greedy token ids of a raw prompt
  (tokenizer(prompt)) and of `--chat` (apply_chat_template, one user turn) equal transformers' greedy
  continuation, prompt_tokens its prompt length, the prompt's fp32 logits within 1e-3;
- `--seed` makes sampling reproducible (same seed: same ids, other seed: other ids); `--stop` ends the text
  before the first occurrence of the stop string in the unstopped greedy text, finish_reason "stop"; the
  streamed stdout without --json is the --json text; `--dtype bf16` logits are as close to transformers'
  fp32 logits as transformers' own bf16 logits are (measured in the same run);
- `cartridge chat` on piped stdin: greedy replies equal transformers' greedy reply to the same one-message
  chat (stopping at EOS), `/reset` forgets the conversation, `/quit` and EOF exit 0;
- damaged safetensors files (truncated, header length past the end, offsets out of range, overlapping
  offsets, unknown dtype), damaged GGUF files (bad magic, truncated at several sizes), an unsupported
  architecture and a missing path are, for `inspect-model` and `generate`, exit 1 with one line
  `error: ...` on stderr naming the file (the safetensors / gguf packages refuse the same files);
- every subcommand's `--help` exits 0 and has an example.

Needs CARTRIDGE_BIN (the built CLI) and CARTRIDGE_FIXTURES (make_all.py output: model/ and cartridge/).
"""
import contextlib
import copy
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import types
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

warnings.filterwarnings("ignore")

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CARTRIDGE_BIN", str(REPO / "build" / "cartridge"))
FIXTURES = pathlib.Path(os.environ.get("CARTRIDGE_FIXTURES", str(REPO / "build" / "fixtures")))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF = REPO / "models" / GGUF_NAME
GREEDY_TOKENS = 24
SAMPLED_TOKENS = 32
CHAT_TOKENS = 16
PROMPT = "Here is a short recipe for pancakes:"
CHAT_PROMPT = "Name three colours of the rainbow."
CHAT_INPUT = "Say hello."
CPU = ("-q", "--device", "cpu")


def run_cli(*args, check=True, stdin=None):
    result = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"cartridge {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr}")
    return result


def run_json(*args):
    """The JSON object a command prints (inspect-model indents it; generate prints one line)."""
    return json.loads(run_cli(*args).stdout)


@contextlib.contextmanager
def one_torch_thread():
    """The oracles run while other jobs share the 2 cores: with 2 spinning OpenMP threads a 135M forward
    takes seconds instead of a fraction of one. Results do not depend on this."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def head_dim_of(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# --------------------------------------------------------------------------------------------------------
# Oracles: transformers loading the default GGUF (once per module), and the unstopped greedy CLI run.
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert GGUF.is_file(), "the default model is missing (scripts/setup.sh)"
    tokenizer = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    return types.SimpleNamespace(model=model, tokenizer=tokenizer)


def chat_ids(tokenizer, text):
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)
    return list(rendered["input_ids"])


def transformers_greedy(model, prompt_ids, steps, ignore_eos):
    ids = torch.tensor([prompt_ids])
    kwargs = {"min_new_tokens": steps} if ignore_eos else {}
    with one_torch_thread(), torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=steps, **kwargs)
    return out[0, len(prompt_ids):].tolist()


def transformers_logits(model, prompt_ids):
    ids = torch.tensor([prompt_ids])
    with one_torch_thread(), torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()


# A greedy reply may leave transformers' only where transformers' two best logits are this close (nats):
# float32 summation order alone can flip such a tie, and the default path multiplies a prompt's tokens in
# another order than transformers (stored blocks, activations in L1-sized chunks of columns).
NEAR_TIE = 0.01


def assert_greedy_text_matches(smol, prompt_ids, expected_ids, ours):
    """ours equals the text of transformers' greedy ids, or first leaves them where transformers' top logit
    is within NEAR_TIE of the token ours took there."""
    expected = smol.tokenizer.decode(expected_ids, skip_special_tokens=True)
    if ours == expected:
        return
    ours_ids = smol.tokenizer(ours, add_special_tokens=False)["input_ids"]
    common = 0
    while common < min(len(ours_ids), len(expected_ids)) and ours_ids[common] == expected_ids[common]:
        common += 1
    assert common < len(ours_ids) and common < len(expected_ids), (ours, expected)
    logits = transformers_logits(smol.model, prompt_ids + expected_ids[:common])[-1]
    margin = (logits[expected_ids[common]] - logits[ours_ids[common]]).item()
    print(f"  left transformers' reply at token {common}: {smol.tokenizer.decode([ours_ids[common]])!r} for "
          f"{smol.tokenizer.decode([expected_ids[common]])!r}, {margin:.6f} nats below its top logit")
    assert 0 <= margin < NEAR_TIE, f"ours {ours!r} left transformers' {expected!r} at token {common} by {margin} nats"


@pytest.fixture(scope="module")
def oracle_raw(smol):
    """transformers on PROMPT: its prompt ids, fp32 prompt logits, unstopped greedy ids and their text."""
    prompt_ids = smol.tokenizer(PROMPT)["input_ids"]
    greedy = transformers_greedy(smol.model, prompt_ids, GREEDY_TOKENS, ignore_eos=True)
    return types.SimpleNamespace(prompt_ids=prompt_ids, logits=transformers_logits(smol.model, prompt_ids),
                                 token_ids=greedy, text=smol.tokenizer.decode(greedy))


@pytest.fixture(scope="module")
def greedy_raw(tmp_path_factory):
    """Our unstopped greedy continuation of PROMPT (--json) and our fp32 prompt logits."""
    logits_path = tmp_path_factory.mktemp("greedy") / "logits.safetensors"
    ours = run_json("generate", "--model", GGUF, "--prompt", PROMPT, "--json", "--temperature", 0,
                    "--max-new-tokens", GREEDY_TOKENS, "--ignore-eos", "--logits-out", logits_path, *CPU)
    ours["logits"] = load_file(str(logits_path))["logits"]
    return ours


# --------------------------------------------------------------------------------------------------------
# 1. inspect-model
# --------------------------------------------------------------------------------------------------------
def check_inspect(info, config, parameters, tensor_types, model_arg):
    layers, kv_heads, head_dim = config.num_hidden_layers, config.num_key_value_heads, head_dim_of(config)
    expected = {
        "layers": layers,
        "attention_heads": config.num_attention_heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "context_length": config.max_position_embeddings,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "model_type": config.model_type,
        "parameters": parameters,
        "tensor_types": tensor_types,
        "kv_bytes_per_token": {"fp32": 2 * layers * kv_heads * head_dim * 4,
                               "bf16": 2 * layers * kv_heads * head_dim * 2},
    }
    got = {key: info.get(key) for key in expected}
    print(f"\ninspect-model {pathlib.Path(str(model_arg)).name}: ours {got}\n  oracle {expected}")
    assert got == expected
    text = run_cli("inspect-model", model_arg).stdout
    assert re.search(rf"^layers\s+{layers}\s*$", text, re.M), text


def test_inspect_model_gguf_matches_transformers_and_gguf(smol):
    from gguf import GGUFReader

    info = run_json("inspect-model", GGUF, "--json")
    assert info["format"] == "gguf"
    # transformers' config of the GGUF is what AutoConfig.from_pretrained(folder, gguf_file=...) returns; the
    # loaded model carries it, which saves parsing the file's metadata once more.
    reader = GGUFReader(str(GGUF))
    parameters = sum(int(tensor.n_elements) for tensor in reader.tensors)
    tensor_types = {}
    for tensor in reader.tensors:
        tensor_types[tensor.tensor_type.name] = tensor_types.get(tensor.tensor_type.name, 0) + 1
    check_inspect(info, smol.model.config, parameters, tensor_types, GGUF)


@pytest.mark.parametrize("name", ["qwen3", "llama_tied", "llama3_rope"])
def test_inspect_model_hf_folder_matches_transformers_and_safetensors(name):
    from transformers import AutoConfig

    folder = FIXTURES / "model" / name
    assert folder.is_dir(), f"missing fixture {folder} (run tests/fixtures/make_all.py)"
    config = AutoConfig.from_pretrained(str(folder))
    parameters, tensor_types = 0, {}
    files = sorted(folder.glob("*.safetensors"))
    assert files
    for weights in files:
        raw = weights.read_bytes()
        header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
        header.pop("__metadata__", None)
        for entry in header.values():
            count = 1
            for extent in entry["shape"]:
                count *= extent
            parameters += count
            tensor_types[entry["dtype"]] = tensor_types.get(entry["dtype"], 0) + 1
    info = run_json("inspect-model", folder, "--json")
    assert info["format"] == "huggingface"
    check_inspect(info, config, parameters, tensor_types, folder)


# --------------------------------------------------------------------------------------------------------
# 2. generate: greedy parity with transformers
# --------------------------------------------------------------------------------------------------------
def test_generate_raw_prompt_greedy_matches_transformers(oracle_raw, greedy_raw):
    difference = (greedy_raw["logits"] - oracle_raw.logits).abs().max().item()
    print(f"\nraw prompt: ours {greedy_raw['token_ids']}\n  transformers {oracle_raw.token_ids}\n"
          f"  prompt logits max |difference| {difference:.2e}")
    assert greedy_raw["prompt_tokens"] == len(oracle_raw.prompt_ids)
    assert greedy_raw["completion_tokens"] == GREEDY_TOKENS
    assert greedy_raw["token_ids"] == oracle_raw.token_ids
    assert greedy_raw["logits"].shape == oracle_raw.logits.shape
    assert difference <= 1e-3
    assert greedy_raw["text"] == oracle_raw.text


def test_generate_chat_greedy_matches_transformers(smol):
    prompt_ids = chat_ids(smol.tokenizer, CHAT_PROMPT)
    ours = run_json("generate", "--model", GGUF, "--prompt", CHAT_PROMPT, "--chat", "--json", "--temperature", 0,
                    "--max-new-tokens", GREEDY_TOKENS, "--ignore-eos", *CPU)
    expected = transformers_greedy(smol.model, prompt_ids, GREEDY_TOKENS, ignore_eos=True)
    print(f"\n--chat: ours {ours['token_ids']}\n  transformers {expected}")
    assert ours["prompt_tokens"] == len(prompt_ids)
    assert ours["token_ids"] == expected


# --------------------------------------------------------------------------------------------------------
# 3. --seed, --stop, streaming, --dtype bf16
# --------------------------------------------------------------------------------------------------------
def test_seed_makes_sampling_reproducible():
    def sample(seed):
        return run_json("generate", "--model", GGUF, "--prompt", PROMPT, "--json", "--temperature", 0.8,
                        "--seed", seed, "--max-new-tokens", SAMPLED_TOKENS, "--ignore-eos", *CPU)["token_ids"]

    first, again, other = sample(11), sample(11), sample(12)
    same_positions = sum(a == b for a, b in zip(first, other))
    print(f"\nseed 11: {first}\nseed 11: {again}\nseed 12: {other}\n  seed 11 vs 12: {same_positions} of "
          f"{SAMPLED_TOKENS} positions equal")
    assert len(first) == len(other) == SAMPLED_TOKENS
    assert first == again
    assert first != other


def test_stop_string_and_streamed_text(oracle_raw):
    text = oracle_raw.text  # transformers' unstopped greedy text
    # A 3-character stop string taken from the unstopped text, preferably one that first occurs in its second
    # half (so that generation runs a while before it); the text must end before its FIRST occurrence.
    assert len(text) >= 8 and text.strip(), f"greedy text too short for a stop string: {text!r}"
    candidates = [text[i:i + 3] for i in range(len(text) // 2, len(text) - 2) if text[i:i + 3].strip()]
    stop = next((c for c in candidates if text.find(c) >= len(text) // 2), candidates[0])
    expected = text[:text.find(stop)]
    args = ("generate", "--model", GGUF, "--prompt", PROMPT, "--temperature", 0, "--max-new-tokens", GREEDY_TOKENS,
            "--stop", stop, *CPU)
    ours = run_json(*args, "--json")
    streamed = run_cli(*args).stdout
    print(f"\nunstopped {text!r}\n--stop {stop!r}: ours {ours['text']!r}, expected {expected!r}, "
          f"finish_reason {ours['finish_reason']!r}\nstreamed {streamed!r}")
    assert ours["text"] == expected
    assert ours["finish_reason"] == "stop"
    assert ours["token_ids"] == oracle_raw.token_ids[:len(ours["token_ids"])]
    assert streamed == ours["text"] + "\n"


def test_bf16_logits_are_within_bf16_error(smol, oracle_raw, greedy_raw, tmp_path):
    prompt_ids = oracle_raw.prompt_ids
    logits_path = tmp_path / "bf16.safetensors"
    ours = run_json("generate", "--model", GGUF, "--prompt", PROMPT, "--json", "--dtype", "bf16",
                    "--max-new-tokens", 0, "--logits-out", logits_path, *CPU)
    assert ours["prompt_tokens"] == len(prompt_ids)
    ours_bf16 = load_file(str(logits_path))["logits"]
    fp32 = oracle_raw.logits
    theirs_bf16 = transformers_logits(copy.deepcopy(smol.model).to(torch.bfloat16), prompt_ids)
    assert ours_bf16.shape == fp32.shape
    # The tolerance is transformers' own bf16 error on this prompt, measured now: a bf16 forward of ours may
    # round in a different order and so land up to that far on the other side of fp32 (hence 2x), no further.
    # The max is dominated by the bf16 rounding of the largest logits themselves (a 0.25-0.5 step), so the
    # mean, which follows the error accumulated through the 30 layers, is bounded the same way.
    reference_error = (theirs_bf16 - fp32).abs().max().item()
    reference_mean = (theirs_bf16 - fp32).abs().mean().item()
    ours_error = (ours_bf16 - fp32).abs().max().item()
    ours_mean = (ours_bf16 - fp32).abs().mean().item()
    ours_vs_ours_fp32 = (ours_bf16 - greedy_raw["logits"]).abs().max().item()
    ours_vs_theirs_bf16 = (ours_bf16 - theirs_bf16).abs().max().item()
    print(f"\nbf16 |logit difference| max / mean: transformers bf16 vs fp32 {reference_error:.3f} / "
          f"{reference_mean:.4f}, ours bf16 vs transformers fp32 {ours_error:.3f} / {ours_mean:.4f}; max: ours "
          f"bf16 vs ours fp32 {ours_vs_ours_fp32:.3f}, ours bf16 vs transformers bf16 {ours_vs_theirs_bf16:.3f}")
    assert ours_error <= 2 * reference_error
    assert ours_mean <= 2 * reference_mean
    # bf16 really was used: its rounding is far above the fp32 parity tolerance (1e-3).
    assert ours_vs_ours_fp32 > 1e-2
    # The most likely next token of every prompt position agrees with fp32 where fp32 is not a near tie.
    top2 = fp32.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * reference_error
    assert torch.equal(ours_bf16.argmax(-1)[clear], fp32.argmax(-1)[clear])


# --------------------------------------------------------------------------------------------------------
# 4. chat
# --------------------------------------------------------------------------------------------------------
def test_chat_replies_match_transformers_and_reset_forgets(smol):
    prompt_ids = chat_ids(smol.tokenizer, CHAT_INPUT)
    expected_ids = transformers_greedy(smol.model, prompt_ids, CHAT_TOKENS, ignore_eos=False)
    expected = smol.tokenizer.decode(expected_ids, skip_special_tokens=True)
    args = ("chat", "--model", GGUF, "--temperature", 0, "-n", CHAT_TOKENS, *CPU)
    result = run_cli(*args, check=False, stdin=f"{CHAT_INPUT}\n/reset\n{CHAT_INPUT}\n/quit\n")
    print(f"\nchat: transformers reply {expected!r} ({len(expected_ids)} tokens)\n  ours stdout {result.stdout!r}"
          f"\n  exit {result.returncode}, stderr {result.stderr[-300:]!r}")
    assert result.returncode == 0, result.stderr
    replies = result.stdout.split("\n")
    assert replies[-1] == "" and len(replies) == 3, result.stdout  # two replies, each ended by a newline
    assert replies[0] == replies[1]
    assert_greedy_text_matches(smol, prompt_ids, expected_ids, replies[0])

    at_eof = run_cli(*args, check=False, stdin=f"{CHAT_INPUT}\n")  # no /quit: EOF ends the chat
    print(f"  EOF: exit {at_eof.returncode}, stdout {at_eof.stdout!r}")
    assert at_eof.returncode == 0, at_eof.stderr
    assert at_eof.stdout == replies[0] + "\n"


# --------------------------------------------------------------------------------------------------------
# 5. bad input: one-line errors naming the file
# --------------------------------------------------------------------------------------------------------
def read_safetensors(path):
    with safe_open(str(path), "pt") as handle:
        for key in handle.keys():
            handle.get_tensor(key)


def reference_refusal(reader, path):
    try:
        reader(str(path))
    except Exception as error:  # noqa: BLE001 - any refusal will do
        return f"refused: {type(error).__name__}: {str(error)[:120]}"
    return "accepted the file"


def safetensors_parts(path):
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return raw, json.loads(raw[8:8 + length]), raw[8 + length:]


def safetensors_bytes(header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """{case: (model argument, the file the error must name, what the reference reader (safetensors.safe_open
    / gguf.GGUFReader) said about the damaged file, or None where there is no such reader)}."""
    from gguf import GGUFReader

    source = FIXTURES / "cartridge" / "llama" / "model"  # config, fp32 safetensors and tokenizer files
    assert source.is_dir(), f"missing fixture {source} (run tests/fixtures/make_all.py)"
    root = tmp_path_factory.mktemp("bad")
    raw, header, data = safetensors_parts(source / "model.safetensors")
    names = sorted(key for key in header if key != "__metadata__")
    cases = {}

    def folder(case, weights=None, config=None):
        target = root / case
        shutil.copytree(source, target)
        if weights is not None:
            (target / "model.safetensors").write_bytes(weights)
        if config is not None:
            (target / "config.json").write_text(json.dumps(config))
        return target

    def safetensors_case(case, weights):
        target = folder(case, weights=weights)
        weights_file = target / "model.safetensors"
        cases[case] = (target, weights_file, reference_refusal(read_safetensors, weights_file))

    safetensors_case("safetensors_truncated", raw[:8 + (len(raw) - 8) // 2])
    safetensors_case("safetensors_header_past_end", struct.pack("<Q", len(raw) + 64) + raw[8:])
    moved = copy.deepcopy(header)
    begin, end = moved[names[0]]["data_offsets"]
    moved[names[0]]["data_offsets"] = [begin + len(data), end + len(data)]
    safetensors_case("safetensors_offsets_out_of_range", safetensors_bytes(moved, data))
    overlapping = copy.deepcopy(header)
    by_size = {}
    for key in names:
        begin, end = overlapping[key]["data_offsets"]
        by_size.setdefault(end - begin, []).append(key)
    first, second = next(keys for keys in by_size.values() if len(keys) >= 2)[:2]
    overlapping[second]["data_offsets"] = list(overlapping[first]["data_offsets"])
    safetensors_case("safetensors_overlapping_offsets", safetensors_bytes(overlapping, data))
    unknown = copy.deepcopy(header)
    unknown[names[-1]]["dtype"] = "F7"
    safetensors_case("safetensors_unknown_dtype", safetensors_bytes(unknown, data))

    config = json.loads((source / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    target = folder("unsupported_architecture", config=config)
    cases["unsupported_architecture"] = (target, target / "config.json", None)

    gguf = GGUF.read_bytes()
    variants = {"gguf_bad_magic": b"GGUX" + gguf[4:]}
    cuts = {"header": 16, "metadata": 100_000, "half": len(gguf) // 2, "last_byte": len(gguf) - 1}
    for where, cut in cuts.items():
        variants[f"gguf_truncated_{where}"] = gguf[:cut]
    for case, blob in variants.items():
        path = root / f"{case}.gguf"
        path.write_bytes(blob)
        cases[case] = (path, path, reference_refusal(GGUFReader, path))

    missing = root / "no-such-model"
    cases["missing_path"] = (missing, missing, None)
    return cases


BAD_CASES = ["safetensors_truncated", "safetensors_header_past_end", "safetensors_offsets_out_of_range",
             "safetensors_overlapping_offsets", "safetensors_unknown_dtype", "unsupported_architecture",
             "gguf_bad_magic", "gguf_truncated_header", "gguf_truncated_metadata", "gguf_truncated_half",
             "gguf_truncated_last_byte", "missing_path"]


@pytest.mark.parametrize("command", ["inspect-model", "generate"])
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_a_one_line_error_naming_the_file(bad_inputs, case, command):
    model_arg, named, refusal = bad_inputs[case]
    if refusal is not None:  # the reference reader refuses the same file, so the damage is real
        assert refusal.startswith("refused"), f"{case}: {refusal}"
    if command == "inspect-model":
        result = run_cli("inspect-model", model_arg, "--json", check=False)
    else:
        result = run_cli("generate", "--model", model_arg, "--prompt", "hi", "--max-new-tokens", 2, *CPU,
                         check=False)
    print(f"\n{case} / {command}: reference {refusal}; exit {result.returncode}, stderr {result.stderr!r}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    assert lines[0].startswith("error: ")
    assert str(named) in lines[0] or named.name in lines[0], (named, lines[0])
    assert result.stdout == ""


# --------------------------------------------------------------------------------------------------------
# 6. --help
# --------------------------------------------------------------------------------------------------------
def test_every_subcommand_help_has_an_example():
    top = run_cli("--help").stdout
    section = top.split("Subcommands:", 1)[1]
    commands = [match.group(1) for match in re.finditer(r"^  (\S+)\s", section, re.M)]
    print(f"\nsubcommands: {commands}")
    assert {"generate", "chat", "tokenize", "inspect-model", "init", "serve"} <= set(commands)
    missing = []
    for command in commands:
        result = run_cli(command, "--help", check=False)
        if result.returncode != 0 or "Example:" not in result.stdout:
            missing.append((command, result.returncode))
    assert not missing, f"--help without exit 0 and an example: {missing}"
