"""A local Dagster webserver (`dagster dev` or `dagster-webserver`) on a free port, waited for and
always stopped: the UI bench and the UI tests each start one and must not leave one behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

HOST = "127.0.0.1"
# Not yet listening, or listening but still loading the code location.
NOT_READY = (urllib.error.URLError, ConnectionError, TimeoutError)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    request = urllib.request.Request(
        f"http://{HOST}:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def has_assets(port: int) -> bool:
    """Ready once the code location is loaded, not merely once the webserver answers."""
    return bool(
        graphql(port, "{ assetNodes { assetKey { path } } }", timeout=10).get("data", {}).get("assetNodes")
    )


def answers(port: int) -> bool:
    with urllib.request.urlopen(f"http://{HOST}:{port}/server_info", timeout=5) as response:
        return response.status == 200


@contextlib.contextmanager
def serving(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    log: Path,
    ready: Callable[[int], bool],
    timeout_s: float,
) -> Iterator[int]:
    """`command` plus `-h HOST -p <free port>`, output to `log`; yields the port once `ready(port)`.
    Raises RuntimeError with the log's tail if it exits or is not ready within `timeout_s`."""
    port = free_port()
    with log.open("w") as out:
        server = subprocess.Popen(
            [*command, "-h", HOST, "-p", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: webserver, daemon and code server go together
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if server.poll() is not None:
                    raise RuntimeError(
                        f"{command[0]} exited (rc {server.returncode}): {log.read_text()[-3000:]}"
                    )
                with contextlib.suppress(*NOT_READY):
                    if ready(port):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{command[0]} not ready in {timeout_s:g} s: {log.read_text()[-3000:]}"
                    )
                time.sleep(1)
            yield port
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:  # dagster dev can hang on shutdown: the group goes anyway
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
