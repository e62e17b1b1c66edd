"""Run a command and write its rusage (wall, peak RSS) as JSON to argv[1]; exit with its exit code.

The harness starts this small interpreter (`python -I -S`) between itself and the measured command:
Linux carries the pre-exec memory high-water mark of a forked child into its `ru_maxrss`, so a command
spawned straight from the big harness process would inherit the harness's RSS as a floor.
"""

import json
import os
import sys
import time

out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"wall_s": wall, "maxrss_kib": usage.ru_maxrss}, f)
sys.exit(os.waitstatus_to_exitcode(status))
