#!/usr/bin/env python3
"""Memory soak of `cartridge serve` under mixed traffic: does --max-cartridge-memory bound the cartridge KV
the server holds, and does the process stop growing?

One server, --max-cartridge-memory far below the cartridges on offer, for --minutes: --clients threads
send requests back to back, each picking at random a single cartridge (60%), a composition of 2-3
cartridges (20%), the base model (8%), 1-24 generated tokens, streaming or not; a malformed request (6%:
broken JSON, an unknown cartridge, a number out of range, a wrong field type); or a streaming request whose
client hangs up after the first event (6%). Every second the server's RSS (/proc/<pid>/status) and
GET /v1/stats are sampled. Cartridges are made by `cartridge init
--random` (their values do not matter here, only their size).

Prints one markdown table. Usage: .venv/bin/python bench/serve_soak.py [--minutes 10]
"""
import argparse
import concurrent.futures
import json
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rss_bytes(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
        return json.loads(response.read())


def post(port, body):
    """The HTTP status of one completion (the stream read to its end); `body` is a dict or raw bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def post_and_hang_up(port, body):
    """Sends a streaming completion, reads until the first event arrives, then closes the connection."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                           b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        received = b""
        while b"data:" not in received:
            chunk = connection.recv(4096)
            if not chunk:
                break
            received += chunk
    return "hung up"


MALFORMED = [
    b'{"prompt": "Tell me", "max_tokens": ',  # broken JSON
    b'{"prompt": "Tell me", "model": "no-such-cartridge"}',
    b'{"prompt": "Tell me", "max_tokens": -3}',
    b'{"prompt": "Tell me", "temperature": 1e400}',
    b'{"prompt": ["Tell", 7], "max_tokens": "many"}',
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(ROOT / "build" / "cartridge"))
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--cartridges", type=int, default=12)
    parser.add_argument("--cartridge-tokens", type=int, default=256)
    parser.add_argument("--budget-mib", type=int, default=64, help="--max-cartridge-memory, MiB")
    parser.add_argument("--max-connections", type=int, help="passed to serve (default: serve's own)")
    parser.add_argument("--max-concurrent-requests", type=int,
                        help="passed to serve (default: serve's own); must be below --max-connections")
    args = parser.parse_args()
    budget = args.budget_mib << 20
    rng = random.Random(20261206)

    with tempfile.TemporaryDirectory(prefix="serve_soak_") as scratch:
        scratch = pathlib.Path(scratch)
        folder = scratch / "cartridges"
        names = [f"c{index}" for index in range(args.cartridges)]
        print(f"making {len(names)} cartridges of {args.cartridge_tokens} tokens...", file=sys.stderr)
        for name in names:
            subprocess.run([args.bin, "init", "--model", args.model, "--random", "--tokens",
                            str(args.cartridge_tokens), "--out", str(folder / name), "--quiet"], check=True,
                           capture_output=True)
        log_path = scratch / "server.log"
        log = open(log_path, "w")
        server = subprocess.Popen([args.bin, "serve", "--model", args.model, "--cartridges", str(folder), "--port",
                                   "0", "--quiet", "--no-request-log", "--max-batch", "16",
                                   "--max-cartridge-memory", str(budget)] +
                                  (["--max-connections", str(args.max_connections)] if args.max_connections else []) +
                                  (["--max-concurrent-requests", str(args.max_concurrent_requests)]
                                   if args.max_concurrent_requests else []),
                                  stdout=subprocess.DEVNULL, stderr=log)
        port = None
        while port is None:
            if server.poll() is not None:
                raise RuntimeError("server did not start: " + log_path.read_text())
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", log_path.read_text())
            port = int(found.group(1)) if found else time.sleep(0.2)
        base_model = pathlib.Path(args.model).name.removesuffix(".gguf")

        def one_request():
            """Sends one request of the mix; returns its status (or "hung up")."""
            kind = rng.random()
            body = {"prompt": "Tell me what you hold.", "max_tokens": rng.randint(1, 24), "temperature": 0,
                    "stream": rng.random() < 0.5}
            if kind < 0.6:
                body["model"] = rng.choice(names)
            elif kind < 0.8:
                body.update(model=base_model, cartridges=rng.sample(names, rng.randint(2, 3)))
            elif kind < 0.88:
                body["model"] = base_model
            elif kind < 0.94:
                return post(port, rng.choice(MALFORMED))
            else:
                body.update(model=rng.choice(names), stream=True, max_tokens=24)
                return post_and_hang_up(port, body)
            return post(port, body)

        stop = threading.Event()
        statuses, samples = {}, []
        lock = threading.Lock()

        def client():
            while not stop.is_set():
                status = one_request()
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

        def sampler():
            while not stop.is_set():
                stats = get(port, "/v1/stats")
                samples.append({"t": time.time(), "rss": rss_bytes(server.pid), **stats["cartridges"],
                                "batch_cartridge_kv": stats["scheduler"].get("cartridge_kv_bytes", 0)})
                time.sleep(1)

        start = time.time()
        print(f"soaking for {args.minutes} minutes with {args.clients} clients...", file=sys.stderr)
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.clients + 1) as pool:
            futures = [pool.submit(client) for _ in range(args.clients)] + [pool.submit(sampler)]
            time.sleep(args.minutes * 60)
            stop.set()
            for future in futures:
                future.result()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()

    warm = [s for s in samples if s["t"] - start >= 60] or samples  # after the first minute
    half = [s for s in samples if s["t"] - start >= args.minutes * 30] or samples
    mib = lambda value: f"{value / 2**20:.1f}"
    print(f"Memory soak, {pathlib.Path(args.model).name}: {args.minutes:g} min, {args.clients} clients, "
          f"{len(names)} cartridges of {args.cartridge_tokens} tokens "
          f"({mib(samples[-1]['resident_bytes'] / max(samples[-1]['entries'], 1))} MiB each), "
          f"--max-cartridge-memory {args.budget_mib} MiB; mixed traffic (single 60%, compositions of 2-3 20%, "
          "base model 8%, malformed 6%, streaming then hanging up 6%)"
          f"{f', --max-connections {args.max_connections}' if args.max_connections else ''}"
          f"{f', --max-concurrent-requests {args.max_concurrent_requests}' if args.max_concurrent_requests else ''}.\n")
    print("| requests | by status | loads | evictions | refusals | max held cartridge KV MiB | budget MiB | "
          "RSS after 1 min MiB | RSS max MiB | RSS at end MiB | RSS change over the second half MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    last = samples[-1]
    print(f"| {sum(statuses.values())} | {', '.join(f'{code}: {count}' for code, count in sorted(statuses.items(), key=str))} | "
          f"{last['loads']} | {last['evictions']} | {last.get('refusals', 0)} | "
          f"{mib(max(s.get('held_bytes', s['resident_bytes']) for s in samples))} | {args.budget_mib} | "
          f"{mib(warm[0]['rss'])} | {mib(max(s['rss'] for s in samples))} | {mib(last['rss'])} | "
          f"{(half[-1]['rss'] - half[0]['rss']) / 2**20:+.1f} |")


if __name__ == "__main__":
    main()
