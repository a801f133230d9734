"""Recurrent convolutional network (RCNN) for unsupervised segmentation with the ACWE loss.

The network of Chen & Frey: three recurrent convolutional blocks of 16 channels, a 1x1 convolution to one output
channel and a final PReLU. The output is real-valued; the foreground is ``output > 0`` (the ACWE loss clips the
output to ``[0, 1]`` itself).

Each block unrolls a recurrent convolutional layer (RCL, Liang & Hu) over ``T`` time steps: a feed-forward
convolution ``s = w_f * x`` is computed once and added to a recurrent convolution of the previous state at
every step.

References:
    J. Chen and E. C. Frey, "Medical Image Segmentation via Unsupervised Convolutional Neural Network",
    Medical Imaging with Deep Learning (MIDL) 2020, arXiv:2001.10155.

    M. Liang and X. Hu, "Recurrent Convolutional Neural Network for Object Recognition", CVPR 2015,
    DOI: 10.1109/CVPR.2015.7298958.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Norm

__all__ = ["RCNN", "RecurrentConvBlock", "RecurrentStep"]

logger = logging.getLogger(__name__)


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}.")


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """Convolution with a bias and ``"same"`` padding (output spatial size = input spatial size)."""
    return Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=kernel_size, padding="same", bias=True)


def _batch_norm(spatial_dims: int, channels: int, momentum: float, eps: float) -> nn.Module:
    return Norm[Norm.BATCH, spatial_dims](channels, eps=eps, momentum=momentum)


class RecurrentStep(nn.Module):
    """One time step ``t >= 1`` of a recurrent convolutional block: ``h_t = PReLU(BN(s + conv(h_{t-1})))``.

    Args:
        conv: the recurrent convolution ``w_r`` (``C -> C`` channels, "same" padding). Passing the same module to
            several steps shares its weights across time.
        norm: batch normalisation of this step.
        act: activation of this step.
    """

    def __init__(self, conv: nn.Module, norm: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm
        self.act = act

    def forward(self, feedforward: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """
        Args:
            feedforward: the block's feed-forward term ``s`` of shape ``(B, C, spatial...)``.
            state: the previous state ``h_{t-1}``, same shape.

        Returns:
            the new state ``h_t``, same shape.
        """
        return self.act(self.norm(feedforward + self.conv(state)))


class RecurrentConvBlock(nn.Module):
    """Recurrent convolutional block (unrolled RCL) with batch norm and PReLU, for 1D/2D/3D inputs.

    With ``T = steps``, every convolution having "same" padding and a bias:

    .. code-block:: text

        s   = Conv_f(x)                                  # feed-forward, in -> f, glorot/xavier-uniform init
        h_0 = PReLU_0(BN_0(s))
        h_t = PReLU_t(BN_t(s + Conv_t(h_{t-1})))         # t = 1..T, recurrent f -> f, he/kaiming-normal init
        output h_T

    The raw (un-normalised) ``s`` is added at every step, and the block is ``T + 1`` convolutions deep.

    Weight sharing across time:
        - ``share_recurrent=False`` (default, as the authors' code): ``Conv_1 .. Conv_T`` are separate
          convolutions; ``Conv_2 .. Conv_T`` start from a copy of the initial weights and bias of ``Conv_1`` and
          are then trained independently.
        - ``share_recurrent=True`` (Liang & Hu's RCL, ``w_r`` shared across time): one convolution is used at
          every step.

    In both modes every step has its own batch norm and its own PReLU (the authors' code creates a new
    ``BatchNormalization`` and ``PReLU`` layer at every step; Liang & Hu normalise every step with a
    parameter-free local response normalisation, which the authors replaced by batch norm).

    Deviation from the authors' code: their PReLU has one slope per element (``H x W x C``, which ties the
    network to one image size); here it has one slope per channel, initialised to 0 as theirs (so every PReLU
    acts as a ReLU at the start of training).

    The biases of the convolutions only shift the input of a batch norm, so in training mode they receive (close
    to) zero gradient; they are kept to match the authors' code and its parameter count.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3). Defaults to 2.
        in_channels: number of input channels. Defaults to 1.
        out_channels: number of feature channels ``f`` of the block. Defaults to 16.
        steps: number of recurrent time steps ``T`` (0 gives a plain Conv-BN-PReLU). Defaults to 3.
        share_recurrent: use one recurrent convolution for all steps. Defaults to False.
        kernel_size: kernel size of the feed-forward and recurrent convolutions. Defaults to 3.
        bn_momentum: PyTorch batch-norm momentum. Defaults to 0.01 (Keras' default ``momentum=0.99``).
        bn_eps: batch-norm epsilon. Defaults to 1e-3 (Keras' default).

    Raises:
        ValueError: for an unsupported ``spatial_dims``, non-positive channel counts or ``kernel_size``, or
            negative ``steps``.

    Example::

        >>> block = RecurrentConvBlock(spatial_dims=2, in_channels=1, out_channels=16)
        >>> block(torch.zeros(2, 1, 31, 33)).shape
        torch.Size([2, 16, 31, 33])
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 16, steps: int = 3,
                 share_recurrent: bool = False, kernel_size: int = 3, bn_momentum: float = 0.01,
                 bn_eps: float = 1e-3) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("kernel_size", kernel_size)
        if steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps}.")
        self.spatial_dims = spatial_dims
        self.steps = steps
        self.share_recurrent = share_recurrent

        self.feedforward = _conv(spatial_dims, in_channels, out_channels, kernel_size)
        self.norm = _batch_norm(spatial_dims, out_channels, bn_momentum, bn_eps)
        self.act = nn.PReLU(num_parameters=out_channels, init=0.0)

        recurrent: list[nn.Module] = []
        for t in range(steps):
            if t == 0 or not share_recurrent:
                recurrent.append(_conv(spatial_dims, out_channels, out_channels, kernel_size))
            else:
                recurrent.append(recurrent[0])
        self.recurrent = nn.ModuleList(
            [
                RecurrentStep(
                    conv,
                    _batch_norm(spatial_dims, out_channels, bn_momentum, bn_eps),
                    nn.PReLU(num_parameters=out_channels, init=0.0),
                )
                for conv in recurrent
            ]
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the convolutions as the authors' code (Keras initialisers) and reset norms and PReLUs.

        Feed-forward convolution: ``xavier_uniform_`` (Keras ``glorot_uniform``); recurrent convolutions:
        ``kaiming_normal_`` (fan-in, gain ``sqrt(2)``; Keras ``he_normal`` draws from a truncated normal of the
        same scale), with unshared convolutions 2..T set to copies of the first; biases 0; batch norm weight 1,
        bias 0, fresh running statistics; PReLU slopes 0.
        """
        nn.init.xavier_uniform_(self.feedforward.weight)
        nn.init.zeros_(self.feedforward.bias)
        self.norm.reset_parameters()
        nn.init.zeros_(self.act.weight)
        if self.steps == 0:
            return
        first = self.recurrent[0].conv
        nn.init.kaiming_normal_(first.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(first.bias)
        with torch.no_grad():
            for step in self.recurrent:
                if step.conv is not first:
                    step.conv.weight.copy_(first.weight)
                    step.conv.bias.copy_(first.bias)
                step.norm.reset_parameters()
                nn.init.zeros_(step.act.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input of shape ``(B, in_channels, spatial...)``.

        Returns:
            the last state ``h_T`` of shape ``(B, out_channels, spatial...)``.
        """
        s = self.feedforward(x)
        h = self.act(self.norm(s))
        for step in self.recurrent:
            h = step(s, h)
        return h

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, steps={self.steps}, share_recurrent={self.share_recurrent}"


class RCNN(nn.Module):
    """Recurrent convolutional network of Chen & Frey (2020) for the ACWE loss, for 1D/2D/3D inputs.

    With ``f = features`` and :class:`RecurrentConvBlock` as ``RCB``:

    .. code-block:: text

        RCB(in -> f) -> RCB(f -> f) -> RCB(f -> f)       # num_blocks = 3, each with T = steps recurrent steps
        -> Conv1x1(f -> out, bias, glorot/xavier-uniform init) -> PReLU(per channel, slope init 0)

    The output is real-valued; the foreground is ``output > 0``. With its slope initialised to 0 the final PReLU
    acts as a ReLU at the start of training, so the initial output is non-negative; the slope is learnt and can
    make the output negative. The ACWE loss clips the output to ``[0, 1]`` (do not apply a sigmoid).
    Padding is "same", so any spatial size (odd or even) is accepted and preserved.

    Default parameter count (2D, ``in_channels=1``, ``out_channels=1``, ``features=16``, 3 blocks, 3 steps,
    unshared): 26,274; with ``share_recurrent=True``: 12,354.

    Deviations from the authors' code (``recurrentNet``):
        - every PReLU has one slope per channel instead of one per element (``H x W x C``), which would tie the
          network to one image size; slopes start at 0 as theirs.
        - the ``UnitNorm(axis=0)`` constraint on the 1x1 output kernel is omitted: for a kernel of shape
          ``(1, 1, f, 1)`` it normalises over an axis of size 1 and so projects every weight to ``+-1`` after each
          optimiser step, which is unlikely to be intended (their fine-tuning network has no constraint).
        - ``share_recurrent=True`` gives Liang & Hu's weight sharing across time; the default (False) follows the
          code: separate recurrent convolutions starting from a copy of the first one's initial weights.
        - the 3D (and 1D) variants are extensions; the paper's network is 2D.

    To freeze the first block for fine-tuning as in the authors' ``fine_tune.py``, call
    ``net.blocks[0].requires_grad_(False)``.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3). Defaults to 2.
        in_channels: number of input channels. Defaults to 1.
        out_channels: number of output channels. Defaults to 1.
        features: number of channels ``f`` of every recurrent block. Defaults to 16 (the authors').
        num_blocks: number of recurrent blocks. Defaults to 3 (the authors').
        steps: recurrent time steps ``T`` per block. Defaults to 3 (the authors').
        share_recurrent: share the recurrent convolution across time steps (Liang & Hu). Defaults to False.
        bn_momentum: PyTorch batch-norm momentum. Defaults to 0.01 (Keras' default ``momentum=0.99``).
        bn_eps: batch-norm epsilon. Defaults to 1e-3 (Keras' default).
        kernel_size: kernel size of the convolutions inside the blocks. Defaults to 3.

    Raises:
        ValueError: for an unsupported ``spatial_dims``, non-positive channel counts, ``features``,
            ``num_blocks`` or ``kernel_size``, or negative ``steps``.

    Example::

        >>> net = RCNN(spatial_dims=2, in_channels=1, out_channels=1)
        >>> net(torch.zeros(2, 1, 192, 192)).shape
        torch.Size([2, 1, 192, 192])
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, features: int = 16,
                 num_blocks: int = 3, steps: int = 3, share_recurrent: bool = False, bn_momentum: float = 0.01,
                 bn_eps: float = 1e-3, kernel_size: int = 3) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("features", features)
        _check_positive("num_blocks", num_blocks)
        self.spatial_dims = spatial_dims
        self.blocks = nn.Sequential(
            *[
                RecurrentConvBlock(
                    spatial_dims,
                    in_channels if k == 0 else features,
                    features,
                    steps=steps,
                    share_recurrent=share_recurrent,
                    kernel_size=kernel_size,
                    bn_momentum=bn_momentum,
                    bn_eps=bn_eps,
                )
                for k in range(num_blocks)
            ]
        )
        self.head = _conv(spatial_dims, features, out_channels, kernel_size=1)
        self.act = nn.PReLU(num_parameters=out_channels, init=0.0)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        logger.debug(
            "RCNN(spatial_dims=%d, features=%d, num_blocks=%d, steps=%d, share_recurrent=%s): %d parameters",
            spatial_dims,
            features,
            num_blocks,
            steps,
            share_recurrent,
            sum(p.numel() for p in self.parameters()),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input of shape ``(B, in_channels, d_0[, d_1, d_2])``, any spatial sizes.

        Returns:
            real-valued output of shape ``(B, out_channels, d_0[, d_1, d_2])``; foreground is ``output > 0``.

        Raises:
            ValueError: when the rank does not match ``spatial_dims``.
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}D input (B, C, spatial...), got shape {list(x.shape)}."
            )
        return self.act(self.head(self.blocks(x)))
