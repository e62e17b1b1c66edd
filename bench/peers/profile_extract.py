"""Profile s2vec extraction with py-spy (sampling, in its own venv under bench/venvs/) and summarise.

Writes bench/out/profile/<input>.svg (flame graph) and <input>.txt (collapsed stacks), then prints the
top functions by self samples and by inclusive samples (share of all non-idle samples, all threads).

    python bench/peers/profile_extract.py bench/data/liechtenstein-x80.osm.pbf --level 17
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from peers.venvs import ensure_venv

PY_SPY = [["py-spy==0.4.3"]]


def summarise(collapsed: Path, top: int) -> str:
    self_n: collections.Counter = collections.Counter()
    incl_n: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        n = int(n)
        frames = [
            f for f in stack.split(";") if f and not f.startswith("thread ") and not f.startswith("process ")
        ]
        total += n
        if frames:
            self_n[frames[-1]] += n
        for f in set(frames):
            incl_n[f] += n
    out = [f"{total} samples"]
    for title, counter in (("self", self_n), ("inclusive", incl_n)):
        out.append(f"\ntop {top} by {title} samples:")
        out += [f"{100 * n / total:5.1f}%  {f}" for f, n in counter.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pbf", type=Path)
    ap.add_argument("--level", type=int, default=17)
    ap.add_argument("--rate", type=int, default=50, help="samples per second")
    ap.add_argument("--native", action="store_true", help="include C/C++ frames (osmium, numpy)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/profile")
    a = ap.parse_args(argv)
    spy = ensure_venv("py-spy", PY_SPY).with_name("py-spy")
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.pbf.name.split(".")[0]
    worker = [
        sys.executable,
        str(HERE / "workers/s2vec_extract.py"),
        json.dumps({"pbf": str(a.pbf), "level": a.level}),
    ]
    common = [str(spy), "record", "--rate", str(a.rate), *(["--native"] if a.native else [])]
    raw = a.out / f"{stem}.txt"
    subprocess.run([*common, "--format", "raw", "-o", str(raw), "--", *worker], check=True, cwd=ROOT)
    report = summarise(raw, a.top)
    (a.out / f"{stem}.summary.txt").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
