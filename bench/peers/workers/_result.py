"""Shared by the workers (stdlib only: workers run inside peer venvs): parse the job, print the result."""

from __future__ import annotations

import json
import sys


def job() -> dict:
    return json.loads(sys.argv[1])


def report(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)
