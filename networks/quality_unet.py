"""U-Net that refines a segmentation mask and predicts the mask's quality (Dice).

The refinement network of Rebelo, Fernandes & Cardoso: an encoder-decoder U-Net whose input is the image with the
current mask as one extra channel, with two outputs: a refined mask (logits) and, from the bottleneck, the predicted
quality of the *input* mask (its Dice against the unknown ground truth). Fed its own output as the next mask it can
be applied repeatedly (``pipeline.refine``).

Reference:
    J. Rebelo, K. Fernandes and J. S. Cardoso, "Quality-based Regularization for Iterative Deep Image
    Segmentation" (Table I: 4 convolution levels, 2 consecutive 3x3 convolutions per level, 32 filters, ReLU;
    quality output from the latent representation: global average pooling followed by two dense layers).
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool

__all__ = ["QualityOutput", "QualityUNet"]

logger = logging.getLogger(__name__)


class QualityOutput(NamedTuple):
    """What :class:`QualityUNet` returns.

    Attributes:
        logits: refined mask logits ``(B, out_channels, spatial...)``; foreground where ``sigmoid(logits) > 0.5``.
        quality: predicted quality (Dice) of the input mask, ``(B, 1)`` in ``[0, 1]``.
    """

    logits: torch.Tensor
    quality: torch.Tensor


class _DoubleConv(nn.Sequential):
    """``convs`` consecutive 3x3(x3) convolutions, each followed by normalisation (optional) and the activation."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, convs: int, act: str | tuple,
                 norm: str | tuple | None, dropout: float) -> None:
        super().__init__()
        for i in range(convs):
            self.add_module(
                f"conv{i}",
                Convolution(spatial_dims, in_channels if i == 0 else out_channels, out_channels, kernel_size=3,
                            act=act, norm=norm, dropout=dropout if i == convs - 1 else None, bias=norm is None),
            )


class _UpStage(nn.Module):
    """2x transposed convolution, concatenation with the skip connection, then the level's convolutions."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, convs: int, act: str | tuple,
                 norm: str | tuple | None, dropout: float) -> None:
        super().__init__()
        self.up = Conv["convtrans", spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)
        self.convs = _DoubleConv(spatial_dims, 2 * out_channels, out_channels, convs, act, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([skip, self.up(x)], dim=1))


class QualityUNet(nn.Module):
    """U-Net with an extra mask input channel and a quality head on the bottleneck.

    Encoder level ``i`` (``i = 0 .. levels - 1``) holds ``features * 2**i`` channels; levels are joined by 2x max
    pooling, the last level is the bottleneck. The decoder goes back up with 2x transposed convolutions and skip
    connections to a 1x1 convolution giving ``out_channels`` mask logits. The quality head reads the bottleneck:
    global average pooling → ``Linear(features * 2**(levels-1), quality_hidden)`` → ReLU → ``Linear(quality_hidden,
    1)`` → sigmoid, so the quality lies in ``[0, 1]`` and does not depend on the input size. Spatial sizes must be
    multiples of ``2**(levels - 1)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (the mask is one more input channel, ``mask_channels``).
        out_channels: refined-mask channels (1 for a binary mask).
        mask_channels: channels of the input mask.
        features: filters of the first level (doubled per level; the paper's 32).
        levels: convolution levels including the bottleneck (the paper's 4).
        convs_per_level: consecutive convolutions per level (the paper's 2).
        quality_hidden: width of the hidden dense layer of the quality head.
        act: activation of the convolutions (MONAI name or ``(name, args)``).
        norm: normalisation after each convolution (``"batch"``, ``"instance"`` or None; the paper names none).
        dropout: dropout after the last convolution of each level.
        output_bias: initial bias of the mask logits (e.g. -4: the untrained network predicts background with
            probability 0.98 instead of 0.5, which speeds up training with a Dice loss on small structures).

    Example::

        net = QualityUNet(spatial_dims=2, in_channels=3, features=16)
        logits, quality = net(torch.rand(2, 3, 64, 64), torch.zeros(2, 1, 64, 64))  # (2, 1, 64, 64), (2, 1)
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 1, mask_channels: int = 1,
                 features: int = 32, levels: int = 4, convs_per_level: int = 2, quality_hidden: int = 32,
                 act: str | tuple = "relu", norm: str | tuple | None = "batch", dropout: float = 0.0,
                 output_bias: float = 0.0) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("mask_channels", mask_channels), ("features", features), ("levels", levels),
                            ("convs_per_level", convs_per_level), ("quality_hidden", quality_hidden)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if levels < 2:
            raise ValueError(f"levels must be >= 2 (at least one pooling), got {levels}")
        self.spatial_dims, self.levels = spatial_dims, levels
        self.in_channels, self.mask_channels = in_channels, mask_channels
        self.divisor = 2 ** (levels - 1)
        widths = [features * 2**i for i in range(levels)]
        self.encoders = nn.ModuleList(
            _DoubleConv(spatial_dims, (in_channels + mask_channels) if i == 0 else widths[i - 1], widths[i],
                        convs_per_level, act, norm, dropout)
            for i in range(levels)
        )
        self.pool = Pool["max", spatial_dims](kernel_size=2)
        self.decoders = nn.ModuleList(  # deepest first
            _UpStage(spatial_dims, widths[i + 1], widths[i], convs_per_level, act, norm, dropout)
            for i in range(levels - 2, -1, -1)
        )
        self.head = Conv["conv", spatial_dims](widths[0], out_channels, kernel_size=1)
        nn.init.constant_(self.head.bias, float(output_bias))
        self.quality_head = nn.Sequential(
            nn.Linear(widths[-1], quality_hidden), nn.ReLU(inplace=True), nn.Linear(quality_hidden, 1), nn.Sigmoid()
        )

    def forward(self, image: torch.Tensor, mask: Optional[torch.Tensor] = None) -> QualityOutput:
        """Refined mask logits and predicted quality of ``mask``.

        Args:
            image: ``(B, in_channels, spatial...)``; or, with ``mask`` None, image and mask already concatenated
                (``in_channels + mask_channels`` channels, mask last).
            mask: ``(B, mask_channels, spatial...)`` the current (binary or soft) mask.

        Returns:
            :class:`QualityOutput` ``(logits, quality)``.
        """
        x = image if mask is None else torch.cat([image, mask.to(image.dtype)], dim=1)
        expected = self.in_channels + self.mask_channels
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != expected:
            raise ValueError(f"QualityUNet expects image + mask = {expected} channels of {self.spatial_dims}D data "
                             f"(B, C, spatial...), got shape {list(x.shape)}")
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(f"QualityUNet with {self.levels} levels needs spatial sizes divisible by "
                                 f"{self.divisor}, got shape {list(x.shape)}")
        skips: list[torch.Tensor] = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x)
            if i < self.levels - 1:
                skips.append(x)
                x = self.pool(x)
        pooled = torch.mean(x.flatten(2), dim=2)
        quality = self.quality_head(pooled)
        for j, decoder in enumerate(self.decoders):
            x = decoder(x, skips[len(skips) - 1 - j])
        return QualityOutput(self.head(x), quality)
