"""Input pipeline's share of a training step: on-device uint8 batches vs a DataLoader, vs the model step.

    python experiments/input_pipeline/run.py [--device cpu|cuda] [--out results.json]

For each dataset: seconds per batch of 128 from ``ImageTensorData.batch`` (index, scale, flip on the device),
from a torchvision-style ``DataLoader`` over the same tensor (2 workers) for comparison, and seconds per
training step of the preset network; the share is batch / (batch + step).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from dae_gen.data.cifar10 import cifar10
from dae_gen.data.fakes import write_fake_cifar10
from dae_gen.data.fashion_mnist import fashion_mnist
from dae_gen.nets.unet import ScoreUNet
from dae_gen.noise import geometric_sigmas
from dae_gen.objectives.dsm import DenoisingScoreMatching


def timed(fn, *, repeats: int, warmup: int = 2, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def dataloader_batches(data, batch_size: int):
    """A conventional pipeline for comparison: Dataset of uint8 tensors, shuffling DataLoader, 2 workers."""
    dataset = torch.utils.data.TensorDataset(data.images.cpu())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2,
                                         drop_last=True, persistent_workers=True)
    iterator = iter(loader)

    def next_batch():
        nonlocal iterator
        try:
            (x,) = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            (x,) = next(iterator)
        return x.to(data.device, non_blocking=True).float() / 255.0

    return next_batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=32, help="U-Net width for the model step")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_cifar10(tmp, n_train=5000, n_test=100)  # real on-disk format; no real CIFAR-10 offline
        datasets = {"fashion_mnist32": fashion_mnist(image_size=32),
                    "cifar10 (fake, hflip)": cifar10(root=tmp, hflip=True)}
        rows = []
        for name, data in datasets.items():
            data.to(device)
            generator = torch.Generator().manual_seed(0)
            on_device = timed(lambda: data.batch(args.batch_size, generator=generator), repeats=50, device=device)
            loader = timed(dataloader_batches(data, args.batch_size), repeats=50, device=device)
            model = DenoisingScoreMatching(net=partial(ScoreUNet, channels=args.channels, channel_mults=(1, 2, 2)),
                                           data_shape=data.shape, sigmas=geometric_sigmas(1.0, 0.01, 10)).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            x = data.batch(args.batch_size, generator=generator)

            def step():
                opt.zero_grad(set_to_none=True)
                model.losses("model", x).mean().backward()
                opt.step()

            step_s = timed(step, repeats=5 if device.type == "cpu" else 50, device=device)
            rows.append({"dataset": name, "n_images": len(data), "batch_s_on_device": on_device,
                         "batch_s_dataloader": loader, "model_step_s": step_s,
                         "input_share_on_device": on_device / (on_device + step_s),
                         "input_share_dataloader": loader / (loader + step_s)})
    result = {"device": str(device), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "unet_channels": args.channels, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
