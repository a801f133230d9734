"""U-Net with lossless polyphase (space-to-depth) pooling.

The network of Kim & Ye's Mumford-Shah loss paper: a five-level U-Net whose max-pooling and transposed
convolutions are replaced by a lossless polyphase decomposition and its exact inverse, so that no
information is discarded on the way down and no interpolation is learnt on the way up.

Reference:
    B. Kim and J. C. Ye, "Mumford-Shah Loss Functional for Image Segmentation With Deep Learning",
    IEEE Transactions on Image Processing 29, 1856-1866 (2020), DOI: 10.1109/TIP.2019.2941265.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from monai.utils import look_up_option

__all__ = ["PolyphasePool", "PolyphaseUnpool", "PolyphaseUNet", "polyphase_pool", "polyphase_unpool"]

logger = logging.getLogger(__name__)

SUPPORTED_INITS = ("xavier", "default")


def _phase_permutations(spatial_dims: int) -> tuple[list[int], list[int]]:
    """Axis permutations between ``(B, C, d_0, 2, d_1, 2, ...)`` and ``(B, 2, 2, ..., C, d_0, d_1, ...)``.

    Args:
        spatial_dims: number of spatial dimensions.

    Returns:
        ``(forward, inverse)``: ``forward`` moves the phase axes in front of the channel axis (phase-major order),
        ``inverse`` undoes it.
    """
    forward = [0] + [3 + 2 * i for i in range(spatial_dims)] + [1] + [2 + 2 * i for i in range(spatial_dims)]
    inverse = [0] * len(forward)
    for position, axis in enumerate(forward):
        inverse[axis] = position
    return forward, inverse


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")


def polyphase_pool(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Lossless factor-2 space-to-depth in phase-major channel order.

    For ``spatial_dims=2`` and an input ``(B, C, H, W)`` the output is ``(B, 4C, H/2, W/2)`` equal to
    ``torch.cat([x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]], dim=1)``: each phase
    is a contiguous block of ``C`` channels. In 3D the eight phases ``(p_d, p_h, p_w)`` follow the same
    lexicographic order (``(0,0,0), (0,0,1), (0,1,0), ..., (1,1,1)``), giving ``8C`` channels. This equals
    ``torch.nn.functional.pixel_unshuffle`` up to a channel permutation (that one is channel-major).

    Args:
        x: tensor of shape ``(B, C, d_0[, d_1, d_2])`` with ``spatial_dims`` even spatial sizes.
        spatial_dims: number of spatial dimensions.

    Returns:
        tensor of shape ``(B, 2**spatial_dims * C, d_0 / 2[, d_1 / 2, d_2 / 2])``.

    Raises:
        ValueError: when the tensor rank does not match ``spatial_dims`` or a spatial size is odd.
    """
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"expected a {spatial_dims + 2}D tensor (B, C, spatial...), got shape {list(x.shape)}.")
    forward, _ = _phase_permutations(spatial_dims)
    split = [x.shape[0], x.shape[1]]
    pooled = [x.shape[0], x.shape[1] << spatial_dims]  # 2**spatial_dims as an int for TorchScript
    for size in x.shape[2:]:
        if size % 2 != 0:
            raise ValueError(f"polyphase pooling needs even spatial sizes, got shape {list(x.shape)}.")
        split += [size // 2, 2]
        pooled.append(size // 2)
    return x.reshape(split).permute(forward).reshape(pooled)


def polyphase_unpool(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Exact inverse of :func:`polyphase_pool` (depth-to-space, phase-major channel order).

    Args:
        x: tensor of shape ``(B, 2**spatial_dims * C, d_0[, d_1, d_2])``.
        spatial_dims: number of spatial dimensions.

    Returns:
        tensor of shape ``(B, C, 2 d_0[, 2 d_1, 2 d_2])``.

    Raises:
        ValueError: when the tensor rank does not match ``spatial_dims`` or the channel count is not a multiple
            of ``2**spatial_dims``.
    """
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"expected a {spatial_dims + 2}D tensor (B, C, spatial...), got shape {list(x.shape)}.")
    factor = 1 << spatial_dims
    if x.shape[1] % factor != 0:
        raise ValueError(f"polyphase unpooling needs a channel count divisible by {factor}, got shape {list(x.shape)}.")
    _, inverse = _phase_permutations(spatial_dims)
    channels = x.shape[1] // factor
    split = [x.shape[0]] + [2] * spatial_dims + [channels] + list(x.shape[2:])
    unpooled = [x.shape[0], channels] + [2 * size for size in x.shape[2:]]
    return x.reshape(split).permute(inverse).reshape(unpooled)


class PolyphasePool(nn.Module):
    """Lossless factor-2 polyphase pooling, ``C -> 2**spatial_dims * C`` channels; see :func:`polyphase_pool`.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).

    Example::

        >>> pool = PolyphasePool(spatial_dims=2)
        >>> pool(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 12, 4, 4])
    """

    def __init__(self, spatial_dims: int = 2) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return polyphase_pool(x, self.spatial_dims)

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}"


class PolyphaseUnpool(nn.Module):
    """Exact inverse of :class:`PolyphasePool`, ``2**spatial_dims * C -> C`` channels; see :func:`polyphase_unpool`.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
    """

    def __init__(self, spatial_dims: int = 2) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return polyphase_unpool(x, self.spatial_dims)

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}"


class PolyphaseUNet(nn.Module):
    """U-Net with lossless polyphase pooling (Kim & Ye 2020), for 1D/2D/3D inputs.

    With ``f = features``, ``r = 2**spatial_dims`` (4 in 2D) and level widths ``w_k = f * 2**(k - 1)``
    (``f, 2f, 4f, 8f, 16f`` for five levels), every ``Conv`` below is a 3x3(x3) convolution with padding 1
    followed by normalisation and activation (``Conv -> Norm -> Act``); ``pool``/``unpool`` are
    :class:`PolyphasePool`/:class:`PolyphaseUnpool`. In 2D with five levels:

    .. code-block:: text

        L1: Conv(in -> f), Conv(f -> f)                                       -> skip s1 (f)
        L2: pool(f -> 4f),   Conv(4f -> 2f),   Conv(2f -> 2f)                 -> skip s2 (2f)
        L3: pool(2f -> 8f),  Conv(8f -> 4f),   Conv(4f -> 4f)                 -> skip s3 (4f)
        L4: pool(4f -> 16f), Conv(16f -> 8f),  Conv(8f -> 8f)                 -> skip s4 (8f)
        L5: pool(8f -> 32f), Conv(32f -> 16f), Conv(16f -> 32f), unpool(32f -> 8f)
        up4: cat(s4, 8f) = 16f -> Conv(16f -> 8f), Conv(8f -> 16f), unpool -> 4f
        up3: cat(s3, 4f) = 8f  -> Conv(8f -> 4f),  Conv(4f -> 8f),  unpool -> 2f
        up2: cat(s2, 2f) = 4f  -> Conv(4f -> 2f),  Conv(2f -> 4f),  unpool -> f
        up1: cat(s1, f)  = 2f  -> Conv(2f -> f),   Conv(f -> f),    Conv1x1(f -> out, bias)

    In general the first convolution after a pool reads ``r * w_{k-1}`` channels and the convolution before an
    unpool writes ``r * w_{k-1}`` channels, so that the unpooled tensor has the width ``w_{k-1}`` of the skip it is
    concatenated with (the skip comes first in the concatenation). In 3D, where pooling multiplies the channels
    by 8, this gives e.g. ``L2: pool(f -> 8f), Conv(8f -> 2f)`` and ``L5: Conv(64f -> 16f), Conv(16f -> 64f),
    unpool(64f -> 8f)``; the 3D variant is an extension, the paper's network is 2D.

    Deviations from the paper:
        - the network returns **logits**; the paper ends with a ``Softmax2d``, which here belongs to the loss or
          the post-processing (e.g. ``softmax=True`` in the loss, ``Activations(softmax=True)`` at inference).
        - the width ``features`` (the paper's ``ngf = 64``) and the number of levels are configurable.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3). Defaults to 2.
        in_channels: number of input channels (e.g. 3 adjacent CT slices). Defaults to 3.
        out_channels: number of output channels (classes). Defaults to 2.
        features: width ``f`` of the first level; level ``k`` has ``f * 2**(k - 1)`` channels. Defaults to 64
            (the paper's value; smaller widths such as 16 are much faster on a CPU).
        num_levels: number of resolution levels including the bottleneck (``num_levels - 1`` pools); the
            input spatial sizes must be divisible by ``2**(num_levels - 1)``. Defaults to 5 (the paper's).
        norm: feature normalisation type and arguments (MONAI ``Norm`` factory). Defaults to ``"batch"``
            (affine batch norm, as in the paper).
        act: activation type and arguments (MONAI ``Act`` factory). Defaults to ``"relu"``.
        bias: whether the 3x3 convolutions have a bias. Defaults to False (they are followed by batch norm).
            The final 1x1 convolution always has a bias.
        init: ``"xavier"`` (the authors' ``--init_type xavier``): convolution weights
            ``xavier_normal_(gain=0.02)``, normalisation weights ``N(1, 0.02)``, all biases 0 (the authors' code
            leaves the bias of the 1x1 output convolution at PyTorch's default); or ``"default"``: PyTorch's
            initialisation. The 3x3 convolutions feed batch norm, which removes their scale, but the 1x1 output
            convolution starts about 20 times smaller than with PyTorch's default, so with ``"xavier"`` the
            logits grow slowly at the start of training (more steps or a larger learning rate are needed).
            Defaults to ``"xavier"``.

    Raises:
        ValueError: for an unsupported ``spatial_dims``, ``num_levels < 2``, ``features < 1`` or an unknown
            ``init``.

    Example::

        >>> net = PolyphaseUNet(spatial_dims=2, in_channels=3, out_channels=2, features=16)
        >>> net(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 2, 64, 64])
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 2, features: int = 64,
                 num_levels: int = 5, norm: str | tuple = "batch", act: str | tuple = "relu", bias: bool = False,
                 init: str = "xavier") -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        if num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {num_levels}.")
        if features < 1:
            raise ValueError(f"features must be a positive integer, got {features}.")
        init = look_up_option(init, SUPPORTED_INITS)
        self.spatial_dims = spatial_dims
        self.divisor = 2 ** (num_levels - 1)
        r = 2**spatial_dims
        widths = [features * 2**k for k in range(num_levels)]

        def conv(cin: int, cout: int) -> Convolution:
            return Convolution(spatial_dims, cin, cout, kernel_size=3, padding=1, act=act, norm=norm, bias=bias)

        encoder = [nn.Sequential(conv(in_channels, widths[0]), conv(widths[0], widths[0]))]
        for k in range(1, num_levels - 1):
            pool = PolyphasePool(spatial_dims)
            encoder.append(nn.Sequential(pool, conv(r * widths[k - 1], widths[k]), conv(widths[k], widths[k])))
        self.encoder = nn.ModuleList(encoder)

        last = num_levels - 1
        self.bottleneck = nn.Sequential(
            PolyphasePool(spatial_dims),
            conv(r * widths[last - 1], widths[last]),
            conv(widths[last], r * widths[last - 1]),
            PolyphaseUnpool(spatial_dims),
        )

        decoder = []  # deepest first, the order in which they run
        for k in range(num_levels - 2, 0, -1):
            unpool = PolyphaseUnpool(spatial_dims)
            decoder.append(nn.Sequential(conv(2 * widths[k], widths[k]), conv(widths[k], r * widths[k - 1]), unpool))
        decoder.append(nn.Sequential(conv(2 * widths[0], widths[0]), conv(widths[0], widths[0])))
        self.decoder = nn.ModuleList(decoder)

        self.head = Conv["conv", spatial_dims](widths[0], out_channels, kernel_size=1, bias=True)

        if init == "xavier":
            self.apply(_xavier_init)
        logger.debug(
            "PolyphaseUNet(spatial_dims=%d, features=%d, num_levels=%d): %d parameters",
            spatial_dims,
            features,
            num_levels,
            sum(p.numel() for p in self.parameters()),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input of shape ``(B, in_channels, d_0[, d_1, d_2])``; every spatial size must be divisible by
                ``2**(num_levels - 1)`` (16 for five levels).

        Returns:
            logits of shape ``(B, out_channels, d_0[, d_1, d_2])`` (no softmax).

        Raises:
            ValueError: when the rank does not match ``spatial_dims`` or a spatial size is not divisible.
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}D input (B, C, spatial...), got shape {list(x.shape)}."
            )
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(f"spatial sizes must be divisible by {self.divisor}, got input shape {list(x.shape)}.")
        skips: list[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.bottleneck(x)
        for block in self.decoder:
            x = block(torch.cat([skips.pop(), x], dim=1))
        return self.head(x)


def _xavier_init(module: nn.Module) -> None:
    """Reference initialisation: conv ``xavier_normal_(gain=0.02)``, norm weight ``N(1, 0.02)``, biases 0."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.xavier_normal_(module.weight, gain=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
