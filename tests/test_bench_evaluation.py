"""bench/bench_evaluation.py end to end on the bundled regions (baselines only, no MAE): it must run to
its report whichever transfers the regions' sizes allow."""

from __future__ import annotations

import pytest

from tests.conftest import run_bench


@pytest.mark.slow
def test_bundled_baselines_run_to_a_report(tmp_path):
    out = run_bench("bench_evaluation.py", "--no-s2vec", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "bundled" / "report.md").is_file()
    # Monaco is too small to train a transfer model for Liechtenstein: a note says so instead of a score.
    assert "transfer to liechtenstein/" in out.stdout and "need at least 20" in out.stdout
    assert "| monaco | log1p_address_density | raw |" in out.stdout
