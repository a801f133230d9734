"""Networks of the DIP-assisted selective segmentation of Burrows, Chen & Torella (2021).

Two U-Nets with a sigmoid output are trained together: the VM-Net ``psi(f, G)`` reads the image ``f`` and the
guidance ``G`` (marker polygon mask ``M`` or geodesic distance ``D_G``), the DIP-Net ``phi(z)`` reads a fixed noise
tensor ``z`` drawn once per training image. During training the segmentation is their Hadamard product
``u = u_VM * u_DIP``; at test time only the VM-Net is used.

The DIP-Net architecture is the segmentation branch (``vxm_UNet1``) of the same authors' DIP code; no architecture
of the VM-Net was published, so :class:`VMNet` reuses the same blocks with two input channels.

References:
    L. Burrows, K. Chen and F. Torella, "Using Deep Image Prior to Assist Variational Selective Segmentation Deep
    Learning Algorithms", 2021 (eq. 2, Figs. 1-2, Section 4).

    L. Burrows, K. Chen and F. Torella, "On new convolutional neural network based algorithms for selective
    segmentation of images", Medical Image Understanding and Analysis (MIUA) 2020, pp. 93-104 (the VM-Net).

    D. Ulyanov, A. Vedaldi and V. Lempitsky, "Deep Image Prior", CVPR 2018, pp. 9446-9454.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Norm, Pool

__all__ = ["DIPNet", "SelectivePair", "SelectiveUNet", "VMNet"]

logger = logging.getLogger(__name__)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _feature_widths(features: int | Sequence[int], levels: int) -> tuple[int, ...]:
    """``levels + 1`` widths (down levels, then bottleneck) from one width or a sequence of them."""
    if isinstance(features, int) and not isinstance(features, bool):
        _check_positive("features", features)
        return (features,) * (levels + 1)
    widths = tuple(features)
    if len(widths) != levels + 1:
        raise ValueError(
            f"features must be one width or a sequence of levels + 1 = {levels + 1} widths (down levels, then the "
            f"bottleneck), got {list(widths)}."
        )
    for width in widths:
        _check_positive("every width in features", width)
    return widths


class _ConvBlock(nn.Sequential):
    """``[Conv3x3 -> PReLU -> BatchNorm] x 2`` with "same" padding, as the authors' Keras blocks."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, bn_momentum: float, bn_eps: float
    ) -> None:
        layers: list[nn.Module] = []
        for cin in (in_channels, out_channels):
            layers += [
                Conv[Conv.CONV, spatial_dims](cin, out_channels, kernel_size=3, padding=1, bias=True),
                nn.PReLU(num_parameters=out_channels, init=0.0),
                Norm[Norm.BATCH, spatial_dims](out_channels, momentum=bn_momentum, eps=bn_eps),
            ]
        super().__init__(*layers)


class SelectiveUNet(nn.Module):
    """The DIP U-Net of Burrows et al. (``nets.vxm_UNet1``, segmentation branch), for 1D/2D/3D inputs.

    With ``w_0 .. w_L`` the widths (``L = levels``; ``w_L`` is the bottleneck) and ``Block(c)`` =
    ``[Conv3x3(c) -> PReLU -> BatchNorm] x 2`` (batch norm *after* the activation, as in the code):

    .. code-block:: text

        down k = 0..L-1:  s_k = Block(w_k)(h);  h = MaxPool2(s_k)
        bottleneck:       h = Block(w_L)(h)
        up k = L-1..0:    h = Block(w_k)(cat[Upsample2_nearest(h), s_k])
        head:             u = sigmoid(Conv1x1(out_channels)(h))

    ``features=128`` (one int) gives the authors' width 128 at every level; their commented alternatives are
    ``[16, 32, 64, 128, 256]`` and ``[32, 64, 128, 256, 512]``, which a sequence of ``levels + 1`` widths reproduces.

    Initialisation as Keras': convolutions glorot-uniform (``xavier_uniform_``) with zero bias, batch norm
    ``momentum=0.99`` (PyTorch ``momentum=0.01``) and ``eps=1e-3``, PReLU slopes 0.

    Deviation from the authors' code: Keras' ``PReLU()`` learns one slope per element (``H x W x C``), which ties
    the network to one image size; here every PReLU has one slope per channel, initialised to 0 as theirs (so it
    acts as a ReLU at the start of training). The 1D and 3D variants are extensions; the paper's network is 2D.

    Parameter counts (2D, ``in_channels=2``, ``out_channels=1``, ``levels=4``): 3,108,225 for ``features=128``;
    196,449 for ``features=32``.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3). Defaults to 2.
        in_channels: number of input channels. Defaults to 2.
        out_channels: number of output channels (each a sigmoid probability). Defaults to 1.
        features: one width for every level (the authors' 128, the default) or a sequence of ``levels + 1`` widths
            (the down levels from the top, then the bottleneck; the up blocks mirror the down ones).
        levels: number of pooling levels; every input spatial size must be divisible by ``2**levels``. Defaults
            to 4 (the authors').
        bn_momentum: PyTorch batch-norm momentum. Defaults to 0.01 (Keras' ``momentum=0.99``).
        bn_eps: batch-norm epsilon. Defaults to 1e-3 (Keras' default).

    Raises:
        ValueError: for an unsupported ``spatial_dims``, non-positive channel counts, widths or ``levels``, or a
            ``features`` sequence of the wrong length.

    Example::

        >>> net = SelectiveUNet(spatial_dims=2, in_channels=2, features=32)
        >>> net(torch.zeros(2, 2, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, out_channels: int = 1,
                 features: int | Sequence[int] = 128, levels: int = 4, bn_momentum: float = 0.01,
                 bn_eps: float = 1e-3) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("levels", levels)
        widths = _feature_widths(features, levels)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = levels
        self.widths = widths
        self.divisor = 2**levels

        def block(cin: int, cout: int) -> _ConvBlock:
            return _ConvBlock(spatial_dims, cin, cout, bn_momentum, bn_eps)

        self.down_blocks = nn.ModuleList(
            [block(in_channels if k == 0 else widths[k - 1], widths[k]) for k in range(levels)]
        )
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.bottleneck = block(widths[levels - 1], widths[levels])
        # deepest first, the order in which they run; block k reads the upsampled h and the skip s_k
        self.up_blocks = nn.ModuleList(
            [block(widths[k + 1] + widths[k], widths[k]) for k in range(levels - 1, -1, -1)]
        )
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = Conv[Conv.CONV, spatial_dims](widths[0], out_channels, kernel_size=1, bias=True)
        self.reset_parameters()
        logger.debug(
            "%s(spatial_dims=%d, in_channels=%d, widths=%s): %d parameters",
            type(self).__name__,
            spatial_dims,
            in_channels,
            list(widths),
            sum(p.numel() for p in self.parameters()),
        )

    def reset_parameters(self) -> None:
        """Keras initialisation: glorot-uniform convolutions with zero bias, fresh batch norms, PReLU slopes 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()
            elif isinstance(module, nn.PReLU):
                nn.init.zeros_(module.weight)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` unless ``x`` is ``(B, in_channels, spatial...)``, sizes divisible by ``2**levels``."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}D input (B, C, spatial...), got shape {list(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got shape {list(x.shape)}.")
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(
                    f"every spatial size must be divisible by 2**levels = {self.divisor}, got size {size} in input "
                    f"shape {list(x.shape)}."
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input of shape ``(B, in_channels, d_0[, d_1, d_2])``, every ``d_i`` divisible by ``2**levels``.

        Returns:
            probabilities in ``[0, 1]`` of shape ``(B, out_channels, d_0[, d_1, d_2])``.

        Raises:
            ValueError: wrong rank or channel count, or a spatial size not divisible by ``2**levels``.
        """
        self.check_input(x)
        skips: list[torch.Tensor] = []
        h = x
        for block in self.down_blocks:
            h = block(h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottleneck(h)
        for block in self.up_blocks:
            h = block(torch.cat([self.upsample(h), skips.pop()], dim=1))
        return torch.sigmoid(self.head(h))

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, levels={self.levels}, widths={list(self.widths)}"


class VMNet(SelectiveUNet):
    """VM-Net ``psi(f, G)``: a :class:`SelectiveUNet` reading the image and the guidance as two channels.

    Channel 0 of the input is the image ``f`` (in ``[0, 1]``), channel 1 the guidance ``G``: the marker polygon
    mask ``M`` (methods M1-M3) or the normalised geodesic distance ``D_G`` (M4). The output is the segmentation
    probability ``u_VM``; at test time it is the whole prediction.

    The architecture of the VM-Net (Burrows, Chen & Torella, MIUA 2020) is not published and no code is
    available; this reuses the DIP U-Net blocks of :class:`SelectiveUNet` with ``in_channels=2`` and configurable
    widths (METHODS A-DIP-5). Arguments, defaults and errors are those of :class:`SelectiveUNet`.

    Example::

        >>> net = VMNet(features=32)
        >>> image_and_guidance = torch.zeros(2, 2, 128, 128)
        >>> net(image_and_guidance).shape
        torch.Size([2, 1, 128, 128])
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, out_channels: int = 1,
                 features: int | Sequence[int] = 128, levels: int = 4, bn_momentum: float = 0.01,
                 bn_eps: float = 1e-3) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, features, levels, bn_momentum, bn_eps)


class DIPNet(nn.Module):
    """DIP-Net ``phi(z)``: a :class:`SelectiveUNet` fed with one fixed noise tensor per training image.

    The noise ``z^(j)`` of every training image ``j`` is drawn once, ``z ~ U(0, noise_max)`` with
    ``noise_channels`` channels (the paper's ``U(0, 1/10)``, 32 channels), from a ``torch.Generator`` seeded with
    ``seed``; it is the registered buffer ``noise`` of shape ``(num_images, noise_channels, *spatial_size)``, so it
    is saved in and restored from the ``state_dict``. The network is asked for images by their index ``j``.

    Input perturbation: when ``perturb`` is on (by default in training mode) the input is
    ``z^(j) + z_hat`` with ``z_hat ~ N(0, perturb_std^2)`` drawn afresh (from the global RNG) at every call; the
    paper's ``N(0, 1/100)`` is read as a standard deviation of 0.01, as in the authors' code (METHODS A-DIP-4). The
    trainer takes one optimiser step per epoch with all ``N`` training images in one batch, so a fresh perturbation
    per call is a fresh perturbation per epoch, as in the paper. In evaluation mode the fixed noise is used.

    Parameter counts (2D, 32 noise channels, ``levels=4``): 3,142,785 for ``features=128``; 205,089 for
    ``features=32``. The noise buffer is not a parameter.

    Args:
        num_images: number of training images ``N`` (one noise tensor each).
        spatial_size: spatial size of the images, e.g. ``(H, W)`` (2D) or ``(H, W, D)`` (3D); every size must be
            divisible by ``2**levels``.
        noise_channels: channels of the noise input. Defaults to 32 (paper).
        noise_max: upper bound of the uniform noise. Defaults to 0.1 (paper).
        perturb_std: standard deviation of the per-call perturbation. Defaults to 0.01 (authors' code).
        features: widths of the U-Net, see :class:`SelectiveUNet`. Defaults to 128.
        levels: pooling levels of the U-Net. Defaults to 4.
        out_channels: output channels. Defaults to 1.
        seed: seed of the generator of the fixed noise; ``None`` draws it from the global RNG. Defaults to 0.

    Raises:
        ValueError: non-positive ``num_images`` or ``noise_channels``, ``spatial_size`` not of length 1-3 or with a
            size not divisible by ``2**levels``, ``noise_max <= 0`` or ``perturb_std < 0``, or an invalid U-Net
            argument.

    Example::

        >>> net = DIPNet(num_images=2, spatial_size=(128, 128), features=32)
        >>> net(torch.tensor([0, 1])).shape
        torch.Size([2, 1, 128, 128])
    """

    def __init__(self, num_images: int, spatial_size: Sequence[int], noise_channels: int = 32, noise_max: float = 0.1,
                 perturb_std: float = 0.01, features: int | Sequence[int] = 128, levels: int = 4,
                 out_channels: int = 1, seed: int | None = 0) -> None:
        super().__init__()
        _check_positive("num_images", num_images)
        _check_positive("noise_channels", noise_channels)
        size = tuple(int(s) for s in spatial_size)
        if len(size) not in (1, 2, 3) or any(s < 1 for s in size):
            raise ValueError(f"spatial_size must hold 1 to 3 positive sizes, got {spatial_size!r}.")
        if not noise_max > 0:
            raise ValueError(f"noise_max must be positive, got {noise_max!r}.")
        if not perturb_std >= 0:
            raise ValueError(f"perturb_std must be non-negative, got {perturb_std!r}.")
        self.unet = SelectiveUNet(len(size), noise_channels, out_channels, features, levels)
        for s in size:
            if s % self.unet.divisor != 0:
                raise ValueError(
                    f"every size in spatial_size must be divisible by 2**levels = {self.unet.divisor}, got size {s} "
                    f"in spatial_size {list(size)}."
                )
        self.num_images = num_images
        self.spatial_size = size
        self.noise_max = float(noise_max)
        self.perturb_std = float(perturb_std)
        self.seed = seed
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        noise = torch.rand((num_images, noise_channels, *size), generator=generator) * self.noise_max
        self.register_buffer("noise", noise)

    def _index_tensor(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Indices as a 1D ``long`` tensor on the noise's device, checked against ``[0, num_images)``."""
        idx = torch.as_tensor(indices, device=self.noise.device)
        if idx.ndim != 1 or idx.numel() == 0 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise ValueError(
                f"indices must be a non-empty 1D sequence of integer image indices, got {indices!r}."
            )
        if bool(((idx < 0) | (idx >= self.num_images)).any()):
            raise IndexError(
                f"image indices must lie in [0, {self.num_images}) (num_images={self.num_images}), got "
                f"{idx.tolist()}."
            )
        return idx.long()

    def network_input(self, indices: torch.Tensor | Sequence[int], perturb: bool | None = None) -> torch.Tensor:
        """The input ``z^(j) [+ z_hat]`` that :meth:`forward` feeds to the U-Net; arguments as in :meth:`forward`."""
        z = self.noise[self._index_tensor(indices)]
        if self.training if perturb is None else perturb:
            z = z + torch.randn_like(z) * self.perturb_std
        return z

    def forward(self, indices: torch.Tensor | Sequence[int], perturb: bool | None = None) -> torch.Tensor:
        """
        Args:
            indices: indices ``j`` of the training images, a 1D integer tensor or sequence of length ``B``.
            perturb: add a fresh ``N(0, perturb_std^2)`` perturbation to the fixed noise. Defaults to
                ``self.training``.

        Returns:
            ``u_DIP``, probabilities in ``[0, 1]`` of shape ``(B, out_channels, *spatial_size)``.

        Raises:
            ValueError: ``indices`` not a non-empty 1D integer sequence.
            IndexError: an index outside ``[0, num_images)``.
        """
        return self.unet(self.network_input(indices, perturb))

    def extra_repr(self) -> str:
        return (
            f"num_images={self.num_images}, spatial_size={list(self.spatial_size)}, noise_max={self.noise_max}, "
            f"perturb_std={self.perturb_std}, seed={self.seed}"
        )


class SelectivePair(nn.Module):
    """The VM-Net and (optionally) the DIP-Net of Burrows et al., combined by a Hadamard product.

    Training (methods M3, M4): ``u = u_VM * u_DIP`` with ``u_VM = psi(f, G)`` and ``u_DIP = phi(z^(j))``, the DIP
    image chosen by the training-image indices ``j`` of the batch. Test time: ``u = u_VM`` (the DIP-Net is not
    needed once the VM-Net is trained). Without a DIP-Net (methods M1, M2) ``u = u_VM`` always.

    Args:
        vm_net: the VM-Net.
        dip_net: the DIP-Net, or ``None``. Its ``spatial_size`` must match the images given to :meth:`forward`.

    Example::

        >>> pair = SelectivePair(VMNet(features=32), DIPNet(2, (128, 128), features=32))
        >>> out = pair(torch.zeros(2, 2, 128, 128), indices=[0, 1])
        >>> sorted(out)
        ['u', 'u_dip', 'u_vm']
    """

    def __init__(self, vm_net: VMNet, dip_net: DIPNet | None = None) -> None:
        super().__init__()
        self.vm_net = vm_net
        self.dip_net = dip_net

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor | None]:
        """
        Args:
            x: VM-Net input ``(B, 2, spatial...)``: image and guidance.
            indices: training-image indices ``j`` of the ``B`` samples, for the DIP-Net. ``None`` at test time;
                ignored when the pair has no DIP-Net.

        Returns:
            ``{"u": u, "u_vm": u_vm, "u_dip": u_dip}``; ``u = u_vm * u_dip`` when a DIP-Net and ``indices`` are
            given, otherwise ``u = u_vm`` and ``u_dip`` is ``None``.

        Raises:
            ValueError: the DIP output does not have the shape of the VM output (batch size or spatial size), or an
                invalid input of either network.
        """
        u_vm = self.vm_net(x)
        if self.dip_net is None or indices is None:
            return {"u": u_vm, "u_vm": u_vm, "u_dip": None}
        u_dip = self.dip_net(indices)
        if u_dip.shape != u_vm.shape:
            raise ValueError(
                f"the DIP-Net output must have the shape of the VM-Net output, got u_dip shape {list(u_dip.shape)} "
                f"(indices {list(torch.as_tensor(indices).tolist())}) and u_vm shape {list(u_vm.shape)}."
            )
        return {"u": u_vm * u_dip, "u_vm": u_vm, "u_dip": u_dip}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time segmentation probabilities ``u_VM = psi(f, G)`` of shape ``(B, out_channels, spatial...)``."""
        return self.vm_net(x)
