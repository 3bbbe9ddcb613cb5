"""Run under ``torchrun --nproc_per_node=2``: data parallelism checked against exact identities.

1. Every method (NCSN DSM, DAE, annealed-DSM energy, DDE, DDE generator) trained by DDP on 2 processes with 8
   examples each ends with the weights of a 1-process run with the same 16 examples per update (float
   tolerance): DDP's averaged gradient of the per-rank means is the gradient of the global mean. The examples
   and the objectives' noise come from one stream shared by all ranks, each rank taking its slice, so both
   layouts see the same numbers (:class:`LayoutFreeRandomness`); the 1-process runs happen before the process
   group exists.
2. Replicas stay identical while each rank draws its own data and noise (also after a resume).
3. A run directory locked by another live process is refused on every rank; none waits for the others.
4. A checkpoint write that fails on rank 0 (disk full) stops every rank with the same one-line error.
"""

import errno
import faulthandler
import json
import os
import socket
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

import dae_gen.checkpoint as checkpoint_module
import dae_gen.objectives.mdsm as mdsm_module
from dae_gen import distributed as D
from dae_gen.data.toy import two_moons
from dae_gen.errors import CheckpointError
from dae_gen.nets.mlp import GeneratorMLP, ScalarMLP, ScoreMLP
from dae_gen.noise import geometric_sigmas
from dae_gen.objectives.dae import DenoisingAutoencoder
from dae_gen.objectives.dde import DDEGenerativeModel, DenoisingDensityEstimator
from dae_gen.objectives.dsm import DenoisingScoreMatching
from dae_gen.objectives.mdsm import AnnealedDSMEnergy
from dae_gen.run_dir import RunLocked
from dae_gen.train_hooks import default_hooks
from dae_gen.trainer import Trainer

GLOBAL_BATCH, STEPS = 16, 3
METHODS = {
    "ncsn_dsm": lambda: DenoisingScoreMatching(net=partial(ScoreMLP, hidden=16, depth=2), data_shape=(2,),
                                               sigmas=geometric_sigmas(1.0, 0.1, 3)),
    "dae": lambda: DenoisingAutoencoder(net=partial(ScoreMLP, hidden=16, depth=2, divide_by_sigma=False),
                                        data_shape=(2,), sigmas=geometric_sigmas(1.0, 0.1, 3)),
    "mdsm_energy": lambda: AnnealedDSMEnergy(net=partial(ScalarMLP, hidden=16, depth=2), data_shape=(2,),
                                             sigma_low=0.1, sigma_high=1.0),
    "dde": lambda: DenoisingDensityEstimator(net=partial(ScalarMLP, hidden=16, depth=2), data_shape=(2,), sigma=0.2),
    "dde_generator": lambda: DDEGenerativeModel(generator=partial(GeneratorMLP, hidden=16, depth=2),
                                                dde=partial(ScalarMLP, hidden=16, depth=2), data_shape=(2,),
                                                sigma=0.2, latent_dim=2, n_dde_steps=2),
}


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


class LayoutFreeRandomness:
    """While active, every batch-shaped random draw without an explicit generator (``torch.randn``,
    ``randn_like``, ``randint``), the data batches and the annealed-DSM σ slots come from one stream shared by
    all ranks: a draw of B rows takes B·W rows and keeps this rank's slice, so W ranks × B rows see exactly
    the rows of 1 rank × W·B."""

    def __init__(self, *, rank: int, world: int, seed: int = 1):
        self.rank, self.world = rank, world
        self.stream = torch.Generator().manual_seed(seed)
        self.originals = {}

    def _slice(self, full):
        rows = full.shape[0] // self.world
        return full[self.rank * rows:(self.rank + 1) * rows]

    def __enter__(self):
        randn, randn_like, randint = torch.randn, torch.randn_like, torch.randint
        spaced = mdsm_module.batch_spaced_sigmas
        self.originals = {"randn": randn, "randn_like": randn_like, "randint": randint}

        def shared_randn(*size, generator=None, device=None, dtype=None, **kwargs):
            if generator is not None:
                return randn(*size, generator=generator, device=device, dtype=dtype, **kwargs)
            size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
            full = randn((size[0] * self.world, *size[1:]), generator=self.stream, dtype=dtype)
            return self._slice(full).to(device)

        def shared_randn_like(t, **kwargs):
            full = randn((t.shape[0] * self.world, *t.shape[1:]), generator=self.stream, dtype=t.dtype)
            return self._slice(full).to(t.device)

        def shared_randint(high, size, *, generator=None, device=None, **kwargs):
            if generator is not None:
                return randint(high, size, generator=generator, device=device, **kwargs)
            full = randint(high, (size[0] * self.world, *size[1:]), generator=self.stream)
            return self._slice(full).to(device)

        def shared_spaced(batch_size, *args, **kwargs):
            return self._slice(spaced(batch_size * self.world, *args, **kwargs))

        torch.randn, torch.randn_like, torch.randint = shared_randn, shared_randn_like, shared_randint
        mdsm_module.batch_spaced_sigmas, self.originals["spaced"] = shared_spaced, spaced
        return self

    def __exit__(self, *exc):
        torch.randn, torch.randn_like = self.originals["randn"], self.originals["randn_like"]
        torch.randint, mdsm_module.batch_spaced_sigmas = self.originals["randint"], self.originals["spaced"]


class SlicedData:
    """A dataset whose batch of B is this rank's slice of a B·W batch drawn from a stream shared by all ranks."""

    def __init__(self, data, *, rank: int, world: int):
        self.data, self.rank, self.world = data, rank, world
        self.stream = torch.Generator().manual_seed(2)
        self.shape, self.info = data.shape, data.info

    def to(self, device):
        self.data = self.data.to(device)
        return self

    def batch(self, batch_size, *, generator=None):
        full = self.data.batch(batch_size * self.world, generator=self.stream)
        return full[self.rank * batch_size:(self.rank + 1) * batch_size]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def hooks(*, ckpt_every: int) -> list:
    """A log row every step and checkpoints every ``ckpt_every`` steps (0: the final one), no grids or bars."""
    return default_hooks(log_every=1, ckpt_every=ckpt_every, sample_every=0, progress=False, tensorboard=False)


def initial(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return METHODS[method]()


def train_method(method: str, run_dir: Path, *, rank: int, world: int) -> torch.nn.Module:
    objective = initial(method)
    trainer = Trainer(objective=objective, data=SlicedData(two_moons(), rank=rank, world=world), run_dir=run_dir,
                      steps=STEPS, batch_size=GLOBAL_BATCH // world, optimizer=partial(torch.optim.Adam, lr=1e-2),
                      seed=0)
    with LayoutFreeRandomness(rank=rank, world=world):
        trainer.fit(hooks=hooks(ckpt_every=0))
    return trainer.objective


def main(out: Path) -> None:
    faulthandler.dump_traceback_later(200, exit=True)  # a hang ends with every thread's stack, not a test timeout
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    assert world == 2, world
    # 1a. the 1-process reference runs (no process group yet: the plain single-process trainer)
    reference = {}
    if rank == 0:
        for method in METHODS:
            reference[method] = flat(train_method(method, out / f"single_{method}", rank=0, world=1).parameters())
    D.init_distributed("cpu")
    assert D.world_size() == 2
    # 1b. the same methods under DDP; replicas must agree exactly, and equal the reference within float tolerance
    differences = {}
    for method in METHODS:
        params = flat(train_method(method, out / f"ddp_{method}", rank=rank, world=world).parameters())
        replicas = [torch.zeros_like(params) for _ in range(2)]
        dist.all_gather(replicas, params)
        assert torch.equal(replicas[0], replicas[1]), f"{method}: replicas diverged"
        if rank == 0:
            differences[method] = (params - reference[method]).abs().max().item()
            assert torch.allclose(params, reference[method], rtol=1e-4, atol=1e-5), (method, differences[method])
            assert not torch.equal(params, flat(initial(method).parameters())), f"{method}: nothing was trained"
    if rank == 0:
        (out / "ddp_vs_single.json").write_text(json.dumps(differences))

    # 2. per-rank data and noise streams; the initial weights differ on purpose (the trainer broadcasts rank 0's)
    run_dir = out / "streams"
    torch.manual_seed(1000 + rank)
    objective = DenoisingScoreMatching(net=partial(ScoreMLP, hidden=16, depth=2), data_shape=(2,),
                                       sigmas=geometric_sigmas(1.0, 0.1, 3))

    def make_trainer(steps, directory=run_dir):
        return Trainer(objective=objective, data=two_moons(), run_dir=directory, steps=steps, batch_size=8,
                       optimizer=partial(torch.optim.Adam, lr=1e-2), seed=0)

    trainer = make_trainer(5)
    batch = trainer.data.batch(4, generator=trainer.data_generator)
    batches = [torch.zeros_like(batch) for _ in range(2)]
    dist.all_gather(batches, batch)
    assert not torch.equal(batches[0], batches[1]), "ranks must draw different data"
    trainer.fit(hooks=hooks(ckpt_every=5))
    params = flat(trainer.objective.parameters())
    replicas = [torch.zeros_like(params) for _ in range(2)]
    dist.all_gather(replicas, params)
    assert torch.equal(replicas[0], replicas[1]), "replicas diverged"
    resumed = make_trainer(8)
    assert resumed.maybe_resume() and resumed.step == 5
    batch = resumed.data.batch(4, generator=resumed.data_generator)
    noise = torch.randn(3)
    for tensor in (batch, noise):
        gathered = [torch.zeros_like(tensor) for _ in range(2)]
        dist.all_gather(gathered, tensor)
        assert not torch.equal(gathered[0], gathered[1]), "ranks share data or noise after resume"

    # 3. a folder locked by a live process (torchrun's agent, our parent): every rank is refused
    locked = out / "locked"
    if rank == 0:
        locked.mkdir()
        (locked / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(),
                                                  "started": "earlier", "command": "the first trainer"}))
    D.barrier()
    try:
        make_trainer(3, locked).fit(hooks=hooks(ckpt_every=5))
    except RunLocked as err:
        assert "the first trainer" in str(err), err
    else:
        raise AssertionError("a locked run directory was not refused")
    assert not (locked / "checkpoints").exists() and not (locked / "metrics.jsonl").exists()

    # 4. the disk fills up under rank 0's checkpoint: every rank raises the same error
    if rank == 0:
        def full_disk(file, mode="r", *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))

        checkpoint_module.open = full_disk
    try:
        make_trainer(4, out / "full").fit(hooks=hooks(ckpt_every=5))
    except CheckpointError as err:
        assert str(err).endswith("ckpt_00000004.pt: No space left on device (ENOSPC)"), err
    else:
        raise AssertionError("a failed checkpoint write went unnoticed")
    finally:
        vars(checkpoint_module).pop("open", None)
    (out / f"asserts_passed_rank{rank}").touch()
    del trainer, resumed  # their DDP wrappers must not outlive the process group (see D.shutdown)
    D.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
