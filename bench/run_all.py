"""The peer benchmark suite (`make bench`): s2vec and every peer on the same inputs, in one run.

Each peer runs in its own virtual environment under bench/venvs/ (built here on first use, cached by
its pinned requirement list; never a project dependency) and every stage in its own process, measured
for wall time and peak RSS (see bench/peers/harness.py). A peer that fails to install or run is
reported with its error; every stage has a timeout. The tables go into the `## Peers` section of
BENCHMARKS.md with the machine, date, load and command.

Stages:
- s2: lat/lng -> S2 cell id, s2vec on `--s2-points` vs s2sphere on the first `--s2-peer-points`
  of the same seeded points (ids checked equal).
- extract (every input): s2vec `extract_cells_long(pbf, level)` vs a plain pyosmium handler (way centroids),
  pyrosm (pois + buildings + network), quackosm (GeoParquet), osmium-tool `export -f geojsonseq`.
  Throughput is in tagged features (objects with a taxonomy key, counted by the pyosmium peer).
- e2e (`--e2e-input`): srai S2VecEmbedder vs s2vec, PBF -> raster tensors and training epochs at the
  same levels and model size.

    python bench/run_all.py                       # everything (about 15-25 min on 2 cores)
    python bench/run_all.py --peers pyosmium --inputs monaco --stages extract --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from peers.harness import StageResult, run_stage, run_worker
from peers.specs import PEER_ENVS
from peers.venvs import VenvError, ensure_venv

SOURCE = ROOT / "data/osm/liechtenstein-2013-08-03.osm.pbf"
# name -> (path, tiled copies of SOURCE or None for a bundled file)
INPUTS = {
    "monaco": (ROOT / "data/osm/monaco-2023.osm.pbf", None),
    "liechtenstein": (SOURCE, None),
    "x80": (ROOT / "bench/data/liechtenstein-x80.osm.pbf", 80),  # ~38 MB
    "x320": (ROOT / "bench/data/liechtenstein-x320.osm.pbf", 320),  # ~150 MB
}
EXTRACT_PEERS = ("pyosmium", "pyrosm", "quackosm", "osmium-tool")
ALL_PEERS = ("s2sphere", *EXTRACT_PEERS, "srai")
SECTION = "## Peers"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def s2vec_revision() -> str:
    """The commit the s2vec side ran at, and any uncommitted changes under s2vec_core/ (teammates edit it)."""

    def git(*args: str) -> str:
        # Only trailing whitespace: porcelain lines start with a space-padded status column.
        return subprocess.run(
            ["git", *args], check=False, cwd=ROOT, capture_output=True, text=True
        ).stdout.rstrip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "s2vec_core").splitlines()]
    return f"commit {head}" + (f" plus uncommitted changes in {', '.join(dirty)}" if dirty else "")


def ensure_input(name: str, out: Path) -> Path:
    path, copies = INPUTS[name]
    if not path.exists():
        if copies is None:
            raise FileNotFoundError(path)
        log(f"tiling {SOURCE.name} x{copies} -> {path}")
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench/tile_pbf.py"),
                str(SOURCE),
                str(path),
                "--copies",
                str(copies),
            ],
            check=True,
        )
    return path


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()  # stages run in other working directories
        self.logs = self.out / "logs"
        self.results: list[StageResult] = []
        self.pythons: dict[str, Path | str] = {}
        self.env_errors: dict[str, str] = {}
        self.loads: list[float] = []

    # --- environments -------------------------------------------------------------------------
    def python(self, peer: str) -> Path | str | None:
        """The peer venv's python (built on first use), or None when it could not be built."""
        if peer in self.pythons or peer in self.env_errors:
            return self.pythons.get(peer)
        if peer in self.args.reuse_python:
            self.pythons[peer] = sys.executable
            return sys.executable
        t0 = time.perf_counter()
        try:
            self.pythons[peer] = ensure_venv(peer, PEER_ENVS[peer], timeout=self.args.install_timeout)
            log(f"venv {peer}: ready ({time.perf_counter() - t0:.0f} s)")
        except (VenvError, OSError) as e:
            self.env_errors[peer] = f"install failed: {e}"
            log(f"venv {peer}: {self.env_errors[peer]}")
        return self.pythons.get(peer)

    def record(self, r: StageResult) -> StageResult:
        r.detail.setdefault("load_1min", round(os.getloadavg()[0], 2))
        self.loads.append(os.getloadavg()[0])
        self.results.append(r)
        extra = f" {r.error}" if r.error else ""
        wall = f"{r.wall_s:.1f} s" if r.wall_s is not None else "-"
        rss = f"{r.peak_rss_mb:.0f} MB" if r.peak_rss_mb is not None else "-"
        log(f"{r.stage} {r.tool} on {r.input}: {r.status} {wall} {rss}{extra}")
        return r

    def peer_worker(self, peer: str, stage: str, inp: str, worker: str, job: dict, **kw) -> StageResult:
        py = self.python(peer)
        if py is None:
            return self.record(StageResult(peer, stage, inp, "failed", error=self.env_errors[peer]))
        return self.record(
            run_worker(peer, stage, inp, py, worker, job, timeout=self.args.timeout, log_dir=self.logs, **kw)
        )

    def s2vec_worker(
        self, stage: str, inp: str, worker: str, job: dict, timeout: float | None = None
    ) -> StageResult:
        return self.record(
            run_worker(
                "s2vec",
                stage,
                inp,
                sys.executable,
                worker,
                job,
                timeout=timeout or self.args.timeout,
                cwd=ROOT,
                log_dir=self.logs,
            )
        )

    # --- stages -------------------------------------------------------------------------------
    def stage_s2(self) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        n = self.args.s2_points
        # Uniform on the sphere, so all six faces appear.
        lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
        lng = rng.uniform(-180, 180, n)
        pts = self.out / "s2_points.npy"
        np.save(pts, np.column_stack([lat, lng]))
        level = 30
        mine = self.s2vec_worker(
            "s2",
            f"{n} points",
            "s2vec_ids",
            {"points": str(pts), "n": n, "level": level, "out": str(self.out / "s2_s2vec.npy")},
        )
        if "s2sphere" not in self.args.peers:
            return
        m = min(self.args.s2_peer_points, n)
        peer = self.peer_worker(
            "s2sphere",
            "s2",
            f"{n} points",
            "s2sphere_ids",
            {"points": str(pts), "n": m, "level": level, "out": str(self.out / "s2_peer.npy")},
        )
        if mine.status == peer.status == "ok":
            a, b = np.load(self.out / "s2_s2vec.npy")[:m], np.load(self.out / "s2_peer.npy")
            peer.detail["ids_equal"] = bool(np.array_equal(a, b))

    def stage_extract(self, inp: str, pbf: Path) -> None:
        from s2vec_core.taxonomy import FILTER_KEYS

        keys = sorted(FILTER_KEYS)
        for _ in range(self.args.runs):  # interleaved, so the shared CPU's load hits every tool alike
            self.s2vec_worker("extract", inp, "s2vec_extract", {"pbf": str(pbf), "level": self.args.level})
            for peer in self.args.peers:
                if peer == "pyosmium":
                    self.peer_worker(
                        peer, "extract", inp, "pyosmium_centroids", {"pbf": str(pbf), "filter_keys": keys}
                    )
                elif peer == "pyrosm":
                    with tempfile.TemporaryDirectory(dir=self.out) as tmp:  # its cache must start empty
                        self.peer_worker(
                            peer,
                            "extract",
                            inp,
                            "pyrosm_layers",
                            {"pbf": str(pbf)},
                            env={**os.environ, "TMPDIR": tmp},
                            cwd=tmp,
                        )
                elif peer == "quackosm":
                    home = self.duckdb_home(peer)
                    with tempfile.TemporaryDirectory(dir=self.out) as tmp:
                        env = {**os.environ, "HOME": str(home)} if home else None
                        self.peer_worker(
                            peer,
                            "extract",
                            inp,
                            "quackosm_convert",
                            {"pbf": str(pbf), "filter_keys": keys, "workdir": tmp},
                            env=env,
                            cwd=tmp,
                        )
                elif peer == "osmium-tool":
                    self.osmium_tool(inp, pbf)

    def osmium_tool(self, inp: str, pbf: Path) -> None:
        exe = shutil.which("osmium")
        if exe is None:
            self.record(
                StageResult(
                    "osmium-tool",
                    "extract",
                    inp,
                    "failed",
                    error="`osmium` not on PATH (Debian: apt-get install -y osmium-tool)",
                )
            )
            return
        with tempfile.TemporaryDirectory(dir=self.out) as tmp:
            self.record(
                run_stage(
                    "osmium-tool",
                    "extract",
                    inp,
                    [
                        exe,
                        "export",
                        "-f",
                        "geojsonseq",
                        "--overwrite",
                        "-o",
                        f"{tmp}/out.geojsonseq",
                        str(pbf),
                    ],
                    timeout=self.args.timeout,
                    log_dir=self.logs,
                    expect_result=False,
                )
            )

    def duckdb_home(self, peer: str) -> Path | None:
        """A HOME whose ~/.duckdb/extensions holds the spatial extension shipped in the peer's venv."""
        py = self.python(peer)
        if py is None:
            return None
        found = sorted(
            Path(py)
            .parents[1]
            .glob("lib/python*/site-packages/duckdb_ext/extensions/*/*/spatial.duckdb_extension")
        )
        if not found:
            return None
        ext = found[-1]
        home = self.out / f"duckdb-home-{peer}"
        target = home / ".duckdb/extensions" / ext.parent.parent.name / ext.parent.name / ext.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(ext)
        return home

    def stage_e2e(self, inp: str, pbf: Path) -> None:
        a = self.args
        from s2vec_core.osm import pbf_info

        common = {
            "pbf": str(pbf),
            "bbox": list(pbf_info(pbf)["bbox"]),
            "image_level": a.image_level,
            "pixel_level": a.pixel_level,
            "epochs": a.epochs,
            "batch_size": 64,
        }
        with tempfile.TemporaryDirectory(dir=self.out) as tmp:
            self.s2vec_worker("e2e", inp, "s2vec_pipeline", {**common, "workdir": tmp}, timeout=a.e2e_timeout)
        if "srai" in a.peers:
            home = self.duckdb_home("srai")
            with tempfile.TemporaryDirectory(dir=self.out) as tmp:
                env = {**os.environ, "HOME": str(home), "TMPDIR": tmp} if home else None
                py = self.python("srai")
                if py is None:
                    self.record(StageResult("srai", "e2e", inp, "failed", error=self.env_errors["srai"]))
                    return
                self.record(
                    run_worker(
                        "srai",
                        "e2e",
                        inp,
                        py,
                        "srai_s2vec",
                        {**common, "workdir": tmp},
                        timeout=a.e2e_timeout,
                        env=env,
                        cwd=tmp,
                        log_dir=self.logs,
                    )
                )

    def run(self) -> None:
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = dt.datetime.now(dt.UTC)
        # Build every environment first (cached), so install time never lands in a measurement.
        for peer in a.peers:
            if peer in PEER_ENVS:
                self.python(peer)
        if "s2" in a.stages:
            self.stage_s2()
        if "extract" in a.stages:
            for inp in a.inputs:
                self.stage_extract(inp, ensure_input(inp, self.out))
        if "e2e" in a.stages:
            self.stage_e2e(a.e2e_input, ensure_input(a.e2e_input, self.out))
        self.finished = dt.datetime.now(dt.UTC)


# --- report --------------------------------------------------------------------------------------
def _med(rs: list[StageResult], key) -> float | None:
    vals = [key(r) for r in rs if r.status == "ok" and key(r) is not None]
    return statistics.median(vals) if vals else None


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def extract_table(results: list[StageResult], inp: str, size_mb: float) -> list[str]:
    rows = [r for r in results if r.stage == "extract" and r.input == inp]
    tools = list(dict.fromkeys(r.tool for r in rows))
    tagged = next(
        (r.detail["tagged_objects"] for r in rows if r.tool == "pyosmium" and r.status == "ok"), None
    )
    if tagged is None:  # without the peer, s2vec's own count of tagged objects
        tagged = next(
            (
                sum(v for k, v in r.detail["stats"].items() if k.startswith("tagged"))
                for r in rows
                if r.tool == "s2vec" and r.status == "ok" and "stats" in r.detail
            ),
            None,
        )
    s2 = _med([r for r in rows if r.tool == "s2vec"], lambda r: r.wall_s)
    s2_rss = _med([r for r in rows if r.tool == "s2vec"], lambda r: r.peak_rss_mb)
    out = [
        f"**{inp}** ({size_mb:.1f} MB, {tagged:,} tagged features)"
        if tagged
        else f"**{inp}** ({size_mb:.1f} MB)",
        "",
        "| tool | status | wall s (runs) | peak RSS MB | tagged features/s | MB/s | s2vec speed-up | s2vec RSS share | load 1 min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    errors: list[str] = []
    for t in tools:
        rs = [r for r in rows if r.tool == t]
        ok = [r for r in rs if r.status == "ok"]
        wall = _med(rs, lambda r: r.wall_s)
        rss = max((r.peak_rss_mb for r in ok), default=None)
        bad = [r for r in rs if r.status != "ok"]
        status = "ok" if not bad else f"{bad[0].status} [{len(errors) + 1}]"
        if bad:
            errors.append(bad[0].error)
        runs = ", ".join(f"{r.wall_s:.1f}" for r in ok)
        fps = f"{tagged / wall:,.0f}" if (tagged and wall) else "-"
        speed = (
            f"{wall / s2:.2f}x" if (wall and s2 and t != "s2vec") else ("1x" if t == "s2vec" and s2 else "-")
        )
        share = f"{s2_rss / rss:.2f}" if (rss and s2_rss and t != "s2vec") else "-"
        load = _fmt(_med(rs, lambda r: r.detail.get("load_1min")), ".1f")
        out.append(
            f"| {t} | {status} | {_fmt(wall)} ({runs}) | {_fmt(rss, '.0f')} | {fps} | "
            f"{_fmt(size_mb / wall if wall else None)} | {speed} | {share} | {load} |"
        )
    return out + _footnotes(errors)


def _footnotes(errors: list[str]) -> list[str]:
    clean = [e[:600].replace("`", "'") for e in errors]
    return ["", *[f"[{i}] `{e}`  " for i, e in enumerate(clean, 1)]] if errors else []


def s2_table(results: list[StageResult]) -> list[str]:
    rows = [r for r in results if r.stage == "s2"]
    if not rows:
        return []
    out = [
        "| tool | status | points | work s | points/s | s2vec speed-up | ids equal |",
        "|---|---|---|---|---|---|---|",
    ]
    errors: list[str] = []
    mine = next((r for r in rows if r.tool == "s2vec" and r.status == "ok"), None)
    mine_pps = mine.detail["points"] / mine.detail["work_s"] if mine else None
    for r in rows:
        if r.status != "ok":
            errors.append(r.error)
            out.append(f"| {r.tool} | {r.status} [{len(errors)}] | - | - | - | - | - |")
            continue
        pps = r.detail["points"] / r.detail["work_s"]
        speed = f"{mine_pps / pps:.0f}x" if (mine_pps and r.tool != "s2vec") else "-"
        eq = str(r.detail.get("ids_equal", "-"))
        out.append(
            f"| {r.tool} | ok | {r.detail['points']:,} | {r.detail['work_s']:.3f} | {pps:,.0f} | {speed} | {eq} |"
        )
    return out + _footnotes(errors)


def e2e_table(results: list[StageResult]) -> list[str]:
    rows = [r for r in results if r.stage == "e2e"]
    if not rows:
        return []
    out = [
        (
            "| tool | status | process wall s | peak RSS MB | PBF -> raster tensors s | peak RSS MB by then | images | "
            "channels | model setup s | epoch s (each) | images/s (training) | inference s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    errors: list[str] = []
    for r in rows:
        d = r.detail
        if r.status != "ok":
            errors.append(r.error)
            out.append(
                f"| {r.tool} | {r.status} [{len(errors)}] | {_fmt(r.wall_s)} | {_fmt(r.peak_rss_mb, '.0f')} |"
                " - | - | - | - | - | - | - | - |"
            )
            continue
        ep = d.get("epoch_s", [])
        ips = (d["images"] * len(ep) / sum(ep)) if ep and d.get("images") else None
        out.append(
            f"| {r.tool} | ok | {r.wall_s:.1f} | {r.peak_rss_mb:.0f} | {_fmt(d.get('data_s'))} | "
            f"{_fmt(d.get('data_rss_mb'), '.0f')} | {d.get('images', '-')} | {d.get('channels', '-')} | {_fmt(d.get('setup_s'))} | "
            f"{', '.join(f'{e:.1f}' for e in ep) or '-'} | {_fmt(ips)} | {_fmt(d.get('inference_s'))} |"
        )
    mine = next((r for r in rows if r.tool == "s2vec" and r.status == "ok"), None)
    peer = next((r for r in rows if r.tool == "srai" and r.status == "ok"), None)
    if mine and peer:
        dm, dp = mine.detail, peer.detail
        em = statistics.median(dm["epoch_s"]) / dm["images"]
        ep = statistics.median(dp["epoch_s"]) / dp["images"]
        out += [
            "",
            (
                f"Ratios: s2vec turns the PBF into raster tensors {dp['data_s'] / dm['data_s']:.1f}x faster than srai, "
                f"with {dm['data_rss_mb'] / dp['data_rss_mb']:.2f} of srai's peak RSS by then "
                f"(whole process incl. training: {mine.peak_rss_mb / peer.peak_rss_mb:.2f}); "
                f"trains {ep / em:.2f}x faster per image (median epoch)."
            ),
        ]
    return out + _footnotes(errors)


def section(suite: Suite, command: str) -> str:
    a = suite.args
    load = f"{min(suite.loads):.1f}-{max(suite.loads):.1f}" if suite.loads else "-"
    lines = [
        SECTION,
        "",
        (
            "Written by `bench/run_all.py` (`make bench`); every tool runs in its own process (peers in their own "
            "venvs under bench/venvs/), wall = the whole process, peak RSS = the larger of `wait4`'s largest process and the summed RSS of the process tree sampled every 20 ms. Throughput in tagged "
            'features = objects carrying a taxonomy key, as counted by the pyosmium peer. "s2vec speed-up" = '
            'peer wall / s2vec wall; "s2vec RSS share" = s2vec peak RSS / peer peak RSS. The CPU is shared with '
            "teammates' jobs: the load column is the 1-minute load average when each stage ended (2 cores)."
        ),
        "",
        "```",
        command,
        "```",
        "",
        (
            f"Machine: {machine()}. Date: {suite.started:%Y-%m-%d %H:%M}-{suite.finished:%H:%M} UTC. "
            f"Load average during the run: {load}. s2vec at {s2vec_revision()}."
        ),
        "",
    ]
    if suite.env_errors:
        lines += [
            "Peer environments that could not be built: "
            + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in suite.env_errors.items()),
            "",
        ]
    s2 = s2_table(suite.results)
    if s2:
        lines += [
            "### S2 cell ids (lat/lng -> level-30 id, seeded points uniform on the sphere)",
            "",
            *s2,
            "",
        ]
    if "extract" in a.stages:
        lines += [f"### Extraction (s2vec `extract_cells_long(pbf, {a.level})` vs the peers)", ""]
        for inp in a.inputs:
            lines += [*extract_table(suite.results, inp, INPUTS[inp][0].stat().st_size / 1e6), ""]
    e2e = e2e_table(suite.results)
    if e2e:
        lines += [
            (
                f"### End to end on {a.e2e_input}: srai 0.10.2 S2VecEmbedder vs s2vec "
                f"(image level {a.image_level}, pixel level {a.pixel_level}, {a.epochs} epochs, width 256, "
                "6+2 layers, 8 heads, batch 64, CPU)"
            ),
            "",
            *e2e,
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace the `## Peers` section of `path` (up to the next `## ` heading), or append it."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + text + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new)
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default=",".join(ALL_PEERS), help=f"comma list of {ALL_PEERS}")
    ap.add_argument("--stages", default="s2,extract,e2e", help="comma list of s2, extract, e2e")
    ap.add_argument(
        "--inputs", default="liechtenstein,x80,x320", help=f"extraction inputs from {list(INPUTS)}"
    )
    ap.add_argument("--e2e-input", default="liechtenstein")
    ap.add_argument("--level", type=int, default=17, help="s2vec extraction level")
    ap.add_argument("--image-level", type=int, default=13)
    ap.add_argument("--pixel-level", type=int, default=17)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=1, help="extraction runs per tool (median reported)")
    ap.add_argument("--s2-points", type=int, default=1_000_000)
    ap.add_argument("--s2-peer-points", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per stage")
    ap.add_argument("--e2e-timeout", type=float, default=1200, help="seconds per end-to-end run")
    ap.add_argument("--install-timeout", type=float, default=1800, help="seconds per peer venv build")
    ap.add_argument(
        "--reuse-python",
        default="",
        help="peers to run on this interpreter instead of a venv "
        "(only those whose library the project already has, e.g. pyosmium)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench/out/peers"), help="scratch + JSON results")
    ap.add_argument("--benchmarks", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument(
        "--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md"
    )
    a = ap.parse_args(argv)
    for name in ("peers", "stages", "inputs", "reuse_python"):
        setattr(a, name, [x for x in getattr(a, name).split(",") if x])
    bad = [p for p in a.peers if p not in ALL_PEERS] + [
        i for i in [*a.inputs, a.e2e_input] if i not in INPUTS
    ]
    if bad:
        ap.error(f"unknown peers/inputs: {bad}")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/run_all.py " + " ".join(
        shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)
    )
    suite = Suite(args)
    suite.run()
    text = section(suite, command.strip())
    (Path(args.out) / "results.json").write_text(json.dumps([r.to_dict() for r in suite.results], indent=1))
    if args.no_write:
        print(text)
    else:
        write_section(Path(args.benchmarks), text)
        log(f"wrote {SECTION} of {args.benchmarks}")
    print(text if not args.no_write else "", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
