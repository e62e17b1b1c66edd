"""Progress of a long step, for the people watching it: rate and time left in the run's log, and a bar
on the terminal when one is attached (`s2vec run` in a shell; never in a Dagster worker's log file)."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import dagster as dg

_BAR = 28


class ProgressLog:
    """Call with the amount done so far (and the total, where only the work itself learns it, as the
    shard count of an extraction). A log line goes out at most every `every_s` seconds and once at the
    end: '<what>: 1,200/4,000 images (30%), 850 images/s, ~3 s left'."""

    def __init__(
        self,
        log: dg.DagsterLogManager | logging.Logger,
        what: str,
        total: int,
        unit: str,
        every_s: float = 10.0,
        stream: TextIO | None = None,
    ) -> None:
        self.log, self.what, self.total, self.unit, self.every_s = log, what, total, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.perf_counter()
        self.logged_at = self.started

    def line(self, done: int) -> str:
        seconds = time.perf_counter() - self.started
        rate = done / seconds if seconds > 0 else 0.0
        share = f" ({done / self.total:.0%})" if self.total else ""
        left = f", ~{(self.total - done) / rate:.0f} s left" if rate > 0 and done < self.total else ""
        return f"{self.what}: {done:,}/{self.total:,} {self.unit}{share}, {rate:,.0f} {self.unit}/s{left}"

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        now = time.perf_counter()
        finished = done >= self.total
        if self.tty:
            filled = round(_BAR * done / self.total) if self.total else _BAR
            self.stream.write(f"\r[{'#' * filled}{'.' * (_BAR - filled)}] {self.line(done)}\033[K")
            self.stream.write("\n" if finished else "")
            self.stream.flush()
        if finished or now - self.logged_at >= self.every_s:
            self.logged_at = now
            self.log.info(self.line(done))
