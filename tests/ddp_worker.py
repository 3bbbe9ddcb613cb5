"""Run under ``torchrun --nproc_per_node=2``: checks the data-parallel pieces against exact identities."""

import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from dae_gen import distributed as D
from dae_gen.data.toy import two_moons
from dae_gen.nets.mlp import ScoreMLP
from dae_gen.noise import geometric_sigmas
from dae_gen.objectives.dsm import DenoisingScoreMatching
from dae_gen.trainer import Trainer


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def main(run_dir: Path) -> None:
    D.init_distributed("cpu")
    assert D.world_size() == 2, D.world_size()
    # 1. averaged gradients are the mean of the ranks' local gradients
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    torch.manual_seed(100 + D.rank())
    model(torch.randn(8, 3)).pow(2).mean().backward()
    local = flat(p.grad for p in model.parameters())
    gathered = [torch.zeros_like(local) for _ in range(2)]
    dist.all_gather(gathered, local)
    assert not torch.allclose(gathered[0], gathered[1])
    D.average_gradients(list(model.parameters()))
    assert torch.allclose(flat(p.grad for p in model.parameters()), (gathered[0] + gathered[1]) / 2, atol=1e-7)
    # 2. a trainer run keeps the replicas identical while each rank sees different data; the initial weights
    #    differ on purpose (the trainer must broadcast rank 0's)
    torch.manual_seed(1000 + D.rank())
    objective = DenoisingScoreMatching(net=partial(ScoreMLP, hidden=16, depth=2), data_shape=(2,),
                                       sigmas=geometric_sigmas(1.0, 0.1, 3))
    def make_trainer(steps):
        return Trainer(objective=objective, data=two_moons(), run_dir=run_dir, steps=steps, batch_size=8,
                       optimizer=partial(torch.optim.Adam, lr=1e-2), ckpt_every=5, sample_every=0, log_every=1,
                       progress=False, tensorboard=False, seed=0)

    trainer = make_trainer(5)
    batch = trainer.data.batch(4, generator=trainer.data_generator)
    batches = [torch.zeros_like(batch) for _ in range(2)]
    dist.all_gather(batches, batch)
    assert not torch.equal(batches[0], batches[1]), "ranks must draw different data"
    trainer.fit()
    params = flat(p.detach() for p in trainer.objective.parameters())
    replicas = [torch.zeros_like(params) for _ in range(2)]
    dist.all_gather(replicas, params)
    assert torch.equal(replicas[0], replicas[1]), "replicas diverged"
    # 3. after a resume every rank still draws its own data and noise
    resumed = make_trainer(8)
    assert resumed.maybe_resume() and resumed.step == 5
    batch = resumed.data.batch(4, generator=resumed.data_generator)
    noise = torch.randn(3)
    for tensor in (batch, noise):
        gathered = [torch.zeros_like(tensor) for _ in range(2)]
        dist.all_gather(gathered, tensor)
        assert not torch.equal(gathered[0], gathered[1]), "ranks share data or noise after resume"
    (run_dir / f"asserts_passed_rank{D.rank()}").touch()
    D.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
