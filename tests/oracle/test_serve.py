"""`cartridge serve` driven by the real `openai` Python client on 127.0.0.1.

- Completions and chat, streaming and not: 8 concurrent requests, each over a different cartridge (six
  cartridges, the bare model, and two cartridges composed with the extra `cartridges` field), return exactly the text
  `cartridge generate --cartridge ...` gives for the same cartridge, prompt and greedy settings.
- Bad requests (malformed JSON, unknown cartridge, `../` names, an adapter for another model (shapes that
  do not fit, or a fingerprint naming other weights), an oversized body, max_tokens over the limit) get 4xx
  OpenAI error objects, and the server keeps serving.
- Those concurrent requests really share batches (`GET /v1/stats`: a peak decode batch >= 2, and fewer
  forward passes than sampled tokens while they ran).
- `stop` ends the text before the first occurrence of the string (finish_reason "stop"), streaming or not;
  a `seed` at temperature 0.9 gives the same text every time, also when the requests share a batch, another
  seed gives another text, and the text is what `cartridge generate --seed` gives for the same cartridge and
  prompt.
- The server logs one line per request.
- Many requests on one cartridge, joining and leaving while others decode, each get what `cartridge generate`
  gives alone; 64 concurrent requests on one p = 512 cartridge hold one copy of its KV plus their own tokens
  (`GET /v1/stats`), where the old path (`--copy-cartridge-kv`) held a copy per request.

Cartridges are made by `cartridge init` from short texts on the default SmolLM2 GGUF.
Needs CARTRIDGE_BIN (our binary).
"""
import concurrent.futures
import contextlib
import http.client
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import openai
import pytest
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CARTRIDGE_BIN", str(ROOT / "build" / "cartridge"))
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_ID = "SmolLM2-135M-Instruct.Q4_1"
MAX_TOKENS = 16
MAX_BODY = 256 * 1024

TEXTS = [
    "The Zorblax treaty of 1832 was signed in the city of Quentaro by three river guilds who agreed to share the "
    "water of the Vell for ninety years.",
    "Marta's bakery sells sourdough on Mondays, rye bread on Wednesdays and cinnamon rolls only on the first "
    "Saturday of each month.",
    "In the board game Hexfall, each player starts with seven tiles, and a tile can only be placed next to another "
    "tile of the same colour.",
    "Project Lumen is a satellite launched in 2031 to measure the brightness of distant quasars with a two-metre "
    "mirror cooled to four kelvin.",
    "The recipe calls for two cups of flour, one egg, half a cup of milk and a pinch of salt, whisked until smooth "
    "and rested for an hour.",
    "Captain Ilsa Varn commanded the research vessel Meridian during its survey of the southern trench, mapping "
    "eleven hydrothermal vents.",
]
TOKENS = [12, 20, 9, 16, 24, 10]
NAMES = [f"doc{i}" for i in range(len(TEXTS))]
PROMPTS = ["The treaty was signed in", "On Mondays the bakery sells", "Each player starts with",
           "The satellite measures", "Whisk the", "The captain of the Meridian"]
QUESTIONS = ["Where was the treaty signed?", "What is sold on Mondays?", "How many tiles does a player get?",
             "What does the satellite measure?", "How much flour is needed?", "Who commanded the Meridian?"]


def run(args, timeout=600):
    result = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]} failed: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def cartridges(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cartridges")
    for name, text, tokens in zip(NAMES, TEXTS, TOKENS):
        run(["init", "--model", str(MODEL), "--text", text, "--tokens", str(tokens), "--no-chat-template",
             "--out", str(folder / name), "--quiet"])
    # An adapter made for another model: the same files with 2 layers instead of 30 (consistent in itself,
    # so only the model check can refuse it).
    other = folder / "other-model"
    shutil.copytree(folder / NAMES[0], other)
    (other / "cartridge_fingerprint.json").unlink(missing_ok=True)
    config = json.loads((other / "adapter_config.json").read_text())
    embeddings = load_file(str(other / "adapter_model.safetensors"))["prompt_embeddings"]
    width = embeddings.shape[1] // config["num_layers"] * 2
    config["num_layers"] = 2
    (other / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({"prompt_embeddings": embeddings[:, :width].contiguous()}, str(other / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    # An adapter of the right shapes whose fingerprint names other weights (as one made with a fine-tune of
    # the same architecture would): only the fingerprint can tell, and the server must refuse it.
    other_weights = folder / "other-weights"
    shutil.copytree(folder / NAMES[1], other_weights)
    fingerprint = json.loads((other_weights / "cartridge_fingerprint.json").read_text())
    fingerprint["weight_hash"] = "fnv1a64:0123456789abcdef"
    (other_weights / "cartridge_fingerprint.json").write_text(json.dumps(fingerprint))
    return folder


@contextlib.contextmanager
def running_server(cartridges, log_path, *args, host="127.0.0.1", env=None):
    """`cartridge serve` with the default model on `host`, a free port and `args`, its log in `log_path`;
    yields {"port", "log", "process"}, then stops it with SIGTERM and checks that it exits 0."""
    with open(log_path, "w") as log:
        process = subprocess.Popen([BIN, "serve", "--model", str(MODEL), "--cartridges", str(cartridges), "--host",
                                    host, "--port", "0", "--quiet", *args], stdout=subprocess.DEVNULL, stderr=log,
                                   env=env)
        try:
            deadline, port = time.time() + 180, None
            while time.time() < deadline and port is None:
                assert process.poll() is None, "the server exited: " + log_path.read_text()
                found = re.search(rf"on http://{re.escape(host)}:(\d+)", log_path.read_text())
                port = int(found.group(1)) if found else time.sleep(0.2)
            assert port, "the server did not start: " + log_path.read_text()
            yield {"port": port, "log": log_path, "process": process}
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, log_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()


@pytest.fixture(scope="module")
def server(cartridges, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve_log") / "server.log"
    with running_server(cartridges, log_path, "--max-batch", "16", "--max-body-bytes", str(MAX_BODY),
                        "--max-tokens-limit", "256") as served:
        yield {**served, "cartridges": cartridges}


def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server['port']}/v1", api_key="unused", timeout=600,
                         max_retries=0)


def generate_reference(folder, cartridge_names, prompt, chat):
    args = ["generate", "--model", str(MODEL), "--prompt", prompt, "--max-new-tokens", str(MAX_TOKENS),
            "--temperature", "0", "--json", "--quiet"]
    for name in cartridge_names:
        args += ["--cartridge", str(folder / name)]
    if chat:
        args.append("--chat")
    return json.loads(run(args))


@pytest.fixture(scope="module")
def references(cartridges):
    """`cartridge generate` for every (cartridges, prompt, chat) case the tests send, computed in parallel."""
    cases = {}
    for i, name in enumerate(NAMES):
        cases[((name,), PROMPTS[i], False)] = None
        cases[((name,), QUESTIONS[i], True)] = None
    cases[((), PROMPTS[0], False)] = None
    cases[((), QUESTIONS[1], True)] = None
    cases[((NAMES[1], NAMES[0]), PROMPTS[2], False)] = None
    cases[((NAMES[2], NAMES[3]), QUESTIONS[3], True)] = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(generate_reference, cartridges, list(case[0]), case[1], case[2]) for case in cases}
        return {case: future.result() for case, future in futures.items()}


def request_cases():
    """(model, reference cartridge names, text index): one request per cartridge, and one on the bare model."""
    return [(name, (name,), i) for i, name in enumerate(NAMES)] + [(BASE_ID, (), 0)]


def complete(api, model, cartridges, prompt, chat, stream):
    extra = {"cartridges": list(cartridges)} if cartridges else None
    common = dict(model=model, max_tokens=MAX_TOKENS, temperature=0, stream=stream, extra_body=extra)
    if stream:
        common["stream_options"] = {"include_usage": True}
    if chat:
        response = api.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
    else:
        response = api.completions.create(prompt=prompt, **common)
    if not stream:
        choice = response.choices[0]
        text = choice.message.content if chat else choice.text
        return {"text": text, "finish_reason": choice.finish_reason, "usage": response.usage,
                "timings": (response.model_extra or {}).get("timings")}
    text, finish, usage, timings = "", None, None, None
    for chunk in response:
        if chunk.usage is not None:
            usage = chunk.usage
        timings = (chunk.model_extra or {}).get("timings") or timings  # on the chunk that finishes
        for choice in chunk.choices:
            piece = choice.delta.content if chat else choice.text
            text += piece or ""
            finish = choice.finish_reason or finish
    return {"text": text, "finish_reason": finish, "usage": usage, "timings": timings}


def assert_llama_cpp_timings(timings, prompt_tokens, completion_tokens):
    """llama.cpp's "timings": its counts agree with usage (the stop token is chosen too, so it may add one)."""
    assert timings is not None
    assert timings["prompt_n"] == prompt_tokens
    assert timings["predicted_n"] in (completion_tokens, completion_tokens + 1), (timings, completion_tokens)
    assert timings["prompt_ms"] > 0 and timings["predicted_ms"] >= 0
    assert math.isclose(timings["prompt_per_second"], prompt_tokens * 1000 / timings["prompt_ms"], rel_tol=1e-9)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_concurrent_requests_over_different_cartridges_match_generate(server, references, chat):
    api = client(server)
    jobs = []
    for model, names, i in request_cases():
        if model == BASE_ID:
            prompt = QUESTIONS[1] if chat else PROMPTS[0]
        else:
            prompt = QUESTIONS[i] if chat else PROMPTS[i]
        jobs.append((model, None, names, prompt))
    # Composition on the fly with the extra `cartridges` field.
    if chat:
        jobs.append((BASE_ID, (NAMES[2], NAMES[3]), (NAMES[2], NAMES[3]), QUESTIONS[3]))
    else:
        jobs.append((BASE_ID, (NAMES[1], NAMES[0]), (NAMES[1], NAMES[0]), PROMPTS[2]))
    assert len(jobs) >= 8
    before = scheduler_stats(server)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        # Alternate streaming and not, all in flight together.
        futures = [pool.submit(complete, api, model, cartridges, prompt, chat, index % 2 == 0)
                   for index, (model, cartridges, _, prompt) in enumerate(jobs)]
        results = [future.result() for future in futures]
    time.sleep(0.2)  # the scheduler updates its counters just after it hands out a request's last token
    after = scheduler_stats(server)
    # They were batched: some decode step ran two or more rows, and while these requests ran, the
    # forward passes (one prefill per admitted group, one decode step per token of the batch) were fewer
    # than the tokens sampled (one per row per pass).
    assert after["peak_batch"] >= 2, after
    passes = (after["prefill_steps"] - before["prefill_steps"]) + (after["decode_steps"] - before["decode_steps"])
    sampled = after["generated_tokens"] - before["generated_tokens"]
    assert sampled >= sum(result["usage"].completion_tokens for result in results), (before, after)
    assert passes < sampled, (before, after)
    for index, ((model, cartridges, names, prompt), got) in enumerate(zip(jobs, results)):
        want = references[(tuple(names), prompt, chat)]
        assert got["text"] == want["text"], (model, cartridges, prompt, "stream" if index % 2 == 0 else "plain")
        assert got["finish_reason"] == want["finish_reason"]
        assert got["usage"].prompt_tokens == want["prompt_tokens"]
        assert got["usage"].completion_tokens == want["completion_tokens"]
        assert got["usage"].total_tokens == want["prompt_tokens"] + want["completion_tokens"]
        assert_llama_cpp_timings(got["timings"], want["prompt_tokens"], want["completion_tokens"])
        assert_llama_cpp_timings(want["timings"], want["prompt_tokens"], want["completion_tokens"])  # generate --json


def server_stats(server):
    """GET /v1/stats: {"scheduler": ..., "cartridges": ..., ...}."""
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    try:
        connection.request("GET", "/v1/stats")
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        connection.close()


def scheduler_stats(server):
    return server_stats(server)["scheduler"]


SAMPLED_TOKENS = 32
SEED = 20261201


def test_stop_string_ends_the_text_before_it(server):
    api = client(server)
    # ignore_eos: the same greedy tokens whatever comes, so the stopped text is a prefix of this one.
    common = dict(model=NAMES[0], prompt=PROMPTS[0], max_tokens=32, temperature=0, extra_body={"ignore_eos": True})
    full = api.completions.create(**common).choices[0].text
    assert len(full) >= 12, full
    # A piece of the text from its second half; the text must end before its first occurrence.
    start = next(k for k in range(len(full) // 2, len(full) - 3) if not full[k].isspace())
    stop = full[start:start + 4]
    expected = full[:full.find(stop)]
    assert expected, (full, stop)
    response = api.completions.create(stop=stop, **common)
    assert response.choices[0].text == expected, (full, stop)
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens < 32
    # Streaming: the pieces never show any part of the stop string.
    text, finish = "", None
    for chunk in api.completions.create(stop=[stop], stream=True, **common):
        for choice in chunk.choices:
            text += choice.text or ""
            finish = choice.finish_reason or finish
    assert text == expected and finish == "stop", (full, stop, text)


def test_seed_makes_sampling_reproducible_and_equal_to_generate(cartridges, tmp_path):
    # On dense weights, where a row's product is the same alone and among other rows up to float32
    # summation order. With the blocks kept as stored (the default), decoding one row rounds the activations
    # to int16 steps and several rows multiply them in float32 (docs/quantized.md), so logits differ by
    # what the rounding moves, and a sample at temperature 0.9 took another token alone than in a batch.
    with running_server(cartridges, tmp_path / "server.log", "--max-batch", "16", "--weights", "dense") as server:
        check_seeded_samples(server, cartridges)


def check_seeded_samples(server, cartridges):
    api = client(server)
    common = dict(model=NAMES[3], prompt=PROMPTS[3], max_tokens=SAMPLED_TOKENS, temperature=0.9, top_p=1,
                  extra_body={"ignore_eos": True})

    def sample(seed):
        return api.completions.create(seed=seed, **common).choices[0].text

    # All three in flight together: a request's random stream must not depend on its batch.
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        first, again, other = [future.result() for future in [pool.submit(sample, seed) for seed in
                                                                (SEED, SEED, SEED + 1)]]
    assert first == again
    assert first != other
    # And alone, later.
    assert sample(SEED) == first
    # The server and `cartridge generate` use the same sampler (one seeded stream per request).
    reference = json.loads(run(["generate", "--model", str(MODEL), "--cartridge", str(cartridges / NAMES[3]),
                                "--prompt", PROMPTS[3], "--max-new-tokens", str(SAMPLED_TOKENS), "--temperature",
                                "0.9", "--top-p", "1", "--seed", str(SEED), "--ignore-eos", "--weights", "dense",
                                "--json", "--quiet"]))
    assert reference["completion_tokens"] == SAMPLED_TOKENS
    assert first == reference["text"]


def test_models_lists_the_base_model_and_every_cartridge(server, cartridges):
    ids = [model.id for model in client(server).models.list().data]
    assert ids[0] == BASE_ID
    assert sorted(ids[1:]) == sorted(NAMES + ["other-model", "other-weights"])


def raw_post(server, path, body: bytes):
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=120)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def assert_healthy(server):
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    connection.request("GET", "/health")
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
    connection.close()


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    api = client(server)
    cases = [
        (b'{"model": "doc0", "prompt": ', 400, "invalid_json"),
        (b"\xff\xfe not json", 400, "invalid_json"),
        (json.dumps({"model": "doc0", "prompt": "x" * (MAX_BODY + 1)}).encode(), 413, "request_too_large"),
    ]
    for body, status, code in cases:
        got_status, got = raw_post(server, "/v1/completions", body)
        assert got_status == status and got["error"]["code"] == code, got
        assert got["error"]["type"] and got["error"]["message"]
        assert_healthy(server)

    with pytest.raises(openai.NotFoundError) as error:
        api.completions.create(model="no-such-cartridge", prompt="x", max_tokens=4)
    assert error.value.body["code"] == "model_not_found"
    assert_healthy(server)
    for name in ["../doc0", "..", "doc0/../../etc", "/etc/passwd"]:
        with pytest.raises(openai.BadRequestError):
            api.completions.create(model=name, prompt="x", max_tokens=4)
        assert_healthy(server)
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model=BASE_ID, messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                    extra_body={"cartridges": ["doc0", "../../secret"]})
    with pytest.raises(openai.BadRequestError) as error:
        api.completions.create(model="other-model", prompt="x", max_tokens=4)
    assert error.value.body["code"] == "cartridge_model_mismatch"
    with pytest.raises(openai.BadRequestError) as error:
        api.chat.completions.create(model="other-weights", messages=[{"role": "user", "content": "x"}], max_tokens=4)
    assert error.value.body["code"] == "cartridge_model_mismatch" and "weights" in error.value.body["message"]
    with pytest.raises(openai.BadRequestError) as error:
        api.completions.create(model="doc0", prompt="x", max_tokens=100000)
    assert error.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model="doc0", prompt="x", max_tokens=4, n=2)
    assert_healthy(server)
    # And it still generates.
    assert api.completions.create(model="doc0", prompt=PROMPTS[0], max_tokens=4, temperature=0).choices[0].text


def test_one_log_line_per_request(server):
    log_before = server["log"].read_text().count("\n")
    api = client(server)
    for _ in range(3):
        api.completions.create(model="doc1", prompt="Bread", max_tokens=2, temperature=0)
    raw_post(server, "/v1/completions", b"{")
    time.sleep(0.5)
    new_lines = server["log"].read_text().splitlines()[log_before:]
    assert len([line for line in new_lines if '"POST /v1/completions" 200' in line]) == 3, new_lines
    assert len([line for line in new_lines if '"POST /v1/completions" 400' in line]) == 1, new_lines
    assert len(new_lines) == 4, new_lines


def test_a_chunked_body_past_the_limit_gets_413_without_being_read(server):
    """A body sent with Transfer-Encoding: chunked is held to --max-body-bytes too: 413 once the limit is
    passed, and the server closes the connection rather than reading the rest (64 MB offered here)."""
    import socket

    chunk = b"x" * 65536
    offered = 64 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=60) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        sent = 0
        try:
            while sent < offered:
                connection.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed: what we want
        response = b""
        try:
            while True:
                data = connection.recv(65536)
                if not data:
                    break
                response += data
        except (ConnectionResetError, socket.timeout):
            pass
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < offered, "the server read the whole 64 MB body"
    assert b"request_too_large" in response
    assert_healthy(server)


def test_slow_clients_do_not_starve_the_others(server):
    """150 connections that each send one header byte every 2 s stay open for 20 s. Meanwhile /health and a
    4-token completion each answer within 10 s: a connection is served on a thread of its own (up to
    --max-connections, 256 by default), so the slow ones hold only theirs."""
    import socket
    import threading

    stop = threading.Event()
    sockets = []

    def trickle():
        connection = socket.create_connection(("127.0.0.1", server["port"]), timeout=30)
        sockets.append(connection)
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            if stop.is_set():
                break
            connection.send(bytes([byte]))
            stop.wait(2.0)

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(150)]
    started = time.time()
    try:
        for thread in threads:
            thread.start()
        time.sleep(2)  # every slow connection is open and has sent its first bytes
        assert len(sockets) == 150
        before = time.time()
        connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=10)
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
        connection.close()
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{server['port']}/v1", api_key="unused", timeout=10,
                            max_retries=0)
        completion = api.completions.create(model=BASE_ID, prompt="Hello", max_tokens=4)
        assert completion.usage.completion_tokens >= 1
        assert time.time() - before < 20, "answered only after the slow connections closed"
        time.sleep(max(0.0, 20 - (time.time() - started)))  # the slow connections stay open 20 s in all
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        for connection in sockets:
            connection.close()
    assert_healthy(server)


def test_connections_beyond_the_bound_are_closed_at_once(cartridges, tmp_path):
    """--max-connections 4: four slow connections hold the four threads and four more wait; a ninth is
    closed at once rather than queued without bound, and once the slow ones go, /health answers again."""
    import socket

    with running_server(cartridges, tmp_path / "server.log", "--max-connections", "4",
                        "--max-concurrent-requests", "2") as served:
        assert_healthy(served)  # the server is accepting
        slow = []
        for _ in range(8):
            connection = socket.create_connection(("127.0.0.1", served["port"]), timeout=30)
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            slow.append(connection)
            # One at a time: a burst can find the threads not yet awake and the wait queue full.
            time.sleep(0.2)
        for connection in slow:  # all eight are held open by the server (nothing to read, not closed)
            connection.settimeout(0)
            with pytest.raises(BlockingIOError):
                connection.recv(1, socket.MSG_PEEK)
        # (within 5 s of the first: then the read timeout frees its thread)
        with socket.create_connection(("127.0.0.1", served["port"]), timeout=5) as ninth:
            start = time.time()
            try:
                ninth.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = ninth.recv(1024)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
            assert answer == b"", answer[:200]  # closed without an answer
            assert time.time() - start < 4, "the ninth connection waited instead of being closed"
        for connection in slow:
            connection.close()
        time.sleep(1)
        assert_healthy(served)


def test_hostile_fields_and_methods(server):
    """A newline in a logged field cannot forge a log line; a number no double holds is a 400; a known path
    with the wrong method is a 405 naming the right one; error bodies do not show the server's paths."""
    log_before = server["log"].read_text().count("\n")
    status, body = raw_post(server, "/v1/chat/completions", json.dumps(
        {"model": BASE_ID, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1,
         "cartridges": ["doc0\n2026-12-06 00:00:00 127.0.0.1 \"POST /v1/admin\" 200 forged"]}).encode())
    assert status == 400, body
    time.sleep(0.5)
    new_lines = [line for line in server["log"].read_text().splitlines()[log_before:] if "/health" not in line]
    assert len(new_lines) == 1 and "\\n2026-12-06" in new_lines[0], new_lines
    status, body = raw_post(server, "/v1/completions",
                            b'{"model": "doc0", "prompt": "x", "max_tokens": 2, "temperature": 1e400}')
    assert status == 400 and body["error"]["code"] == "invalid_json", body
    for method, path, allowed in (("GET", "/v1/completions", "POST"), ("GET", "/v1/chat/completions", "POST"),
                                  ("POST", "/v1/models", "GET"), ("DELETE", "/health", "GET")):
        connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
        connection.request(method, path, body=b"{}" if method == "POST" else None)
        response = connection.getresponse()
        payload = json.loads(response.read())
        connection.close()
        assert response.status == 405 and response.getheader("Allow") == allowed, (method, path, payload)
        assert payload["error"]["code"] == "method_not_allowed"
    status, body = raw_post(server, "/v1/completions",
                            json.dumps({"model": "other-model", "prompt": "x", "max_tokens": 1}).encode())
    assert status == 400 and "<cartridges>" in body["error"]["message"], body
    assert str(pathlib.Path(server["cartridges"]).resolve()) not in body["error"]["message"], body
    assert_healthy(server)


def test_api_key_is_required_when_set_and_open_binding_warns(cartridges, tmp_path):
    log_path = tmp_path / "server.log"
    with running_server(cartridges, log_path, host="0.0.0.0", env={**os.environ, "CARTRIDGE_API_KEY": "s3cret"}) as served:
        port = served["port"]
        assert "warning:" not in log_path.read_text()  # a key is set: no warning
        with pytest.raises(openai.AuthenticationError) as error:
            client(served).completions.create(model="doc0", prompt="x", max_tokens=1)  # sends "unused"
        assert error.value.body["code"] == "invalid_api_key"
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="s3cret", max_retries=0, timeout=600)
        assert api.completions.create(model="doc0", prompt="x", max_tokens=1, temperature=0).choices
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200  # open to load balancers
    # Without a key, binding beyond this machine warns.
    # (a missing model file then stops it: the warning comes first)
    result = subprocess.run([BIN, "serve", "--model", str(tmp_path / "missing.gguf"), "--cartridges", str(cartridges),
                             "--host", "0.0.0.0", "--port", "0", "--quiet"], capture_output=True, text=True,
                            timeout=120, env={k: v for k, v in os.environ.items() if k != "CARTRIDGE_API_KEY"})
    assert result.returncode != 0
    assert "warning: listening on 0.0.0.0 without an API key" in result.stderr, result.stderr


def test_many_requests_on_one_cartridge_joining_and_leaving_match_generate(server, cartridges):
    """Twelve requests on one cartridge, started 0.1 s apart so that they join a running batch and leave it
    at different steps (each its own prompt), streaming and not: each text is `cartridge generate`'s."""
    prompts = PROMPTS + QUESTIONS
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        wanted = list(pool.map(lambda prompt: generate_reference(cartridges, [NAMES[0]], prompt, False), prompts))
    api = client(server)

    def send(index):
        time.sleep(0.1 * index)
        return complete(api, NAMES[0], None, prompts[index], False, stream=index % 2 == 1)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        results = list(pool.map(send, range(len(prompts))))
    for prompt, got, want in zip(prompts, results, wanted):
        assert got["text"] == want["text"], prompt
        assert got["usage"].completion_tokens == want["completion_tokens"], prompt


def test_requests_on_one_cartridge_hold_one_copy_of_its_kv(cartridges, tmp_path):
    """64 concurrent requests on one p = 512 cartridge, prompts of at most 32 tokens, 32 tokens each: the
    running batch reads one copy of the cartridge and holds only the requests' own tokens; with
    --copy-cartridge-kv (the old path) every request holds a copy. (The ratio of the two, about 10x here, is
    measured by bench/serve_bench.py, not asserted.)"""
    folder = tmp_path / "cartridges"
    run(["init", "--model", str(MODEL), "--random", "--tokens", "512", "--out", str(folder / "wide"), "--quiet"])
    embeddings = load_file(str(folder / "wide" / "adapter_model.safetensors"))["prompt_embeddings"]
    slot_bytes = embeddings.shape[1] * 4  # K and V of every layer for one slot, float32 (the served dtype)
    cartridge_bytes = 512 * slot_bytes
    prompts = [f"Request {index}: tell me about cartridge number {index} and what it holds." for index in range(64)]

    def serve_all(*args):
        with running_server(folder, tmp_path / f"server{len(args)}.log", "--no-request-log", "--max-batch", "64",
                            *args) as served:
            api = client(served)
            send = lambda prompt: api.completions.create(model="wide", prompt=prompt, max_tokens=32, temperature=0,
                                                         extra_body={"ignore_eos": True})
            with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
                responses = list(pool.map(send, prompts))
            time.sleep(0.2)  # the counters are updated just after the last token is handed out
            assert all(response.usage.completion_tokens == 32 for response in responses)
            assert max(response.usage.prompt_tokens for response in responses) <= 32
            return scheduler_stats(served)

    shared = serve_all()
    assert shared["peak_batch"] >= 48, shared  # most of the 64 ran together
    assert shared["peak_cartridge_kv_bytes"] == cartridge_bytes, shared  # one copy, however many rows
    # Their own tokens only: at most 32 prompt + 32 generated slots a row (padding included).
    assert shared["peak_kv_bytes"] <= 64 * 64 * slot_bytes, shared
    # The row pool behind them grows by doubling rows and slots, so it holds at most 4x that.
    capacity = shared["peak_kv_capacity_bytes"]
    assert shared["peak_kv_bytes"] <= capacity <= 4 * 64 * 64 * slot_bytes, shared
    copied = serve_all("--copy-cartridge-kv")
    assert copied["peak_cartridge_kv_bytes"] == 0, copied
    assert copied["peak_kv_bytes"] >= copied["peak_batch"] * cartridge_bytes, copied


def test_a_cartridge_that_cannot_fit_beside_those_in_use_gets_503(cartridges, tmp_path):
    """--max-cartridge-memory holds exactly doc0: while a request streams on doc0, a request on doc2 gets
    503 cartridge_memory_full (doc0 is in use, so it is not evicted); once it ends, doc2 loads."""
    embeddings = load_file(str(cartridges / NAMES[0] / "adapter_model.safetensors"))["prompt_embeddings"]
    budget = embeddings.numel() * 4  # doc0's K and V, float32
    with running_server(cartridges, tmp_path / "server.log", "--no-request-log", "--max-cartridge-memory",
                            str(budget)) as served:
        api = client(served)
        stream = api.completions.create(model=NAMES[0], prompt=PROMPTS[0], max_tokens=64, temperature=0,
                                        stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))  # doc0 is in use now
        with pytest.raises(openai.InternalServerError) as error:
            api.completions.create(model=NAMES[2], prompt=PROMPTS[2], max_tokens=1)
        assert error.value.status_code == 503
        assert error.value.body["code"] == "cartridge_memory_full", error.value.body
        for _ in stream:
            pass
        assert api.completions.create(model=NAMES[2], prompt=PROMPTS[2], max_tokens=1, temperature=0).choices
        stats = server_stats(served)["cartridges"]
        assert stats["refusals"] == 1 and stats["held_bytes"] <= budget, stats

