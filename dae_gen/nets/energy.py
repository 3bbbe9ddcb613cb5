"""ResNet energy with a quadratic head for annealed / multi-scale DSM (Li, Chen & Sommer 2019, arXiv:1910.07762).

Besides ``forward`` (the energy), the network computes its own input gradient ``∇_x E`` by the chain rule
written out (:meth:`ResNetEnergy.value_and_input_grad`). The annealed-DSM loss contains ``∇_x E``, so training
differentiates it again; with autograd's input gradient that second differentiation runs torch's generic
convolution double backward, which on a CPU costs about 3.4 forward convolutions per layer. Written out, each
conv's input gradient is a transposed conv with the same weight, whose own gradients are the native conv
kernels (2 forward-conv costs): the same numbers at a lower cost (``experiments/bench/README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dae_gen.nets.conv import image_shape, n_halvings


def conv_input_grad(grad_out: Tensor, conv: nn.Conv2d) -> Tensor:
    """``∂⟨grad_out, conv(x)⟩/∂x`` for a stride-1 conv with "same" padding: the transposed conv, same weight."""
    return F.conv_transpose2d(grad_out, conv.weight, padding=conv.padding)


def elu_input_grad(grad_out: Tensor, elu_out: Tensor) -> Tensor:
    """``grad_out · ELU'(x)`` (α = 1) from the activation ``ELU(x)``: ``ELU' = 1`` where positive, ``ELU(x) + 1``
    elsewhere (no exponential); torch's fused kernel, differentiable in both arguments."""
    return torch.ops.aten.elu_backward(grad_out, 1.0, 1, 1, True, elu_out)


def mean_pool_input_grad(grad_out: Tensor) -> Tensor:
    """``∂⟨grad_out, avg_pool2d(x, 2)⟩/∂x``: each 2×2 cell gets a quarter of its output's gradient."""
    return F.interpolate(0.25 * grad_out, scale_factor=2.0, mode="nearest")


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
        return self.forward_saving(x)[0]

    def forward_saving(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The block's output and the activations :meth:`input_grad` needs: ``ELU(x)`` and ``ELU(h1)``."""
        a0 = F.elu(x)
        a1 = F.elu(self.conv1(a0))  # (B, in_ch, H, W)
        h2 = self.conv2(a1)  # (B, out_ch, H, W)
        if self.downsample:
            return self.shortcut(F.avg_pool2d(x, 2)) + F.avg_pool2d(h2, 2), (a0, a1)  # (B, out_ch, H/2, W/2)
        return self.shortcut(x) + h2, (a0, a1)

    def input_grad(self, grad_out: Tensor, saved: tuple[Tensor, Tensor]) -> Tensor:
        """``∂⟨grad_out, block(x)⟩/∂x`` from the activations of :meth:`forward_saving`, branch by branch."""
        a0, a1 = saved
        if self.downsample:
            grad_h2 = mean_pool_input_grad(grad_out)
            grad_shortcut = mean_pool_input_grad(conv_input_grad(grad_out, self.shortcut))
        else:
            grad_h2 = grad_out
            grad_shortcut = conv_input_grad(grad_out, self.shortcut)
        grad_a1 = elu_input_grad(conv_input_grad(grad_h2, self.conv2), a1)
        return grad_shortcut + elu_input_grad(conv_input_grad(grad_a1, self.conv1), a0)


class ResNetEnergy(nn.Module):
    """Scalar energy ``E(x)``: ``(B, C, H, W)`` → ``(B,)``, ELU ResNet with the head ``l1(h)·l2(h) + lq(h²)``.

    ``n_blocks`` follows the paper's names "ResNet-12" / "ResNet-18": it counts the 3×3 convs in residual
    branches, two per residual block, so ``n_blocks=12`` is 6 residual blocks (Fashion-MNIST, 64 channels) and
    ``n_blocks=18`` is 9 (CIFAR-10, 128 channels). The blocks are split evenly into stages (any remainder goes
    to the last, lowest-resolution stages); the first block of each stage mean-pools 2×2 and doubles the width.
    There is one stage per exact halving of H×W that keeps both sides ≥ 4 (32→16→8→4: 3 stages; 28→14→7: 2;
    8→4: 1), and a single non-pooling stage when none is possible. Stage widths are 2, 4, 8, … × ``channels``.
    ELU (C¹) and the quadratic head give a continuous ``∇_x E`` that can be differentiated again (double backward).
    With ``channels_last`` the weights and activations use the NHWC memory layout (values unchanged; on this
    project's CPU a training step and a sampler step are about 6% faster).
    """

    def __init__(
        self,
        *,
        data_shape: Sequence[int],
        n_blocks: int = 12,   # 3×3 convs in residual branches (2 per residual block): 12 FMNIST, 18 CIFAR-10
        channels: int = 64,   # width of the input conv; stage s has 2**(s+1) * channels
        channels_last: bool = True,  # NHWC memory layout for the convs (same values, faster on CPU)
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
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.input_conv(x)).flatten(1)  # (B, features)
        return (self.l1(h) * self.l2(h) + self.lq(h * h)).squeeze(1)  # (B,) quadratic head

    def input_conv(self, x: Tensor) -> Tensor:
        """``conv_in(x)`` in ``x``'s precision, also under bf16 autocast (``dae_gen.precision``). bf16 would round the
        pixels to 8 significant bits (±0.002 at 0.5), and ``∇E ≈ (x − D(x))/σ₀²`` magnifies an input error by
        ~1/σ₀² = 100: the input gradient's cosine with fp32 falls from 0.9999 to 0.97 on some examples of a trained
        energy. The input conv has 1–3 input channels: a small part of the network's cost."""
        with torch.autocast(x.device.type, enabled=False):
            return self.conv_in(x.contiguous(memory_format=self.memory_format))

    def input_conv_grad(self, grad: Tensor, dtype: torch.dtype) -> Tensor:
        """``∂⟨grad, conv_in(x)⟩/∂x`` in ``dtype`` (``x``'s), also under autocast, as :meth:`input_conv`."""
        with torch.autocast(grad.device.type, enabled=False):
            return conv_input_grad(grad.to(dtype), self.conv_in)

    def value_and_input_grad(self, x: Tensor, *, create_graph: bool) -> tuple[Tensor, Tensor]:
        """``(E(x), ∇_x E(x))``, shapes ``(B,)`` and ``(B, C, H, W)``, by an explicit backward pass.

        The head ``E = l1(h)·l2(h) + lq(h²)`` has ``∂E/∂h = l2(h)·w1 + l1(h)·w2 + 2h ⊙ wq``; the blocks are then
        walked back with :meth:`EnergyBlock.input_grad`. With ``create_graph`` the result is differentiable with
        respect to the parameters (and to ``x`` if it requires grad), as the annealed-DSM loss needs; without it
        no autograd graph is built (samplers), and it runs inside ``torch.inference_mode`` too.
        """
        if not create_graph:
            with torch.no_grad():
                return self._value_and_input_grad(x)
        with torch.inference_mode(False), torch.enable_grad():
            return self._value_and_input_grad(x.clone() if x.is_inference() else x)

    def _value_and_input_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.input_conv(x)
        saved = []
        for block in self.blocks:
            h, activations = block.forward_saving(h)
            saved.append(activations)
        features = h.flatten(1)  # (B, F)
        a, b = self.l1(features), self.l2(features)  # (B, 1) each
        energy = (a * b + self.lq(features * features)).squeeze(1)
        grad = (b * self.l1.weight + a * self.l2.weight + 2 * features * self.lq.weight).reshape(h.shape)
        for block, activations in zip(reversed(self.blocks), reversed(saved)):
            grad = block.input_grad(grad, activations)
        return energy, self.input_conv_grad(grad, x.dtype).contiguous()  # (B, C, H, W), default layout
