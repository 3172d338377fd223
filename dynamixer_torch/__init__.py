"""Our own PyTorch DynaMixer (the "twin"), for the parity tests and the PyTorch baseline of the
benchmarks: written from the model's description, independently of our JAX code.

Module and parameter names give exactly the authors' state_dict keys, so ``flax_to_torch``
output loads here with ``strict=True``. Layout is channels-last (B, H, W, C) after the patch
embedding, as in the authors' model.
Not part of the installed package (``dynamixer_jax`` never imports it or torch): a top-level
package of the repository, importable from its root (pytest's ``pythonpath``, the benchmarks'
``benchlib``); needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class TorchMlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TorchDynaMixerOp(nn.Module):
    """mixes the L tokens of (N, L, C) with generated, softmax-normalised (L, L) matrices per segment."""

    def __init__(self, dim: int, seq_len: int, segments: int, reduced: int):
        super().__init__()
        self.seq_len, self.segments, self.reduced = seq_len, segments, reduced
        self.compress = nn.Linear(dim, segments * reduced)
        self.generate = nn.Linear(seq_len * reduced, seq_len * seq_len)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        n, length, dim = x.shape
        s, r = self.segments, self.reduced
        z = self.compress(x).view(n, length, s, r).transpose(1, 2).reshape(n, s, length * r)
        mixing = self.generate(z).view(n, s, length, length).softmax(dim=2)  # over input tokens
        segmented = x.view(n, length, s, dim // s)
        y = torch.einsum("nisd,nsij->njsd", segmented, mixing).reshape(n, length, dim)
        return self.out(y)


class TorchDynaMixerBlock(nn.Module):
    """column mixing, row mixing and a channel Linear, reweighted per channel."""

    def __init__(self, dim: int, height: int, width: int, segments: int, reduced: int):
        super().__init__()
        self.mix_h = TorchDynaMixerOp(dim, height, segments, reduced)
        self.mix_w = TorchDynaMixerOp(dim, width, segments, reduced)
        self.mlp_c = nn.Linear(dim, dim, bias=False)
        self.reweight = TorchMlp(dim, dim // 4, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, height, width, dim = x.shape
        columns = x.transpose(1, 2).reshape(b * width, height, dim)
        h = self.mix_h(columns).view(b, width, height, dim).transpose(1, 2)
        w = self.mix_w(x.reshape(b * height, width, dim)).view(b, height, width, dim)
        c = self.mlp_c(x)
        weights = self.reweight((h + w + c).mean(dim=(1, 2))).view(b, dim, 3).softmax(dim=-1)
        weights = weights[:, None, None]  # (B, 1, 1, C, 3)
        return self.proj(h * weights[..., 0] + w * weights[..., 1] + c * weights[..., 2])


def drop_path(x, rate: float, training: bool):
    """Per-sample stochastic depth; kept samples scaled by 1 / (1 - rate)."""
    if not training or rate == 0.0:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= rate
    return x * keep / (1.0 - rate)


class TorchMixerLayer(nn.Module):
    """pre-norm residual DynaMixer block and MLP."""

    def __init__(self, dim, height, width, segments, reduced, mlp_ratio=3.0, drop_path_rate=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = TorchDynaMixerBlock(dim, height, width, segments, reduced)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = TorchMlp(dim, int(dim * mlp_ratio), dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x):
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class TorchDownsample(nn.Module):
    """A kernel == stride convolution between stages, on channels-last tokens."""

    def __init__(self, dim_in, dim_out, kernel):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim_out, kernel_size=kernel, stride=kernel)

    def forward(self, x):
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class TorchPatchEmbed(TorchDownsample):
    """The stem: Conv2d in_chans -> C0 with kernel == stride == patch size, NCHW in, NHWC out."""

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


class TorchDynaMixer(nn.Module):
    """the whole network; takes NCHW images like the authors' model."""

    def __init__(
        self,
        layers: Sequence[int],
        embed_dims: Sequence[int],
        transitions: Sequence[bool],
        num_segments: Sequence[int],
        reduced_dims: Sequence[int],
        mlp_ratios: Sequence[float],
        num_classes: int = 1000,
        image_size: int = 224,
        patch_size: int = 7,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        **_ignored,
    ):
        super().__init__()
        self.patch_embed = TorchPatchEmbed(in_chans, embed_dims[0], patch_size)
        side = image_size // patch_size
        total, index = sum(layers), 0
        network = []
        for i, count in enumerate(layers):
            stage = []
            for _ in range(count):
                rate = drop_path_rate * index / max(total - 1, 1)
                stage.append(
                    TorchMixerLayer(
                        embed_dims[i],
                        side,
                        side,
                        num_segments[i],
                        reduced_dims[i],
                        mlp_ratios[i],
                        rate,
                    )
                )
                index += 1
            network.append(nn.Sequential(*stage))
            if i + 1 < len(layers) and (transitions[i] or embed_dims[i] != embed_dims[i + 1]):
                kernel = 2 if transitions[i] else 1
                network.append(TorchDownsample(embed_dims[i], embed_dims[i + 1], kernel))
                side //= kernel
        self.network = nn.ModuleList(network)
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-5)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes else nn.Identity()

    def forward(self, images):
        x = self.patch_embed(images)
        for entry in self.network:
            x = entry(x)
        return self.head(self.norm(x).mean(dim=(1, 2)))


def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Give every parameter random values (also LayerNorm and biases), so parity tests exercise all of them.

    Linear weights are scaled by 1/sqrt(fan_in) so activations stay O(1) through deep networks.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise / (param[0].numel() ** 0.5))
            elif (
                name.endswith("norm1.weight")
                or name.endswith("norm2.weight")
                or name == "norm.weight"
            ):
                param.copy_(1.0 + scale * noise)
            else:
                param.copy_(scale * noise)
    return module
