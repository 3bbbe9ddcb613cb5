"""The threads rule (dae_gen.threads): explicit counts, busy machines, and the 1-vs-N probe on real clocks."""

import itertools
import os
import time

import pytest
import torch

from dae_gen import threads as T


@pytest.fixture(autouse=True)
def one_thread_after():
    yield
    torch.set_num_threads(1)  # the suite's setting (conftest)


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(T, "available_cores", lambda: 2)


def test_an_integer_is_used_as_given():
    choice = T.configure_threads(3, workload=lambda: pytest.fail("an explicit count must not probe"))
    assert (choice.threads, choice.reason) == (3, "explicit") and torch.get_num_threads() == 3
    assert T.configure_threads("2").threads == 2  # a command line may hand it over as a string
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        T.configure_threads(0)


def test_a_busy_machine_gets_one_thread_without_probing(two_cores):
    choice = T.configure_threads("auto", busy=1.0, workload=lambda: pytest.fail("no probe on a busy machine"))
    assert (choice.threads, choice.reason, choice.busy_cores) == (1, "busy", 1.0)
    assert torch.get_num_threads() == 1


def test_one_core_and_cuda_and_no_workload(monkeypatch, two_cores):
    assert T.configure_threads(None, busy=0.0).reason == "no probe"  # never more than 1 thread unmeasured
    torch.set_num_threads(2)
    cuda = T.configure_threads("auto", device="cuda", busy=0.0, workload=lambda: pytest.fail("no probe"))
    assert (cuda.threads, cuda.reason) == (2, "cuda")  # torch's default is kept on a GPU job
    monkeypatch.setattr(T, "available_cores", lambda: 1)
    assert T.configure_threads("auto", workload=lambda: pytest.fail("no probe")).reason == "one core"


@pytest.mark.parametrize("seconds, expected", [
    ({1: 0.05, 2: 0.20}, 1),    # oversubscribed: two threads collapse
    ({1: 0.105, 2: 0.100}, 1),  # faster by less than the margin (1.1×): one thread is kept
    ({1: 0.20, 2: 0.11}, 2),    # a large network that splits well
])
def test_the_probe_decides_on_an_idle_machine(two_cores, seconds, expected):
    def simulated(workload, candidates):
        assert candidates == (1, 2)
        return seconds

    choice = T.configure_threads("auto", busy=0.0, workload=lambda: None, probe=simulated)
    assert (choice.threads, choice.reason, choice.seconds) == (expected, "probe", seconds)
    assert torch.get_num_threads() == expected


def test_the_probe_measures_and_picks_one_thread_where_one_is_faster(two_cores):
    """A workload that really takes longer with more threads (as small ops do on a busy CPU), timed by the real
    interleaved probe: one thread must win."""
    calls = []

    def workload():
        calls.append(torch.get_num_threads())
        time.sleep(0.02 * torch.get_num_threads() ** 2)

    choice = T.configure_threads("auto", busy=0.0, workload=workload)
    assert choice.threads == 1 and torch.get_num_threads() == 1
    # interleaved: one untimed call each, then 3 rounds (a workload under a second) A B A B A B, each a block of
    # repeats lasting about 0.1 s; how many repeats make a block depends on the machine's load, so not asserted
    assert calls[:2] == [1, 2]
    blocks = [list(block) for _, block in itertools.groupby(calls[2:])]
    assert [block[0] for block in blocks] == [1, 2] * 3 and len({len(block) for block in blocks}) == 1
    assert choice.seconds[2] > choice.seconds[1] >= 0.02


def test_busy_cores_is_a_share_of_the_machine():
    assert 0.0 <= T.busy_cores(interval=0.05) <= os.cpu_count()
