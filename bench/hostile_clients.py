#!/usr/bin/env python3
"""Server memory and liveness under hostile clients (issue 20): `cartridge serve` with the default model
and one cartridge, on 127.0.0.1.

Rows:
- "chunked body": one request of --body-mb MB sent with Transfer-Encoding: chunked (64 KiB chunks) to
  /v1/completions: how much of it the server read before answering, its status, and the server's resident
  memory (VmRSS) before and after.
- "slow clients": --slow-connections connections that each send one header byte every 2 s; while they are
  open, how long GET /health and a 4-token completion take (timed out after --deadline s).

Prints one markdown table. Usage: .venv/bin/python bench/hostile_clients.py [--bin build/cartridge]
"""
import argparse
import json
import pathlib
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def resident_mb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(binary, model, cartridges, log_path):
    log = open(log_path, "w")
    process = subprocess.Popen([binary, "serve", "--model", str(model), "--cartridges", str(cartridges), "--port", "0",
                                "--quiet"], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 300
    while time.time() < deadline:
        found = re.search(r"on http://127\.0\.0\.1:(\d+)", log_path.read_text())
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            raise SystemExit("the server exited: " + log_path.read_text())
        time.sleep(0.2)
    raise SystemExit("the server did not start")


def chunked_body(port, megabytes):
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < megabytes * 1024 * 1024:
                connection.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            connection.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = b""
        try:
            while not response.endswith(b"}") and len(response) < 65536:
                data = connection.recv(65536)
                if not data:
                    break
                response += data
        except (ConnectionResetError, socket.timeout):
            pass
    status = response.split(b" ", 2)[1].decode() if response.startswith(b"HTTP/") else "none"
    return sent, status


def timed(function, deadline):
    start = time.time()
    result = {}

    def run():
        try:
            function()
            result["ok"] = True
        except Exception as error:  # noqa: BLE001 - any failure is "no answer"
            result["error"] = str(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(deadline)
    return f"{time.time() - start:.2f} s" if result.get("ok") else f"no answer in {deadline:.0f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=str(ROOT / "build" / "cartridge"))
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--body-mb", type=int, default=64)
    parser.add_argument("--slow-connections", type=int, default=150)
    parser.add_argument("--deadline", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        temporary = pathlib.Path(temporary)
        cartridges = temporary / "cartridges"
        subprocess.run([args.bin, "init", "--model", args.model, "--random", "--tokens", "16", "--out",
                        str(cartridges / "doc"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
        process, port = start_server(args.bin, args.model, cartridges, temporary / "server.log")
        rows = []
        try:
            before = resident_mb(process.pid)
            sent, status = chunked_body(port, args.body_mb)
            time.sleep(1)
            after = resident_mb(process.pid)
            rows.append(("chunked body", f"{args.body_mb} MB offered, {sent / 2**20:.1f} MB sent before the answer",
                         f"HTTP {status}", f"{before:.0f} -> {after:.0f} MB RSS"))

            stop = threading.Event()
            sockets = []

            def trickle():
                try:
                    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
                except OSError:
                    return
                sockets.append(connection)
                for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                    if stop.is_set():
                        break
                    try:
                        connection.send(bytes([byte]))
                    except OSError:
                        break
                    stop.wait(2.0)

            threads = [threading.Thread(target=trickle, daemon=True) for _ in range(args.slow_connections)]
            for thread in threads:
                thread.start()
            time.sleep(3)

            def health():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=args.deadline) as response:
                    response.read()

            def completion():
                body = json.dumps({"model": "doc", "prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode()
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=args.deadline) as response:
                    response.read()

            rows.append(("slow clients", f"{args.slow_connections} connections, 1 header byte / 2 s",
                         f"/health {timed(health, args.deadline)}; completion {timed(completion, args.deadline)}",
                         f"{resident_mb(process.pid):.0f} MB RSS"))
            stop.set()
            for connection in sockets:
                connection.close()
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    print("| case | load | answer | server memory |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
