"""Shared by the workers (stdlib only: workers run inside peer venvs): parse the job, print the result."""

from __future__ import annotations

import json
import resource
import sys


def job() -> dict:
    return json.loads(sys.argv[1])


def report(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def peak_rss_mb() -> float:
    """High-water RSS so far of this process or of its largest finished child (spawned pools)."""
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kib, children_kib) / 1024
