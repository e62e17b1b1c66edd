"""Downloads that cannot poison the extract cache: a real bundled PBF served by a real HTTP server on
127.0.0.1 that cuts connections, serves error pages, answers Range requests and fails on purpose."""

import hashlib
import http.server
import itertools
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from s2vec_core import catalog
from s2vec_core.pbf_framing import PBFFramingError, check_pbf_framing

REPO = Path(__file__).resolve().parent.parent
MONACO = REPO / "data/osm/monaco-2023.osm.pbf"  # the smallest bundled extract (see regions.toml)
DATA = MONACO.read_bytes()
BLOCKS = check_pbf_framing(MONACO)
INSIDE = BLOCKS[3].offset + 4 + BLOCKS[3].header_size + BLOCKS[3].data_size // 2
"""A byte offset in the middle of a data block's Blob."""
BETWEEN = BLOCKS[3].offset
"""A byte offset exactly between two fileblocks."""
SECRET = "X-Amz-Signature=s3cr3tdeadbeef"
HTML = b"<!DOCTYPE html><html><body><h1>Rate limited</h1>Please try again later.</body></html>"


@dataclass
class Plan:
    body: bytes = DATA
    content_type: str = "application/octet-stream"
    ranges: bool = True
    """Advertise `Accept-Ranges: bytes` and answer Range requests with 206."""
    fail_first: int = 0
    """Answer the first this many requests with 503."""
    cut_at: int | None = None
    """Send only the body up to this byte offset (after a full Content-Length), then close."""
    cut_times: int = 0
    """How many answers are cut (after the failures)."""
    requests: list[dict] = field(default_factory=list)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        plan: Plan = self.server.plan
        plan.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if len(plan.requests) <= plan.fail_first:
            self.send_error(503, "busy")
            return
        body, start = plan.body, 0
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if asked and plan.ranges:
            start = int(asked[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Content-Type", plan.content_type)
        if plan.ranges:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", '"monaco-2023"')
        self.end_headers()
        end = len(body)
        cut_so_far = sum(1 for r in plan.requests[plan.fail_first : -1])
        if plan.cut_at is not None and cut_so_far < plan.cut_times:
            end = plan.cut_at
        self.wfile.write(body[start:end])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.plan = Plan()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def region_at(url: str, name: str = "monaco", sha256: str | None = None) -> catalog.Region:
    return catalog.Region(name, url, sha256=sha256)


def resolve(region, cache, sleeps=None, **kw):
    sleeps = [] if sleeps is None else sleeps
    return catalog.resolve_source(region, cache, timeout_s=5, sleep=sleeps.append, **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The framing walk


def test_framing_walk_covers_the_bundled_extracts_to_the_last_byte():
    for path in sorted((REPO / "data/osm").glob("*.osm.pbf")):
        blocks = check_pbf_framing(path)
        assert blocks[0].type == "OSMHeader" and {b.type for b in blocks[1:]} == {"OSMData"}
        assert blocks[-1].end == path.stat().st_size
        assert all(a.end == b.offset for a, b in itertools.pairwise(blocks))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (DATA[:INSIDE], "truncated"),
        (DATA[: BLOCKS[2].offset + 2], "length prefix"),
        (DATA[: BLOCKS[2].offset + 4 + 5], "inside the BlobHeader"),
        (DATA + b"\0\0", "length prefix"),
        (DATA + b"<html>", "corrupt block length"),
        (HTML, "not an OSM PBF file"),
        (DATA[BLOCKS[1].offset :], "not 'OSMHeader'"),
        (b"", "empty file"),
    ],
)
def test_framing_walk_refuses_cut_padded_and_foreign_files(tmp_path, data, message):
    path = tmp_path / "x.osm.pbf"
    path.write_bytes(data)
    with pytest.raises(PBFFramingError, match=message):
        check_pbf_framing(path)


def test_a_cut_between_fileblocks_is_well_framed(tmp_path):
    """Why the byte count matters: framing alone cannot see this cut."""
    path = tmp_path / "x.osm.pbf"
    path.write_bytes(DATA[:BETWEEN])
    assert check_pbf_framing(path)[-1].end == BETWEEN


# Downloads that fail leave nothing behind


@pytest.mark.parametrize("cut_at", [INSIDE, BETWEEN], ids=["inside-a-block", "between-blocks"])
def test_a_connection_closed_early_caches_nothing_and_says_what_to_do(tmp_path, server, cut_at):
    srv, base = server
    srv.plan.ranges = False
    srv.plan.cut_at, srv.plan.cut_times = cut_at, 99
    sleeps = []
    url = f"{base}/monaco.osm.pbf?{SECRET}"
    with pytest.raises(catalog.DownloadError) as err:
        resolve(region_at(url), tmp_path / "cache", sleeps)
    message = str(err.value)
    assert "'monaco'" in message and f"{base}/monaco.osm.pbf" in message
    assert f"{cut_at} of {len(DATA)} bytes" in message and "tried 3 times" in message
    assert str(tmp_path / "cache" / "monaco-") in message and "run again" in message
    assert "s3cr3t" not in message and "?" not in message
    assert list((tmp_path / "cache").iterdir()) == []
    assert len(srv.plan.requests) == 3 and sleeps == [0.5, 1.0]


def test_an_html_page_served_with_200_is_not_cached(tmp_path, server):
    srv, base = server
    srv.plan.body, srv.plan.content_type = HTML, "text/html"
    with pytest.raises(catalog.SourceError) as err:
        resolve(region_at(f"{base}/monaco.osm.pbf?{SECRET}"), tmp_path / "cache")
    message = str(err.value)
    assert "unreadable OSM file" in message and "not an OSM PBF file" in message
    assert "'monaco'" in message and "[regions.monaco]" in message and "s3cr3t" not in message
    assert list((tmp_path / "cache").iterdir()) == []
    assert len(srv.plan.requests) == 1  # a complete answer with the wrong content is not retried


def test_a_checksum_mismatch_names_the_fix_and_caches_nothing(tmp_path, server):
    _, base = server
    with pytest.raises(catalog.SourceError, match="update `sha256`") as err:
        resolve(region_at(f"{base}/m.osm.pbf?{SECRET}", sha256="0" * 64), tmp_path / "cache")
    assert "s3cr3t" not in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_file_is_not_retried_and_hides_the_query(tmp_path, server):
    srv, base = server
    srv.plan.fail_first = 0

    class NotFound(Handler):
        def do_GET(self):
            self.server.plan.requests.append({"path": self.path, "range": None})
            self.send_error(404)

    srv.RequestHandlerClass = NotFound
    with pytest.raises(catalog.DownloadError, match="HTTP Error 404") as err:
        resolve(region_at(f"{base}/gone.osm.pbf?{SECRET}"), tmp_path / "cache")
    assert "s3cr3t" not in str(err.value) and f"{base}/gone.osm.pbf " in str(err.value)
    assert len(srv.plan.requests) == 1
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_refused_connection_is_retried_then_reported(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    sleeps = []
    with pytest.raises(catalog.DownloadError, match="refused.*tried 3 times"):
        resolve(region_at(f"http://127.0.0.1:{port}/m.osm.pbf"), tmp_path / "cache", sleeps, backoff_s=0.01)
    assert sleeps == [0.01, 0.02]
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_malformed_url_is_reported_without_its_query(tmp_path):
    with pytest.raises(catalog.DownloadError) as err:
        resolve(region_at(f"http://127.0.0.1:1/a b.osm.pbf?{SECRET}"), tmp_path / "cache")
    assert "s3cr3t" not in str(err.value) and "'monaco'" in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []


# Retries and resume


def test_a_cut_download_resumes_with_a_range_request(tmp_path, server):
    srv, base = server
    srv.plan.cut_at, srv.plan.cut_times = INSIDE, 1
    path = resolve(region_at(f"{base}/monaco.osm.pbf"), tmp_path / "cache")
    assert [r["range"] for r in srv.plan.requests] == [None, f"bytes={INSIDE}-"]
    assert sha(path) == sha(MONACO)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]


def test_without_accept_ranges_a_cut_download_starts_again(tmp_path, server):
    srv, base = server
    srv.plan.ranges = False
    srv.plan.cut_at, srv.plan.cut_times = BETWEEN, 2
    sleeps = []
    path = resolve(region_at(f"{base}/monaco.osm.pbf"), tmp_path / "cache", sleeps)
    assert [r["range"] for r in srv.plan.requests] == [None, None, None]
    assert sha(path) == sha(MONACO) and sleeps == [0.5, 1.0]


def test_server_errors_are_retried_with_backoff(tmp_path, server):
    srv, base = server
    srv.plan.fail_first = 2
    sleeps = []
    path = resolve(region_at(f"{base}/monaco.osm.pbf"), tmp_path / "cache", sleeps, backoff_s=0.1)
    assert len(srv.plan.requests) == 3 and sleeps == [0.1, 0.2]
    assert sha(path) == sha(MONACO)


def test_server_errors_beyond_the_tries_are_reported(tmp_path, server):
    srv, base = server
    srv.plan.fail_first = 5
    with pytest.raises(catalog.DownloadError, match="503.*tried 2 times"):
        resolve(region_at(f"{base}/monaco.osm.pbf"), tmp_path / "cache", tries=2)
    assert len(srv.plan.requests) == 2
    assert list((tmp_path / "cache").iterdir()) == []


# The cache


@pytest.mark.parametrize("poison", [DATA[:INSIDE], HTML], ids=["cut", "html"])
def test_a_poisoned_cache_file_is_fetched_again(tmp_path, server, poison):
    srv, base = server
    region = region_at(f"{base}/monaco.osm.pbf")
    cached = resolve(region, tmp_path / "cache")
    cached.write_bytes(poison)  # what an older downloader, or a crash, could have left there
    again = resolve(region, tmp_path / "cache")
    assert again == cached and sha(again) == sha(MONACO)
    assert len(srv.plan.requests) == 2
    assert resolve(region, tmp_path / "cache") == cached and len(srv.plan.requests) == 2  # cached now


def test_a_cached_file_with_the_wrong_checksum_is_fetched_again(tmp_path, server):
    srv, base = server
    region = region_at(f"{base}/monaco.osm.pbf", sha256=sha(MONACO))
    cached = resolve(region, tmp_path / "cache")
    cached.write_bytes(DATA[:BETWEEN])  # well framed, but not the pinned file
    assert sha(resolve(region, tmp_path / "cache")) == sha(MONACO) and len(srv.plan.requests) == 2


# Local sources


def test_a_cut_local_source_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.osm.pbf"
    broken.write_bytes(DATA[:INSIDE])
    with pytest.raises(catalog.SourceError) as err:
        catalog.resolve_source(catalog.Region("monaco", str(broken)), tmp_path / "cache")
    message = str(err.value)
    assert message.startswith(f"region 'monaco': {broken}: unreadable OSM file (file is truncated")
    assert "replace the file" in message and "\n" not in message
