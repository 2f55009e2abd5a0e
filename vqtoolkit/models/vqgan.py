"""The VQGAN autoencoder: convolutional encoder, quantizer, convolutional decoder.

Module and parameter names follow the reference code (taming-transformers,
`taming/modules/diffusionmodules/model.py` and `taming/models/vqgan.py`) one to one, so that original
checkpoints load by renaming nothing but the top-level prefix. The implementation is our own: attention
runs through `F.scaled_dot_product_attention` and every op works on `channels_last` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the reference's eps, so imported weights give the same activations; the reference
    uses 32 groups (`norm_groups`), whatever the width."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1)


def _conv1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1)


def _swish(t: Tensor) -> Tensor:
    """SiLU of a fresh normalisation output, in place when no backward pass needs that input
    (encoding and decoding): the memory-bound activations are a tenth of CPU inference time."""
    return F.silu(t, inplace=not t.requires_grad)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: norm, swish, conv, norm, swish, dropout, conv (+ 1x1 shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, norm_groups)
        self.conv1 = _conv3(in_channels, out_channels)
        self.norm2 = _norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3(out_channels, out_channels)
        # Only present when the width changes (the reference's `nin_shortcut`).
        self.nin_shortcut = _conv1(in_channels, out_channels) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return h.add_(x)  # in place into the fresh conv output (its backward does not need it)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map (scale C^-0.5, as the reference)."""

    def __init__(self, channels: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm = _norm(channels, norm_groups)
        self.q = _conv1(channels, channels)
        self.k = _conv1(channels, channels)
        self.v = _conv1(channels, channels)
        self.proj_out = _conv1(channels, channels)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        x_n = self.norm(x)

        def tokens(t: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 1, HW, C)
            return t.flatten(2).transpose(1, 2).unsqueeze(1)

        out = F.scaled_dot_product_attention(tokens(self.q(x_n)), tokens(self.k(x_n)), tokens(self.v(x_n)))
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero-padding right and bottom only (the reference's asymmetric padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block.{j}`, `attn.{j}` and an optional `downsample` / `upsample`."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Middle(nn.Module):
    """`mid.block_1`, `mid.attn_1`, `mid.block_2` at the lowest resolution."""

    def __init__(self, channels: int, dropout: float, norm_groups: int = 32) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, norm_groups)
        self.attn_1 = AttnBlock(channels, norm_groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, norm_groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def _run_level(level: _Level, h: Tensor) -> Tensor:
    for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[j](h)
    return h


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, z_channels, H/f, W/f), f = 2 ** (len(ch_mult) - 1).

    `attn_resolutions` lists feature-map sizes, counted from `resolution` at the input, where every
    residual block is followed by attention (the reference's convention).
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], in_channels: int, resolution: int, z_channels: int,
                 dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        self.conv_in = _conv3(in_channels, ch)
        in_mult = (1, *ch_mult)
        curr_res = resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = _Level()
            block_in, block_out = ch * in_mult[i], ch * mult
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in, norm_groups))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                curr_res //= 2
            self.down.append(level)
        self.mid = _Middle(block_in, dropout, norm_groups)
        self.norm_out = _norm(block_in, norm_groups)
        self.conv_out = _conv3(block_in, z_channels)

    def forward(self, x: Tensor) -> Tensor:  # (B, in_channels, H, W) -> (B, z_channels, H/f, W/f)
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Features (B, z_channels, h, w) -> image (B, out_channels, h*f, w*f); mirror of `Encoder`.

    `up.{i}` is the level with width `ch * ch_mult[i]`; levels run from the last to the first, and each
    has `num_res_blocks + 1` residual blocks, as in the reference.
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], out_channels: int, resolution: int, z_channels: int,
                 dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        n_levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (n_levels - 1)
        self.conv_in = _conv3(z_channels, block_in)
        self.mid = _Middle(block_in, dropout, norm_groups)
        levels: list[_Level] = []
        for i in reversed(range(n_levels)):
            level = _Level()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in, norm_groups))
            if i != 0:
                level.upsample = Upsample(block_in)
                curr_res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, norm_groups)
        self.conv_out = _conv3(block_in, out_channels)

    def features(self, z: Tensor) -> Tensor:  # (B, z_channels, h, w) -> (B, ch * ch_mult[0], h*f, w*f)
        """Everything before the last layer, `conv_out`."""
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return _swish(self.norm_out(h))

    def forward(self, z: Tensor) -> Tensor:  # (B, z_channels, h, w) -> (B, out_channels, h*f, w*f)
        return self.conv_out(self.features(z))


class VQGAN(nn.Module):
    """Encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder.

    The quantizer is built elsewhere (`build_quantizer`) and passed in, so every quantizer kind plugs into
    the same autoencoder; its `embed_dim` sets the width of `quant_conv` / `post_quant_conv`.
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], z_channels: int, in_channels: int, out_channels: int,
                 resolution: int, quantizer: nn.Module, dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        shared = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                      attn_resolutions=tuple(attn_resolutions), resolution=resolution,
                      z_channels=z_channels, dropout=dropout, norm_groups=norm_groups)
        self.encoder = Encoder(in_channels=in_channels, **shared)
        self.decoder = Decoder(out_channels=out_channels, **shared)
        embed_dim = quantizer.embed_dim
        self.quant_conv = _conv1(z_channels, embed_dim)
        self.post_quant_conv = _conv1(embed_dim, z_channels)
        self.quantize = quantizer
        self._factor = 2 ** (len(ch_mult) - 1)

    @property
    def factor(self) -> int:
        """Downsampling factor f: an H x W image becomes an (H/f) x (W/f) grid of codes."""
        return self._factor

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's output conv weight, where the adaptive GAN weight compares gradient norms."""
        return self.decoder.conv_out.weight

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """torch.compile the encoder and the decoder up to its last layer, in place (parameter names
        unchanged). The quantizer (data-dependent restarts, DDP all-reduces) stays eager, and so does
        the last layer: the adaptive GAN weight differentiates through it alone."""
        self.encoder.compile(*args, **kwargs)
        self.decoder.features = torch.compile(self.decoder.features, *args, **kwargs)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Image (B, C, H, W) -> (quantized (B, D, h, w), indices (B, h, w), codebook loss, stats)."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quantized: Tensor) -> Tensor:  # (B, D, h, w) -> (B, C, H, W)
        return self.decoder(self.post_quant_conv(quantized))

    def decode_indices(self, indices: Tensor) -> Tensor:  # (B, h, w) long -> (B, C, H, W)
        return self.decode(self.quantize.indices_to_quantized(indices))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Image (B, C, H, W) -> (reconstruction (B, C, H, W), codebook loss, indices (B, h, w), stats)."""
        quantized, indices, loss, stats = self.encode(x)
        return self.decode(quantized), loss, indices, stats
