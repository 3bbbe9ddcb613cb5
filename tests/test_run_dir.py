"""Run-directory safety: stop signals, unreadable checkpoints, the lock, write errors, the metrics log.

The preemption and collision scenarios run ``dae-gen-train`` as real subprocesses and send real signals; the
rest runs the Trainer in-process with the failure injected where it would happen (a write that raises ENOSPC).
"""

import errno
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from conftest import console_command, error_lines, hooked_trainer, run_command, snapshot
from dae_gen import checkpoint as checkpoint_module
from dae_gen import distributed as D
from dae_gen.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, step_checkpoints
from dae_gen.data.toy import two_moons
from dae_gen.errors import TrainingDiverged, TrainingInterrupted
from dae_gen.nets.mlp import ScoreMLP
from dae_gen.noise import geometric_sigmas
from dae_gen.objectives.dsm import DenoisingScoreMatching
from dae_gen.run_dir import MetricsLog, RunCheckpoints, RunDirError, RunLock, RunLocked, StopSignals, parse_signals
from dae_gen.run_folder import RunDir
from dae_gen.score import Step


def make_trainer(run_dir, *, steps, ckpt_every=5, **kwargs):
    torch.manual_seed(123)
    objective = DenoisingScoreMatching(net=partial(ScoreMLP, hidden=32, depth=2), data_shape=(2,),
                                       sigmas=geometric_sigmas(1.0, 0.05, 5))
    settings = dict(log_every=1, ckpt_every=ckpt_every, sample_every=0, progress=False, tensorboard=False, seed=7)
    settings.update(kwargs)
    return hooked_trainer(objective=objective, data=two_moons(), run_dir=run_dir, steps=steps, batch_size=16,
                          optimizer=partial(torch.optim.Adam, lr=1e-3), **settings)


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict, b: dict) -> None:
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


# -- preemption, for real: dae-gen-train killed by SIGTERM and Ctrl-C at random steps ----------------------
STEPS = 800
TRAIN = ["dae-gen-train", "dataset=two_moons", "model=ncsn_mlp", "model.net.hidden=32",
         "model.net.depth=2", "sampler.init=gaussian", "sampler.n_steps_each=1", f"trainer.steps={STEPS}",
         "trainer.batch_size=32", "trainer.log_every=1", "trainer.ckpt_every=300", "trainer.sample_every=0",
         "trainer.progress=false", "trainer.tensorboard=false", "device=cpu", "threads=1"]


def last_logged_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except ValueError:
            continue
    return 0


def interrupt_at(run_dir: Path, signum: int, after_step: int) -> tuple[subprocess.CompletedProcess, int]:
    """Start training, send ``signum`` once ``after_step`` steps are logged; returns the process and the last
    step logged before the signal was sent (every step up to it was complete)."""
    argv, env = console_command([*TRAIN, f"hydra.run.dir={run_dir}"])
    # a terminal's foreground job: SIGINT at its default (the suite itself may run in the background, where a
    # child would inherit SIGINT ignored and, rightly, keep training)
    proc = subprocess.Popen(argv, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while (logged := last_logged_step(run_dir)) < after_step:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.005)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), logged


def test_sigterm_and_ctrl_c_lose_no_step_and_resume_bit_identically(tmp_path):
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    reference = tmp_path / "reference"
    assert run_command([*TRAIN, f"hydra.run.dir={reference}"], cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "interrupted"
    stopped = 0
    for signum in (signal.SIGTERM, signal.SIGINT):
        target = stopped + rng.randrange(20, 250)  # a random step of this session
        proc, logged = interrupt_at(run_dir, signum, target)
        name = signal.Signals(signum).name
        assert proc.returncode == 128 + signum, (seed, proc.returncode, proc.stderr[-2000:])
        assert error_lines(proc.stderr) == [error_lines(proc.stderr)[-1]], proc.stderr[-3000:]  # one line
        message = error_lines(proc.stderr)[-1]
        assert f"{name} received: stopped after step" in message and "Run the same command to resume" in message
        stopped = int(message.split("stopped after step ")[1].split("/")[0])
        newest = step_checkpoints(run_dir)[-1][0]
        assert newest == stopped >= logged, (seed, name, logged, stopped)  # the step in flight finished, none lost
        assert last_logged_step(run_dir) == stopped  # the log ends at the checkpoint, every line complete
        assert not (run_dir / ".lock").exists()
    # the newest checkpoint is truncated on disk: the resume warns, keeps it aside and starts from the previous one
    (step_bad, bad), (step_previous, _) = step_checkpoints(run_dir)[-1], step_checkpoints(run_dir)[-2]
    bad.write_bytes(bad.read_bytes()[:1000])
    proc = run_command([*TRAIN, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr  # the warning goes wherever the CLI's logging sends it
    assert f"ckpt_{step_bad:08d}.pt" in output and "resuming from" in output, output[-3000:]
    assert (bad.parent / (bad.name + ".unreadable")).stat().st_size == 1000
    assert_same_weights(load_checkpoint(run_dir), load_checkpoint(reference))  # bit-identical after all that
    rows, expected = metric_rows(run_dir), metric_rows(reference)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # no step twice, none missing
    assert [r["loss/model"] for r in rows] == [r["loss/model"] for r in expected]
    assert step_previous < step_bad


def test_a_second_trainer_on_a_locked_folder_is_refused_and_the_first_is_unaffected(tmp_path):
    run_dir = tmp_path / "run"
    command = [*TRAIN, f"hydra.run.dir={run_dir}"]
    argv, env = console_command(command)
    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while last_logged_step(run_dir) < 5:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # frozen mid-run (still alive, still holding the lock) while the second tries
    try:
        before = snapshot(run_dir)
        second = run_command(command, cwd=tmp_path, timeout=120)
        assert snapshot(run_dir) == before  # the refused launch wrote nothing (no config, history, metrics)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode != 0
    assert len(error_lines(second.stderr)) == 1 and f"is in use by PID {first.pid}" in second.stderr, second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert [r["step"] for r in metric_rows(run_dir)] == list(range(1, STEPS + 1))  # each step once
    assert load_checkpoint(run_dir)["step"] == STEPS and not (run_dir / ".lock").exists()


# -- signals in-process -----------------------------------------------------------------------------------
class _SignalAt:
    """An evaluator that sends a signal to this process after a given step (it runs right after that step)."""

    def __init__(self, step: int, signum: int):
        self.at, self.signum = step, signum

    def __call__(self, model, step):
        if step == self.at:
            os.kill(os.getpid(), self.signum)
        return {}


def test_a_stop_signal_checkpoints_the_step_and_hands_the_signal_on(tmp_path):
    calls = []

    def requeue(signum, frame):  # e.g. submitit's handler of its USR2
        calls.append((signum, step_checkpoints(tmp_path)[-1][0]))

    original = signal.signal(signal.SIGUSR2, requeue)
    try:
        trainer = make_trainer(tmp_path, steps=20, ckpt_every=0, eval_every=1, evaluator=_SignalAt(7, signal.SIGUSR2))
        with pytest.raises(TrainingInterrupted, match="SIGUSR2 received: stopped after step 8/20") as info:
            trainer.fit()
        assert signal.getsignal(signal.SIGUSR2) is requeue  # restored
    finally:
        signal.signal(signal.SIGUSR2, original)
    assert info.value.exit_code == 128 + signal.SIGUSR2
    assert [c[0] for c in step_checkpoints(tmp_path)] == [8]  # the evaluator ran after step 7; step 8 finished
    assert calls == [(signal.SIGUSR2, 8)]  # the earlier handler ran once, after the checkpoint existed
    straight = make_trainer(tmp_path / "straight", steps=20)
    straight.fit()
    resumed = make_trainer(tmp_path, steps=20)
    assert resumed.fit()["resumed"] == 1.0
    assert_same_weights(resumed.state_dict(), straight.state_dict())


def test_a_stop_signal_abandons_a_sample_grid_in_progress(tmp_path):
    def sampler(model, n, *, generator=None, callback=None):
        for i in range(1, 4):
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            callback(Step(i=i, n=3, x=torch.zeros(n, 2)))
        raise AssertionError("the grid should have been abandoned")

    trainer = make_trainer(tmp_path, steps=20, ckpt_every=0, sample_every=4, sampler=sampler,
                           save_samples=lambda samples, path: None)
    with pytest.raises(TrainingInterrupted, match="SIGTERM received: stopped after step 5/20"):
        trainer.fit()
    assert [c[0] for c in step_checkpoints(tmp_path)] == [5] and not (tmp_path / "samples.png").exists()


def test_stop_signal_names_are_checked():
    assert parse_signals(["SIGTERM", "int", "USR1"]) == [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1]
    with pytest.raises(Exception, match="not a signal that can be caught"):
        parse_signals(["SIGKILL"])
    with pytest.raises(Exception, match="SIGNOPE"):
        make_trainer(Path("unused"), steps=3, stop_signals=["SIGNOPE"])


@pytest.fixture
def sigint_handler():
    """Set SIGINT's handler for one test (the suite may run in a background job, where SIGINT is ignored)."""
    original = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, original)


def test_a_second_ctrl_c_stops_at_once_but_a_duplicate_does_not(sigint_handler):
    sigint_handler(signal.default_int_handler)  # what an interactive Python process has
    with StopSignals(["SIGINT"]) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # torchrun forwards the terminal's SIGINT: the same key press twice
        assert stop.received == signal.SIGINT
        stop._received_at -= 3.0  # a real second press, seconds later
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler the process had, restored


def test_a_signal_the_process_ignores_stays_ignored(sigint_handler):
    # a background job (`dae-gen-train ... &`): the terminal's Ctrl-C is for the foreground, not for this run
    sigint_handler(signal.SIG_IGN)
    with StopSignals(["SIGINT", "SIGTERM"]) as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received is None
        os.kill(os.getpid(), signal.SIGTERM)  # still a stop signal
        assert stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


# -- unreadable checkpoints ----------------------------------------------------------------------------
def test_resume_skips_an_unreadable_newest_checkpoint_and_keeps_it(tmp_path, caplog):
    make_trainer(tmp_path, steps=10, keep_checkpoints=3).fit()  # ckpt 5, 10
    empty = tmp_path / "checkpoints" / "ckpt_00000015.pt"
    empty.write_bytes(b"")  # e.g. a copy that was cut off
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_writer = empty.parent / f"ckpt_00000012.pt.tmp{int(dead.stdout)}"  # a write killed half-way
    live_writer = empty.parent / f"ckpt_00000012.pt.tmp{os.getppid()}"
    dead_writer.write_bytes(b"partial")
    live_writer.write_bytes(b"partial")
    caplog.set_level(logging.WARNING)
    resumed = make_trainer(tmp_path, steps=20, keep_checkpoints=3)
    assert resumed.maybe_resume() and resumed.step == 10
    assert not empty.exists() and (empty.parent / "ckpt_00000015.pt.unreadable").read_bytes() == b""
    assert not dead_writer.exists() and live_writer.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ckpt_00000015.pt" in warnings[0] and "resuming from" in warnings[0]
    assert "weights_only=False" not in warnings[0]


def test_no_readable_checkpoint_is_one_clear_error_and_changes_nothing(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "ckpt_00000005.pt").write_bytes(b"\x00" * 64)
    (folder / "ckpt_00000010.pt").write_bytes(b"")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints .* can be read") as info:
        make_trainer(tmp_path, steps=20).fit()
    assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert not (tmp_path / ".lock").exists()


def test_load_checkpoint_of_a_directory_falls_back_without_changing_it(tmp_path):
    make_trainer(tmp_path, steps=10).fit()
    newest = tmp_path / "checkpoints" / "ckpt_00000010.pt"
    newest.write_bytes(newest.read_bytes()[:500])
    assert load_checkpoint(tmp_path)["step"] == 5
    assert newest.stat().st_size == 500


# -- write errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failed_checkpoint_write_names_path_and_cause_and_keeps_the_previous_one(tmp_path, monkeypatch, code):
    trainer = make_trainer(tmp_path, steps=20)
    real_open = open
    writes = []

    def failing_open(file, mode="r", *args, **kwargs):  # the checkpoint module's own open(): 2nd write fails
        if "w" in mode:
            writes.append(file)
            if len(writes) == 2:
                if code == errno.ENOSPC:  # a full disk fails part-way through the write
                    handle = real_open(file, mode, *args, **kwargs)
                    handle.write(b"partial")
                    handle.close()
                raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "open", failing_open, raising=False)
    with pytest.raises(CheckpointError) as info:
        trainer.fit()
    message = str(info.value)
    target = tmp_path / "checkpoints" / "ckpt_00000010.pt"
    assert message == f"cannot write checkpoint {target}: {os.strerror(code)} ({errno.errorcode[code]})"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt_00000005.pt"]  # no tmp left
    assert load_checkpoint(tmp_path)["step"] == 5
    assert not (tmp_path / ".lock").exists()


def test_a_failed_metrics_write_is_one_line_naming_the_file(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, steps=5)
    real_open = Path.open

    def full(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(RunDirError) as info:
        trainer.fit()
    assert str(info.value) == f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on device (ENOSPC)"


def test_a_failed_rename_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = save_checkpoint({"step": 1, "model": {"w": torch.ones(2)}, "ema": {}, "config": {}}, tmp_path / "c.pt")

    def no_rename(src, dst):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint_module.os, "replace", no_rename)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*c\.pt: Permission denied \(EACCES\)"):
        save_checkpoint({"step": 2, "model": {"w": torch.zeros(2)}, "ema": {}, "config": {}}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_checkpoints_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(checkpoint_module.os, "fsync", lambda fd: events.append(("fsync", os.path.isdir(
        f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(checkpoint_module.os, "replace", lambda a, b: events.append(("replace", Path(a).name)) or
                        real_replace(a, b))
    save_checkpoint({"step": 1, "model": {}, "ema": {}, "config": {}}, tmp_path / "c.pt")
    assert events == [("fsync", False), ("replace", f"c.pt.tmp{os.getpid()}"), ("fsync", True)]


def test_a_checkpoint_with_non_finite_values_is_never_written(tmp_path):
    store = RunCheckpoints(tmp_path, keep=2)
    good = {"step": 1, "model": {"w": torch.ones(3)}, "ema": {"w": torch.ones(3)}, "config": {}}
    store.save(good)
    bad = {**good, "step": 2, "model": {"w": torch.tensor([1.0, float("inf"), 0.0])}}
    with pytest.raises(TrainingDiverged, match=r"refusing to write .*ckpt_00000002\.pt: non-finite values in "
                                                r"model/w.*newest checkpoint is .*ckpt_00000001\.pt \(step 1, "
                                                r"largest \|weight\| 1\)"):
        store.save(bad)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [1]


# -- the lock --------------------------------------------------------------------------------------------
def test_a_locked_folder_is_refused_in_process_and_nothing_is_written(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                                    "started": "now", "command": "first"}))
        with pytest.raises(RunLocked, match=f"in use by PID {holder.pid}"):
            make_trainer(tmp_path, steps=3).fit()
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    make_trainer(tmp_path, steps=3).fit()  # the holder is gone: its stale lock is taken over
    assert load_checkpoint(tmp_path)["step"] == 3 and not (tmp_path / ".lock").exists()


def test_the_lock_is_taken_once_and_a_planned_fit_neither_relocks_nor_rereads(tmp_path, monkeypatch):
    make_trainer(tmp_path, steps=5).fit()
    run = RunDir(tmp_path)
    with run.lock():
        with pytest.raises(RunLocked, match="this process"):  # a plain lock: a second acquisition is refused
            RunLock(tmp_path).acquire()
        plan = run.plan({}, [])
        assert plan.step == 5 and plan.checkpoint == tmp_path / "checkpoints" / "ckpt_00000005.pt"
        trainer = make_trainer(tmp_path, steps=8)
        trainer.load_state_dict(plan.state)
        reads = []
        real_load = torch.load
        monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
        assert trainer.fit(plan=plan)["step"] == 8.0
        assert reads == [] and (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()


# -- the metrics log ----------------------------------------------------------------------------------------
def test_metrics_continue_from_the_resumed_step_without_duplicates(tmp_path):
    first = make_trainer(tmp_path, steps=20)
    first.steps = 13  # a run killed at step 13: checkpoint 10, rows up to 13, the last one cut short
    first.fit()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 14, "loss/mo')
    (tmp_path / "checkpoints" / "ckpt_00000013.pt").unlink()
    make_trainer(tmp_path, steps=20).fit()
    steps = [r["step"] for r in metric_rows(tmp_path)]
    assert steps == list(range(1, 21))


def test_tensorboard_asked_for_but_missing_is_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    caplog.set_level(logging.WARNING)
    log = MetricsLog(tmp_path, tensorboard=True)
    log.write(1, {"loss": 1.0})
    log.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "TensorBoard is not installed" in warnings[0]


def test_the_trainer_logs_where_and_what_it_runs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dae_gen.trainer")
    make_trainer(tmp_path, steps=5).fit()
    make_trainer(tmp_path, steps=10).fit()
    messages = [r.getMessage() for r in caplog.records if r.name == "dae_gen.trainer"]
    assert any(f"run directory {tmp_path}" in m and "parameters" in m and "device cpu" in m for m in messages)
    assert "new run: 5 steps" in messages
    assert f"resumed from step 5 ({tmp_path / 'checkpoints' / 'ckpt_00000005.pt'})" in messages
    summary = [m for m in messages if m.startswith("finished 10 steps (5 this session)")]
    assert len(summary) == 1 and "loss/model" in summary[0] and "ckpt_00000010.pt" in summary[0]


# -- launch environments -------------------------------------------------------------------------------
def test_launch_environment_from_torchrun_slurm_and_nothing():
    assert D.launch_environment({}) is None
    assert D.launch_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None
    torchrun = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "a", "MASTER_PORT": "29500"}
    assert D.launch_environment(torchrun) == {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    srun = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
            "SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[017-018,020],cpu1"}
    found = D.launch_environment(srun)
    assert {k: found[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu017"}
    assert 20000 <= int(found["MASTER_PORT"]) <= 60000
    assert D.launch_environment({**srun, "SLURM_PROCID": "0"})["MASTER_PORT"] == found["MASTER_PORT"]  # all agree
    assert D.launch_environment({**srun, "MASTER_PORT": "1234"})["MASTER_PORT"] == "1234"
    sbatch_shell = {k: v for k, v in srun.items() if k != "SLURM_STEP_ID"}  # a batch script, not an srun task
    assert D.launch_environment(sbatch_shell) is None
    assert D.first_host("node7") == "node7" and D.first_host("a[3-4]") == "a3"


def test_an_in_training_sample_grid_has_its_own_progress_bar(tmp_path, capsys):
    def sampler(model, n, *, generator=None, callback=None):
        for i in range(1, 6):
            callback(Step(i=i, n=5, x=torch.zeros(n, 2)))
        return torch.zeros(n, 2)

    saved = []

    def save(samples, path):
        saved.append((tuple(samples.shape), path.name))
        path.write_bytes(b"grid")

    trainer = make_trainer(tmp_path, steps=4, sample_every=2, sampler=sampler, n_samples=3, progress=True,
                           save_samples=save)
    trainer.fit()
    err = capsys.readouterr().err
    assert "grid at step 2" in err and "grid at step 4" in err and "train" in err
    assert saved == [((3, 2), "samples_00000002.png"), ((3, 2), "samples_00000004.png")]
    assert (tmp_path / "samples.png").read_bytes() == b"grid"
