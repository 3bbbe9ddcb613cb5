"""The main job (`dae-gen-train experiment=edm_digits`) on an idle machine and next to busy processes, per thread
setting (`--preset none`: `dae-gen-train` with no preset).

    python experiments/bench/main_job.py                       # threads auto, 1, 2 × 0 and 1 busy processes
    python experiments/bench/main_job.py --threads auto --busy 1 --steps 300    # a quick check

Each run is the real CLI in a fresh run directory; a "busy process" is `python -c "while True: pass"` started
before the job and stopped after it. Wall time from the parent, CPU time of the job alone (os.wait4), and the
thread count `threads=auto` chose (from the job's log). Writes main_job.json. Needs a machine with nothing
else running: the competing processes are the ones this script starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = os.path.join(os.path.dirname(sys.executable), "dae-gen-train")


def one_run(threads: str, busy: int, steps: int | None, preset: str) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0.0)  # let the competitors take their cores
        with tempfile.TemporaryDirectory() as run_dir:
            cmd = [TRAIN, *([f"experiment={preset}"] if preset != "none" else []), f"hydra.run.dir={run_dir}",
                   f"threads={threads}", "trainer.progress=false"]
            if steps is not None:
                cmd.append(f"trainer.steps={steps}")
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            output = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    chosen = re.search(r"torch threads: (.*)", output)
    return {"threads": threads, "busy_processes": busy, "steps": steps or 3000, "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime, "choice": chosen.group(1) if chosen else None,
            "command": " ".join(["dae-gen-train", *cmd[1:]])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", nargs="*", default=["auto", "1", "2"])
    parser.add_argument("--busy", nargs="*", type=int, default=[0, 1], help="numbers of competing busy processes")
    parser.add_argument("--steps", type=int, default=None, help="trainer.steps (default: the preset's 3000)")
    parser.add_argument("--preset", default="edm_digits", help="the experiment preset; none: no experiment=")
    parser.add_argument("--out", default=str(HERE / "main_job.json"))
    args = parser.parse_args()
    rows = []
    for busy in args.busy:
        for threads in args.threads:
            rows.append(one_run(threads, busy, args.steps, args.preset))
            print(json.dumps(rows[-1]), flush=True)
    idle = {r["threads"]: r["wall_s"] for r in rows if r["busy_processes"] == 0}
    for r in rows:
        if r["threads"] in idle and r["busy_processes"]:
            r["wall_vs_idle"] = r["wall_s"] / idle[r["threads"]]
    Path(args.out).write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
