"""Networks only (no losses, no sampling): MLPs for flat data, the σ-conditioned U-Net, the ResNet energy,
scalar conv nets for DDEs and a DCGAN-style generator."""

from dae_gen.nets.conv import ConvGenerator, ScalarConvNet
from dae_gen.nets.energy import ResNetEnergy
from dae_gen.nets.mlp import GeneratorMLP, ScalarMLP, ScoreMLP
from dae_gen.nets.unet import ScoreUNet

__all__ = ["ConvGenerator", "GeneratorMLP", "ResNetEnergy", "ScalarConvNet", "ScalarMLP", "ScoreMLP", "ScoreUNet"]
