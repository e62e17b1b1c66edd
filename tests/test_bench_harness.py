"""The peer benchmark machinery (bench/run_all.py, bench/peers/) on the tiny Monaco extract.

The full suite is too slow for `make test`; this runs its real code path (wrapped subprocess stages,
worker protocol, tables, the BENCHMARKS.md section writer) with s2vec and the pyosmium peer on this
interpreter, so the script cannot silently rot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import osmium
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import run_all
from peers.harness import run_stage
from peers.venvs import MARKER, ensure_venv, venv_path

from s2vec_core.taxonomy import FILTER_KEYS

MONACO = ROOT / "data/osm/monaco-2023.osm.pbf"


def test_suite_on_monaco_writes_only_its_section(tmp_path):
    bench_md = tmp_path / "BENCHMARKS.md"
    bench_md.write_text(
        "# Benchmarks\n\n## Other\n\nkeep me\n\n## Peers\n\nold table\n\n## Later\n\nkeep me too\n"
    )
    run_all.main(
        [
            "--peers",
            "pyosmium",
            "--reuse-python",
            "pyosmium",
            "--inputs",
            "monaco",
            "--stages",
            "extract",
            "--out",
            str(tmp_path / "out"),
            "--benchmarks",
            str(bench_md),
        ]
    )

    results = json.loads((tmp_path / "out/results.json").read_text())
    by_tool = {r["tool"]: r for r in results}
    assert set(by_tool) == {"s2vec", "pyosmium"}
    for r in results:
        assert r["status"] == "ok", r["error"]
        assert r["wall_s"] > 0 and r["peak_rss_mb"] > 1
    assert by_tool["s2vec"]["detail"]["cells"] > 0

    # The peer's count is the throughput unit: check it against an independent count here.
    class Count(osmium.SimpleHandler):
        n = 0

        def node(self, o):
            self.n += 1

        def way(self, o):
            self.n += 1

        def relation(self, o):
            self.n += 1

    c = Count()
    c.apply_file(str(MONACO), filters=[osmium.filter.KeyFilter(*FILTER_KEYS)])
    assert by_tool["pyosmium"]["detail"]["tagged_objects"] == c.n

    text = bench_md.read_text()
    assert "keep me\n" in text and "keep me too" in text and "old table" not in text
    assert text.index("## Other") < text.index("## Peers") < text.index("## Later")
    peers = text[text.index("## Peers") : text.index("## Later")]
    assert f"{c.n:,} tagged features" in peers
    assert "| s2vec | ok |" in peers and "| pyosmium | ok |" in peers
    assert "bench/run_all.py --peers pyosmium" in peers


def test_failing_and_hanging_stages_are_reported_not_raised(tmp_path):
    bad = run_stage(
        "x",
        "extract",
        "in",
        [sys.executable, "-c", "import sys; sys.exit('boom')"],
        timeout=30,
        log_dir=tmp_path,
    )
    assert bad.status == "failed" and "boom" in bad.error
    missing = run_stage("x", "extract", "in", ["/nonexistent/tool"], timeout=30, log_dir=tmp_path)
    assert missing.status == "failed" and "nonexistent" in missing.error
    silent = run_stage(
        "x", "extract", "in", [sys.executable, "-c", "print('no result')"], timeout=30, log_dir=tmp_path
    )
    assert silent.status == "failed" and "RESULT" in silent.error
    hung = run_stage(
        "x",
        "extract",
        "in",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        timeout=1,
        log_dir=tmp_path,
    )
    assert hung.status == "timeout" and hung.wall_s < 30


def test_peak_rss_is_the_commands_own(tmp_path):
    """A 300 MB allocation shows up; a tiny command does not inherit this (large) process's RSS."""
    big = run_stage(
        "x",
        "s",
        "in",
        [
            sys.executable,
            "-c",
            ("b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]);print('RESULT {}')"),
        ],
        timeout=60,
        log_dir=tmp_path,
    )
    small = run_stage("x", "s", "in2", ["true"], timeout=60, log_dir=tmp_path, expect_result=False)
    assert big.status == small.status == "ok"
    assert big.peak_rss_mb > 300
    assert small.peak_rss_mb < 30


def test_venv_cache_is_keyed_by_pins(tmp_path):
    steps = [["somepkg==1.0"]]
    assert venv_path("p", steps, tmp_path) != venv_path("p", [["somepkg==1.1"]], tmp_path)
    assert venv_path("p", steps, tmp_path) == venv_path("p", [["somepkg==1.0"]], tmp_path)
    # A complete cached environment is reused as is, without any installer run.
    path = venv_path("p", steps, tmp_path)
    (path / "bin").mkdir(parents=True)
    (path / "bin/python").symlink_to(sys.executable)
    (path / MARKER).write_text("{}")
    assert ensure_venv("p", steps, root=tmp_path) == path / "bin/python"


def test_unknown_peer_is_refused():
    with pytest.raises(SystemExit):
        run_all.parse_args(["--peers", "nosuchpeer"])
