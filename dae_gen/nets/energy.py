"""ResNet energy with a quadratic head for annealed / multi-scale DSM (Li, Chen & Sommer 2019, arXiv:1910.07762)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dae_gen.nets.conv import image_shape, n_halvings


class EnergyBlock(nn.Module):
    """Residual block without normalisation: ``shortcut(x) + conv(ELU(conv(ELU(x))))``, optionally 2×2 mean-pooled.

    As in the reference implementation (zengyi-li/MDSM) the first conv has no bias and the shortcut is always
    a learned 1×1 conv; when downsampling, the residual branch pools after its second conv and the shortcut
    pools before its 1×1 conv.
    """

    def __init__(self, in_ch: int, out_ch: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.elu(self.conv1(F.elu(x))))  # (B, out_ch, H, W)
        if self.downsample:
            return self.shortcut(F.avg_pool2d(x, 2)) + F.avg_pool2d(h, 2)  # (B, out_ch, H/2, W/2)
        return self.shortcut(x) + h


class ResNetEnergy(nn.Module):
    """Scalar energy ``E(x)``: ``(B, C, H, W)`` → ``(B,)``, ELU ResNet with the head ``l1(h)·l2(h) + lq(h²)``.

    ``n_blocks`` follows the paper's names "ResNet-12" / "ResNet-18": it counts the 3×3 convs in residual
    branches, two per residual block, so ``n_blocks=12`` is 6 residual blocks (Fashion-MNIST, 64 channels) and
    ``n_blocks=18`` is 9 (CIFAR-10, 128 channels). The blocks are split evenly into stages (any remainder goes
    to the last, lowest-resolution stages); the first block of each stage mean-pools 2×2 and doubles the width.
    There is one stage per exact halving of H×W that keeps both sides ≥ 4 (32→16→8→4: 3 stages; 28→14→7: 2;
    8→4: 1), and a single non-pooling stage when none is possible. Stage widths are 2, 4, 8, … × ``channels``.
    ELU (C¹) and the quadratic head give a continuous ``∇_x E`` that can be differentiated again (double backward).
    """

    def __init__(
        self,
        *,
        data_shape: Sequence[int],
        n_blocks: int = 12,   # 3×3 convs in residual branches (2 per residual block): 12 FMNIST, 18 CIFAR-10
        channels: int = 64,   # width of the input conv; stage s has 2**(s+1) * channels
    ):
        super().__init__()
        in_ch, height, width = image_shape(data_shape, "ResNetEnergy")
        n_down = n_halvings(height, width)
        n_stages = max(n_down, 1)
        if n_blocks % 2 or n_blocks // 2 < n_stages:
            raise ValueError(
                f"ResNetEnergy needs an even n_blocks (2 convs per residual block) with at least one residual block "
                f"per stage ({n_stages} stages for {height}×{width}), i.e. n_blocks in {{{2 * n_stages}, "
                f"{2 * n_stages + 2}, …}}; got {n_blocks}"
            )
        n_res = n_blocks // 2
        per_stage = [n_res // n_stages + (s >= n_stages - n_res % n_stages) for s in range(n_stages)]

        self.conv_in = nn.Conv2d(in_ch, channels, 3, padding=1)
        blocks: list[nn.Module] = []
        width_now = channels
        for stage, count in enumerate(per_stage):
            for i in range(count):
                out_ch = channels * 2 ** (stage + 1) if i == 0 else width_now
                blocks.append(EnergyBlock(width_now, out_ch, downsample=(i == 0 and stage < n_down)))
                width_now = out_ch
        self.blocks = nn.Sequential(*blocks)
        n_features = width_now * (height >> n_down) * (width >> n_down)
        self.l1 = nn.Linear(n_features, 1)
        self.l2 = nn.Linear(n_features, 1)
        self.lq = nn.Linear(n_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(x)).flatten(1)  # (B, width * H' * W')
        return (self.l1(h) * self.l2(h) + self.lq(h * h)).squeeze(1)  # (B,) quadratic head
