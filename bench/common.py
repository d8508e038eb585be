"""Helpers the bench scripts share: a free port, waiting for a port, an Invoke API call and
starting `qa-host serve`. One copy each, so a fix (a timeout, a better error) reaches every
script. Standard library only: the scripts run under any python3.

Scripts run as `python3 bench/x.py`, so bench/ is on `sys.path` and `from common import ...`
works; scripts/ add bench/ to `sys.path` themselves.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

LISTENING = "listening on "  # what `qa-host serve` prints on stderr once it accepts, then its URL


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it), for a child that needs one up front."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    """Until something accepts on 127.0.0.1:`port`, for servers that print no ready line
    (cargo-lambda's emulator)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"emulator did not listen on {port}")


def invoke(port: int, event: dict, answer: str | None = None) -> float:
    """One round trip through the Invoke API of cargo-lambda's emulator on `port`, in ms. The
    reply must carry an answer (`answer` itself when given): a timing of an error is no timing."""
    started = time.perf_counter()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/2015-03-31/functions/_/invocations", data=json.dumps(event).encode())
    with urllib.request.urlopen(req, timeout=120) as resp:
        body = json.loads(resp.read())
    assert "Answer" in body, body
    assert answer is None or body["Answer"] == answer, body
    return (time.perf_counter() - started) * 1e3


def serve(command: list[str], env: dict | None = None, cwd: Path | None = None,
          timeout: float | None = 600, before: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """Starts `command` (a `qa-host serve` on port 0, or what execs one) and waits for its
    "listening on" line: the process and its base URL. Port 0 and the printed URL, not a port
    picked beforehand, so no other process can take the port in between. On exit or after
    `timeout` seconds, exits saying so with the stderr read so far. `before`, when given,
    receives the stderr lines printed before that line (the start-up log)."""
    proc = subprocess.Popen(command, env=env, cwd=cwd, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    found: list[str] = []

    def read() -> None:
        # Stops at the line, so stderr after it stays unread, as before this helper.
        for line in proc.stderr:
            if LISTENING in line:
                found.append(line.split(LISTENING, 1)[1].strip())
                return
            seen.append(line)

    # A thread, since reading a pipe line by line has no timeout of its own.
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if found:
        if before is not None:
            before.extend(seen)
        return proc, found[0]
    if reader.is_alive():
        proc.kill()
        reader.join(10)
        why = f"printed no {LISTENING.strip()!r} line within {timeout:.0f} s (killed)"
    else:
        why = f"exited {proc.wait()} before listening"
    output = re.sub(r"\x1b\[[0-9;]*m", "", "".join(seen[-40:])).rstrip()
    raise SystemExit(f"`{' '.join(command)}` {why}; its stderr:\n{output or '(nothing)'}")


def start_host(qa_host: Path, env: dict | None = None, timeout: float | None = 600) -> tuple[subprocess.Popen, str]:
    """`qa-host serve` on a port of 127.0.0.1 it picks, through `serve`."""
    return serve([str(qa_host), "serve", "--addr", "127.0.0.1:0"], env, timeout=timeout)
