"""Kill a training run again and again at random steps; resume it each time with the same command.

    python experiments/preemption/run.py [--kills 24] [--steps 2000] [--ckpt-every 100] [--seed 0]

One small ``dae-gen-train`` run (NCSN on two moons, a 2×32 MLP, one metrics row per step) is trained straight
through once (the reference), then again in another run directory while this script sends SIGTERM, SIGINT,
SIGKILL and SIGUSR1 (in turn) at random steps, relaunching the same command after each death until the run
completes. Recorded per kill: the signal, the exit status, how many steps the process had completed (the last
complete row of ``metrics.jsonl`` when it died), the newest checkpoint's step, and so the steps lost
(completed − checkpointed), and the message the process ended with. At the end: are the final weights (model
and EMA) bit-identical to the reference, and does ``metrics.jsonl`` hold every step exactly once?

Two more cases: the newest checkpoint truncated on disk before a resume (the run must resume from the previous
one, keep the bad file aside and still end bit-identical), and a second trainer started on a folder in use
(refused, the folder unchanged, the first unaffected). Writes ``results.json`` next to this file; the runs in
``runs/`` are deleted at the end (``--keep-runs`` keeps them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGUSR1]


def command(run_dir: Path, steps: int, ckpt_every: int) -> list[str]:
    """``dae-gen-train`` (this interpreter's console script) on a small two-moons run."""
    return [str(Path(sys.executable).parent / "dae-gen-train"), "dataset=two_moons", "model=ncsn_mlp",
            "model.net.hidden=32", "model.net.depth=2", "sampler.init=gaussian", "sampler.n_steps_each=1",
            f"trainer.steps={steps}",
            "trainer.batch_size=32", "trainer.log_every=1", f"trainer.ckpt_every={ckpt_every}",
            "trainer.sample_every=0", "trainer.progress=false", "trainer.tensorboard=false", "device=cpu", "threads=1",
            f"hydra.run.dir={run_dir}"]


def logged_steps(run_dir: Path) -> list[int]:
    rows = []
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return rows
    for line in lines:
        try:
            if line.endswith("\n"):
                rows.append(json.loads(line)["step"])
        except ValueError:
            pass
    return rows


def newest_checkpoint_step(run_dir: Path) -> int:
    steps = [int(p.name[5:13]) for p in (run_dir / "checkpoints").glob("ckpt_*.pt")] if run_dir.exists() else []
    return max(steps, default=0)


def weights(run_dir: Path) -> dict:
    from dae_gen.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir)
    return {"step": state["step"], "model": state["model"], "ema": state["ema"]}


def identical(a: dict, b: dict) -> bool:
    return a["step"] == b["step"] and all(
        a[k].keys() == b[k].keys() and all(torch.equal(a[k][n], b[k][n]) for n in a[k]) for k in ("model", "ema"))


def kill_at(cmd: list[str], run_dir: Path, signum: int, target: int, *, timeout: float = 300) -> dict:
    """Launch ``cmd``; once ``target`` steps are logged send ``signum``; wait for the process to end."""
    # SIGINT at its default, as in a terminal's foreground job (a background job ignores it, and so does the run)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while (logged := logged_steps(run_dir)) == [] or logged[-1] < target:
        if proc.poll() is not None:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the run did not reach its target step")
        time.sleep(0.002)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=timeout)
    done = logged_steps(run_dir)
    completed = done[-1] if done else 0
    checkpointed = newest_checkpoint_step(run_dir)
    err_lines = [line for line in err.splitlines() if line.strip()]
    fallbacks = [line.split(" - ")[-1] for line in (out + err).splitlines() if "resuming from" in line]
    return {"signal": signal.Signals(signum).name, "target": target, "sent": sent, "exit_status": proc.returncode,
            "completed": completed, "checkpointed": checkpointed, "steps_lost": completed - checkpointed,
            "stderr_lines": len(err_lines), "traceback": "Traceback" in err,
            "last_line": err_lines[-1] if err_lines else "", "resume_warnings": fallbacks}


def preemption(args, runs: Path) -> dict:
    reference, run_dir = runs / "reference", runs / "killed"
    subprocess.run(command(reference, args.steps, args.ckpt_every), cwd=REPO, check=True, capture_output=True)
    rng = random.Random(args.seed)
    kills = []
    truncated = None
    for i in range(args.kills):
        start = (logged_steps(run_dir) or [0])[-1]  # past every row already in the log: a fresh step of this session
        room = (args.steps - start) // max(1, args.kills - i + 1)
        target = start + rng.randint(5, max(6, 2 * room - 5))
        if target >= args.steps - 5:
            break
        if i == args.kills // 2:  # the truncated-checkpoint case, once, half-way
            ckpts = sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))
            if len(ckpts) >= 2:
                bad = ckpts[-1]
                bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
                truncated = {"file": bad.name, "previous": ckpts[-2].name}
        record = kill_at(command(run_dir, args.steps, args.ckpt_every), run_dir, SIGNALS[i % len(SIGNALS)], target)
        if truncated is not None and "warning" not in truncated:
            aside = run_dir / "checkpoints" / (truncated["file"] + ".unreadable")
            truncated.update({"warning": record["resume_warnings"], "kept_aside": aside.is_file()})
        kills.append(record)
        print(json.dumps(record), flush=True)
    final = subprocess.run(command(run_dir, args.steps, args.ckpt_every), cwd=REPO, capture_output=True, text=True)
    steps = logged_steps(run_dir)
    by_signal = {}
    for name in sorted({k["signal"] for k in kills}):
        these = [k for k in kills if k["signal"] == name and k["sent"]]
        by_signal[name] = {"kills": len(these), "steps_lost_max": max(k["steps_lost"] for k in these),
                           "steps_lost_mean": sum(k["steps_lost"] for k in these) / len(these),
                           "exit_status": sorted({k["exit_status"] for k in these}),
                           "max_stderr_lines": max(k["stderr_lines"] for k in these),
                           "tracebacks": sum(k["traceback"] for k in these)}
    return {"kills": kills, "by_signal": by_signal, "final_exit_status": final.returncode,
            "bit_identical_to_uninterrupted": final.returncode == 0 and identical(weights(run_dir), weights(reference)),
            "metrics_rows": len(steps), "metrics_each_step_once": steps == list(range(1, args.steps + 1)),
            "truncated_checkpoint": truncated}


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def second_trainer(args, runs: Path) -> dict:
    """The same command twice on one folder: the second must be refused and change nothing."""
    run_dir = runs / "collision"
    cmd = command(run_dir, args.steps, args.ckpt_every)
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not logged_steps(run_dir):
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # hold it mid-run so that the second surely meets it
    try:
        before = files(run_dir)
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        unchanged = files(run_dir) == before
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate()
    steps = logged_steps(run_dir)
    return {"second_exit_status": second.returncode, "second_stderr": second.stderr.strip().splitlines()[-3:],
            "folder_unchanged_by_the_refused_launch": unchanged, "first_exit_status": first.returncode,
            "first_metrics_each_step_once": steps == list(range(1, args.steps + 1)),
            "first_final_step": weights(run_dir)["step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--ckpt-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--keep-runs", action="store_true", help="keep the run directories in runs/")
    args = parser.parse_args()
    runs = HERE / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    results = {"command": " ".join(sys.argv), "started": started, "machine": platform.platform(),
               "python": platform.python_version(), "torch": torch.__version__, "steps": args.steps,
               "ckpt_every": args.ckpt_every, "seed": args.seed,
               "preemption": preemption(args, runs), "second_trainer": second_trainer(args, runs)}
    args.out.write_text(json.dumps(results, indent=1))
    if not args.keep_runs:
        shutil.rmtree(runs)
    summary = {k: results["preemption"][k] for k in ("by_signal", "bit_identical_to_uninterrupted",
                                                      "metrics_each_step_once", "truncated_checkpoint")}
    print(json.dumps({**summary, "second_trainer": results["second_trainer"]}, indent=1))


if __name__ == "__main__":
    main()
