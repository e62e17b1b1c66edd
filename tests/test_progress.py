"""Progress lines carry the count, share, rate and time left; the bar appears only on a terminal."""

import io
import logging

from s2vec_assets.progress import ProgressLog


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_have_rate_and_time_left_and_the_last_one_says_done(caplog):
    caplog.set_level(logging.INFO)
    progress = ProgressLog(
        logging.getLogger("t"), "monaco: embedding", 400, "images", every_s=0, stream=io.StringIO()
    )
    for done in (100, 400):
        progress(done)
    first, last = (r.getMessage() for r in caplog.records)
    assert first.startswith("monaco: embedding: 100/400 images (25%), ") and "images/s, ~" in first
    assert first.endswith(" s left")
    assert last.startswith("monaco: embedding: 400/400 images (100%), ") and "left" not in last


def test_lines_are_rate_limited_but_the_end_is_always_logged(caplog):
    caplog.set_level(logging.INFO)
    progress = ProgressLog(logging.getLogger("t"), "x", 10, "shards", every_s=3600, stream=io.StringIO())
    for done in range(1, 11):
        progress(done)
    assert [r.getMessage().split(":")[1].split()[0] for r in caplog.records] == ["10/10"]


def test_a_bar_goes_to_a_terminal_and_nothing_to_a_file():
    terminal, file = _Terminal(), io.StringIO()
    for stream in (terminal, file):
        progress = ProgressLog(logging.getLogger("t"), "x", 4, "shards", stream=stream)
        progress(2)
        progress(4)
    assert "\r[##############..............] x: 2/4 shards (50%)" in terminal.getvalue()
    assert terminal.getvalue().endswith("\n") and file.getvalue() == ""


def test_the_total_can_arrive_with_the_work(caplog):
    caplog.set_level(logging.INFO)
    progress = ProgressLog(
        logging.getLogger("t"), "monaco: extraction", 0, "shards", every_s=0, stream=io.StringIO()
    )
    progress(0, 8)
    progress(8, 8)
    assert caplog.records[-1].getMessage().startswith("monaco: extraction: 8/8 shards (100%)")
