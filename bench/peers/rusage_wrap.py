"""Run a command and write its rusage (wall, peak RSS) as JSON to argv[1]; exit with its exit code.

The harness starts this small interpreter (`python -I -S`) between itself and the measured command:
Linux carries the pre-exec memory high-water mark of a forked child into its `ru_maxrss`, so a command
spawned straight from the big harness process would inherit the harness's RSS as a floor.

`ru_maxrss` is the largest single process; a command that starts helpers (s2vec's area worker,
quackosm's pool) holds several at once, so the summed RSS of the whole process tree is also sampled
every 20 ms and reported as `tree_rss_kib`.
"""

import json
import os
import sys
import threading
import time


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _sample(pid: int, peak: list[int], done: threading.Event) -> None:
    while not done.wait(0.02):
        peak[0] = max(peak[0], sum(_rss_kib(p) for p in _tree(pid)))


def main() -> None:
    out, cmd = sys.argv[1], sys.argv[2:]
    t0 = time.perf_counter()
    pid = os.posix_spawnp(cmd[0], cmd, os.environ)
    peak, done = [0], threading.Event()
    sampler = threading.Thread(target=_sample, args=(pid, peak, done), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    with open(out, "w") as f:
        json.dump(
            {
                "wall_s": wall,
                "maxrss_kib": usage.ru_maxrss,
                "tree_rss_kib": peak[0],
                "cpu_s": usage.ru_utime + usage.ru_stime,
            },
            f,
        )
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
