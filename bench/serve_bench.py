#!/usr/bin/env python3
"""Serving throughput and KV memory: cartridges vs the whole document in context, and one shared copy of a
cartridge's KV vs a copy per request.

The paper's serving claim (arXiv 2506.06266): a cartridge is much smaller than its document's KV cache, so
one model serves many users, each with their own cartridge, at much higher throughput than with their
documents in context (26.4x throughput and 38.6x less memory on the paper's setup: Llama 8B, SGLang, H100).

Here, in one run, on one machine, with `cartridge serve` and the default model:
- each client has its own document (the sample document, rotated by paragraphs, truncated to --doc-tokens
  tokens) and its own cartridge of p = doc_tokens / 8 tokens made from it by `cartridge init`;
- "cartridge": a client asks its question with `model = <its cartridge>`;
- "in context": the same client sends its whole document followed by the question to the base model;
- at 1, 8 and 32 concurrent clients, each sending --requests-per-client requests one after another, every
  request generating exactly --max-tokens tokens (ignore_eos), greedy.
A fresh server serves each (mode, clients) cell, so its peak KV (from GET /v1/stats: the running batch's
own KV, rows x slots x bytes per slot with padding, plus the cartridge KV it reads) belongs to that cell
alone.

Experiment "shared" (issue 18): many clients on the same cartridges. 1 / 8 / 32 / 64 clients send one
request each, all on one cartridge or spread over 8, p = 512 tokens (made by `cartridge init` from
512-token documents), a prompt of at most 32 tokens and 32 generated tokens (ignore_eos, greedy). Three
modes: "shared KV" (the default server: one copy of each cartridge, attended once per step for all its
rows), "copied KV" (`--copy-cartridge-kv`: every request copies its cartridge into its own KV, the old
path) and "in context" (the cartridge's document, 4096 tokens = 8 p, before the question; only at the
smaller client counts, --in-context-clients, since its prefill dominates). Peak KV = the requests' own KV
at its largest plus the cartridge KV the running batch reads (GET /v1/stats).

Prints markdown tables. Usage: .venv/bin/python bench/serve_bench.py [--bin build/cartridge]
[--experiment per-user|shared|both]
"""
import argparse
import concurrent.futures
import json
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def post(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.loads(response.read())


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
        return json.loads(response.read())


class ServerProcess:
    def __init__(self, args, cartridges, log_path, max_batch=32, extra=()):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [args.bin, "serve", "--model", args.model, "--cartridges", str(cartridges), "--port", "0",
             "--max-batch", str(max_batch), "--max-tokens-limit", str(args.max_tokens), "--no-request-log",
             "--quiet", "--dtype", args.dtype, "--max-prefill-tokens", str(args.max_prefill_tokens),
             *(["--weights", args.weights] if args.weights else []), *extra],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 300
        self.port = None
        while self.port is None:
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start: " + pathlib.Path(log_path).read_text())
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", pathlib.Path(log_path).read_text())
            if found:
                self.port = int(found.group(1))
            else:
                time.sleep(0.2)

    def close(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def count_tokens(args, text):
    output = subprocess.run([args.bin, "tokenize", "--model", args.model, "--text", text, "--json"],
                            capture_output=True, text=True, check=True).stdout
    return len(json.loads(output)["ids"])


def make_documents(args, count):
    """`count` documents of about --doc-tokens tokens: the sample document rotated by paragraphs, cut at a
    word boundary. Returns (texts, their token counts)."""
    text = (ROOT / "examples" / "data" / "varnholm.md").read_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    texts, lengths = [], []
    for i in range(count):
        rotated = paragraphs[i % len(paragraphs):] + paragraphs[:i % len(paragraphs)]
        words = "\n\n".join(rotated * 4).split(" ")
        keep = len(words)
        for _ in range(4):  # converge on the word count that gives doc_tokens tokens
            tokens = count_tokens(args, " ".join(words[:keep]))
            if tokens == args.doc_tokens:
                break
            keep = max(1, min(len(words), int(keep * args.doc_tokens / tokens)))
        while keep > 1 and count_tokens(args, " ".join(words[:keep])) > args.doc_tokens:
            keep -= 1
        texts.append(" ".join(words[:keep]))
        lengths.append(count_tokens(args, texts[-1]))
    return texts, lengths


def run_cell(args, cartridges, mode, clients, documents_text, log_dir):
    server = ServerProcess(args, cartridges, log_dir / f"{mode}_{clients}.log")
    try:
        question = "\n\nQuestion: Who founded the town, and in which year?\nAnswer:"

        def one_client(index):
            tokens = 0
            for _ in range(args.requests_per_client):
                body = {"max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True}
                if mode == "cartridge":
                    body.update(model=f"user{index}", prompt=question)
                else:
                    body.update(model=server_model_id(args), prompt=documents_text[index] + question)
                response = post(server.port, "/v1/completions", body)
                tokens += response["usage"]["completion_tokens"]
            return tokens

        # Warm-up: load the cartridges (first use reads them from disk) and the model's kernels.
        with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
            if mode == "cartridge":
                list(pool.map(lambda i: post(server.port, "/v1/completions",
                                             {"model": f"user{i}", "prompt": "Hi", "max_tokens": 1}), range(clients)))
            else:
                post(server.port, "/v1/completions", {"model": server_model_id(args), "prompt": "Hi", "max_tokens": 1})
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
            generated = sum(pool.map(one_client, range(clients)))
        wall = time.perf_counter() - start
        stats = get(server.port, "/v1/stats")
        requests = clients * args.requests_per_client
        return {"mode": mode, "clients": clients, "requests": requests, "wall_s": wall,
                "requests_per_s": requests / wall, "tokens_per_s": generated / wall,
                # The requests' own KV plus the cartridge KV the batch reads (each peak; one copy per cartridge).
                "peak_kv_bytes": stats["scheduler"]["peak_kv_bytes"] + stats["scheduler"].get("peak_cartridge_kv_bytes", 0),
                "cartridge_bytes": stats["cartridges"]["resident_bytes"], "peak_batch": stats["scheduler"]["peak_batch"]}
    finally:
        server.close()


SHARED_MODES = {"shared KV": (), "copied KV": ("--copy-cartridge-kv",), "in context": ()}


def run_shared_cell(args, cartridges, mode, clients, cartridge_count, documents_text, log_dir):
    """`clients` requests at once, client i on cartridge user{i % cartridge_count}; returns the cell's row."""
    server = ServerProcess(args, cartridges, log_dir / f"shared_{mode.replace(' ', '_')}_{clients}_{cartridge_count}.log",
                           max_batch=max(args.shared_clients), extra=SHARED_MODES[mode])
    try:
        question = "\n\nQuestion: Who founded the town, and in which year?\nAnswer:"

        def body(index, prompt_only=False):
            base = {"max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True}
            if mode == "in context":
                return {**base, "model": server_model_id(args), "prompt": documents_text[index % cartridge_count] + question}
            return {**base, "model": f"user{index % cartridge_count}", "prompt": question}

        # Warm-up: load the cartridges and the model's kernels.
        for index in range(cartridge_count):
            post(server.port, "/v1/completions", {**body(index), "max_tokens": 1})
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
            responses = list(pool.map(lambda index: post(server.port, "/v1/completions", body(index)), range(clients)))
        wall = time.perf_counter() - start
        stats = get(server.port, "/v1/stats")["scheduler"]
        assert all(response["usage"]["completion_tokens"] == args.max_tokens for response in responses)
        return {"experiment": "shared", "mode": mode, "clients": clients, "cartridges": cartridge_count,
                "wall_s": wall, "requests_per_s": clients / wall, "peak_batch": stats["peak_batch"],
                "peak_own_kv_bytes": stats["peak_kv_bytes"],
                "peak_own_kv_capacity_bytes": stats.get("peak_kv_capacity_bytes", stats["peak_kv_bytes"]),
                "peak_cartridge_kv_bytes": stats.get("peak_cartridge_kv_bytes", 0),
                "prompt_tokens": max(response["usage"]["prompt_tokens"] for response in responses)}
    finally:
        server.close()


def shared_experiment(args, scratch):
    cartridges = scratch / "shared_cartridges"
    cartridges.mkdir()
    saved = args.doc_tokens
    args.doc_tokens = 8 * args.shared_cartridge_tokens
    documents_text, _ = make_documents(args, 8)
    args.doc_tokens = saved
    print(f"making 8 cartridges of {args.shared_cartridge_tokens} tokens...", file=sys.stderr)
    for index, text in enumerate(documents_text):
        doc_file = scratch / f"shared_doc{index}.txt"
        doc_file.write_text(text)
        subprocess.run([args.bin, "init", "--model", args.model, "--text-file", str(doc_file), "--tokens",
                        str(args.shared_cartridge_tokens), "--no-chat-template", "--out",
                        str(cartridges / f"user{index}"), "--quiet"], check=True, capture_output=True)
    results = []
    for cartridge_count in args.shared_cartridge_counts:
        for clients in args.shared_clients:
            for mode in SHARED_MODES:
                if mode == "in context" and clients not in args.in_context_clients:
                    continue
                print(f"running {mode}, {clients} clients on {cartridge_count} cartridge(s)...", file=sys.stderr)
                results.append(run_shared_cell(args, cartridges, mode, clients, cartridge_count, documents_text,
                                               scratch))
                print(f"  {json.dumps(results[-1])}", file=sys.stderr)  # kept if a later cell fails
    return results


def print_shared_table(args, results):
    weights = f", --weights {args.weights}" if args.weights else ""
    print(f"Many clients on the same cartridges, {server_model_id(args)} ({args.dtype}{weights}): one request per client, "
          f"cartridge p = {args.shared_cartridge_tokens} tokens, prompt {max(r['prompt_tokens'] for r in results if r['mode'] != 'in context')} "
          f"tokens, {args.max_tokens} generated tokens (greedy, ignore_eos); in context = the cartridge's "
          f"{8 * args.shared_cartridge_tokens}-token document before the prompt. Peak KV = the requests' own KV at "
          "its largest + the cartridge KV the running batch reads.\n")
    print("| cartridges | clients | mode | requests/s | vs copied KV | peak batch | peak own KV MiB | "
          "its storage MiB | cartridge KV MiB | peak KV MiB | copied / this |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        copied = next(r for r in results if r["mode"] == "copied KV" and r["clients"] == row["clients"]
                      and r["cartridges"] == row["cartridges"])
        total = row["peak_own_kv_bytes"] + row["peak_cartridge_kv_bytes"]
        copied_total = copied["peak_own_kv_bytes"] + copied["peak_cartridge_kv_bytes"]
        print(f"| {row['cartridges']} | {row['clients']} | {row['mode']} | {row['requests_per_s']:.2f} | "
              f"{row['requests_per_s'] / copied['requests_per_s']:.2f}x | {row['peak_batch']} | "
              f"{row['peak_own_kv_bytes'] / 2**20:.1f} | {row['peak_own_kv_capacity_bytes'] / 2**20:.1f} | "
              f"{row['peak_cartridge_kv_bytes'] / 2**20:.1f} | "
              f"{total / 2**20:.1f} | {copied_total / max(total, 1):.1f}x |")
    print()


def server_model_id(args):
    return pathlib.Path(args.model).name.removesuffix(".gguf")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(ROOT / "build" / "cartridge"))
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--weights", help="serve's --weights (default: serve's own default for --dtype)")
    parser.add_argument("--per-user-modes", nargs="+", choices=["cartridge", "in context"],
                        default=["cartridge", "in context"], help="the per-user experiment's modes")
    parser.add_argument("--doc-tokens", type=int, default=1024, help="document length per client, tokens")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-prefill-tokens", type=int, default=4096)
    parser.add_argument("--json-out", help="also write the raw results here")
    parser.add_argument("--experiment", choices=["per-user", "shared", "both"], default="both")
    parser.add_argument("--shared-clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--shared-cartridge-tokens", type=int, default=512)
    parser.add_argument("--shared-cartridge-counts", type=int, nargs="+", default=[1, 8],
                        help="cartridges the clients of the shared experiment spread over")
    parser.add_argument("--in-context-clients", type=int, nargs="*", default=[1, 8])
    args = parser.parse_args()
    results = []
    if args.experiment in ("shared", "both"):
        with tempfile.TemporaryDirectory(prefix="serve_bench_") as scratch:
            results = shared_experiment(args, pathlib.Path(scratch))
        print_shared_table(args, results)
    if args.experiment in ("per-user", "both"):
        results += per_user_experiment(args)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(results, indent=2))


def per_user_experiment(args):
    cartridge_tokens = args.doc_tokens // 8
    most_clients = max(args.clients)

    with tempfile.TemporaryDirectory(prefix="serve_bench_") as scratch:
        scratch = pathlib.Path(scratch)
        cartridges = scratch / "cartridges"
        cartridges.mkdir()
        documents_text, document_tokens = make_documents(args, most_clients)
        print(f"making {most_clients} cartridges of {cartridge_tokens} tokens...", file=sys.stderr)
        for index, text in enumerate(documents_text):
            doc_file = scratch / f"doc{index}.txt"
            doc_file.write_text(text)
            subprocess.run([args.bin, "init", "--model", args.model, "--text-file", str(doc_file), "--tokens",
                            str(cartridge_tokens), "--no-chat-template", "--out", str(cartridges / f"user{index}"),
                            "--quiet"], check=True, capture_output=True)

        results = []
        for clients in args.clients:
            for mode in args.per_user_modes:
                print(f"running {mode} with {clients} clients...", file=sys.stderr)
                results.append(run_cell(args, cartridges, mode, clients, documents_text, scratch))

    weights = f", --weights {args.weights}" if args.weights else ""
    print(f"Serving {server_model_id(args)} ({args.dtype}{weights}) with `cartridge serve`: each client has its own "
          f"document of {min(document_tokens)}-{max(document_tokens)} tokens; cartridge p = {cartridge_tokens} tokens (1/8). "
          f"{args.requests_per_client} requests per client, {args.max_tokens} generated tokens each (greedy, "
          f"ignore_eos). Peak KV = the running batch's KV cache at its largest (rows x slots, padding included).\n")
    print("| clients | mode | requests | wall s | requests/s | generated tokens/s | peak batch | peak KV MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['clients']} | {row['mode']} | {row['requests']} | {row['wall_s']:.2f} | "
              f"{row['requests_per_s']:.2f} | {row['tokens_per_s']:.1f} | {row['peak_batch']} | "
              f"{row['peak_kv_bytes'] / 2**20:.1f} |")
    if len(args.per_user_modes) < 2:
        return results
    print()
    print("| clients | throughput ratio (cartridge / in context) | peak KV ratio (in context / cartridge) |")
    print("|---:|---:|---:|")
    for clients in args.clients:
        cart = next(r for r in results if r["clients"] == clients and r["mode"] == "cartridge")
        icl = next(r for r in results if r["clients"] == clients and r["mode"] == "in context")
        print(f"| {clients} | {cart['tokens_per_s'] / icl['tokens_per_s']:.2f}x | "
              f"{icl['peak_kv_bytes'] / max(cart['peak_kv_bytes'], 1):.2f}x |")
    print("\nThe paper reports 26.4x throughput and 38.6x less memory on its own setup (Llama 8B, SGLang, "
          "H100, longer documents); the ratios above are this machine's, measured in this run.")
    return results


if __name__ == "__main__":
    main()
