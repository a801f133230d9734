"""Selective-segmentation losses of Burrows, Chen & Torella (2021): eq. (3) (VM-Net alone) and eq. (2) (VM+DIP).

References:

    Burrows, L., Chen, K., Torella, F. (2021) Using Deep Image Prior to Assist Variational Selective Segmentation
    Deep Learning Algorithms (eqs. 2 and 3; methods M1-M4).

    Roberts, M., Spencer, J. (2019) Chan-Vese Reformulation for Selective Image Segmentation. Journal of
    Mathematical Imaging and Vision 61(8), 1173-1196 (the fitting term ``Phi``).

    Roberts, M., Chen, K., Irion, K. L. (2019) A Convex Geodesic Selective Model for Image Segmentation. Journal of
    Mathematical Imaging and Vision 61(4), 482-503 (the geodesic distance ``D_G``).

Both losses are linear in the segmentation ``u`` except for the regulariser: the fitting map ``Phi(f, c1)``, the
geodesic distance ``D_G`` and the edge detector ``g`` are computed beforehand (per image, fixed during training) and
passed in as tensors. The weights ``lam = 2`` and ``theta = 30`` are the only published values, from the same
authors' DIP code (METHODS A-DIP-3); ``mu`` has no published value.
"""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .checks import check_reduction, check_weight, compute_dtype, reduce

__all__ = ["DIPSelectiveLoss", "SelectiveLoss", "weighted_tv"]


def _check_u(u: torch.Tensor, name: str) -> None:
    """Validate a ``B1H[WD]`` floating-point tensor named ``name``."""
    if not isinstance(u, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(u).__name__}.")
    if u.ndim not in (4, 5) or u.shape[1] != 1:
        raise ValueError(f"{name} must have shape B1HW or B1HWD (one channel), got shape {tuple(u.shape)}.")
    if u.numel() == 0:
        raise ValueError(f"{name} has an empty batch or spatial axis, shape {tuple(u.shape)}.")
    if not torch.is_floating_point(u):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {u.dtype}.")


def _check_like(value: torch.Tensor, name: str, reference: torch.Tensor, reference_name: str) -> None:
    """Validate a floating-point tensor ``value`` of exactly the shape of ``reference``."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    if value.shape != reference.shape:
        raise ValueError(
            f"{name} must have the same shape as {reference_name}, got {name} shape {tuple(value.shape)} and "
            f"{reference_name} shape {tuple(reference.shape)}."
        )
    if not torch.is_floating_point(value):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}.")


def _gradient_magnitude(u: torch.Tensor, eps: float) -> torch.Tensor:
    """``sqrt(sum_i (d_i u)^2 + eps)`` at every pixel, forward differences with a zero difference at the far end."""
    squared = torch.zeros_like(u)
    for axis in range(2, u.ndim):
        diff = torch.diff(u, dim=axis)
        pad_shape = list(u.shape)
        pad_shape[axis] = 1
        diff = torch.cat([diff, diff.new_zeros(pad_shape)], dim=axis)  # Neumann: no change across the boundary
        squared = squared + diff.square()
    return torch.sqrt(squared + eps)


def weighted_tv(u: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Per-image weighted total variation ``sum_x g(x) sqrt(|grad u(x)|^2 + eps)``, 2D and 3D.

    ``grad u`` uses forward differences, ``(d_h u)[i, j] = u[i + 1, j] - u[i, j]``, with Neumann boundary
    conditions: the difference is 0 at the last row (column, slice), so every pixel contributes, including
    ``sqrt(eps)`` where ``u`` is locally constant.

    Args:
        u: segmentation of shape ``B1HW`` or ``B1HWD``, floating point.
        weight: edge weight ``g`` of the same shape (e.g. ``1 / (1 + iota |grad f|^2)``), or ``None`` for 1.
        eps: constant under the square root (``>= 0``); it keeps the gradient finite where ``grad u = 0``.
            Defaults to 1e-8.

    Returns:
        The per-image sums, shape ``(B,)``, in the promoted dtype of ``u`` and ``weight``.

    Raises:
        ValueError: ``u`` not ``B1H[WD]`` floating point, ``weight`` of another shape, or a negative ``eps``.

    Example:
        >>> u = torch.tensor([[[[0.0, 0.3], [0.4, 1.0]]]])
        >>> weighted_tv(u, eps=0.0)
        tensor([1.8000])
    """
    _check_u(u, "u")
    eps = check_weight(eps, "eps")
    magnitude = _gradient_magnitude(u, eps)
    if weight is not None:
        _check_like(weight, "weight", u, "u")
        magnitude = magnitude * weight
    return magnitude.flatten(start_dim=1).sum(dim=1)


def _reduce(per_image: torch.Tensor, reduction: str, shape: torch.Size) -> torch.Tensor:
    """``"sum"``: total; ``"mean"``: total / (B * pixels); ``"none"``: per-image sums of shape ``(B, 1, 1, 1[, 1])``."""
    return reduce(per_image, reduction, len(shape) - 1, mean_divisor=shape[0] * shape[2:].numel())


def _logged(per_image: torch.Tensor, reduction: str, shape: torch.Size) -> float:
    """A component as a float for logging, reduced like the loss (summed over the batch for ``"none"``)."""
    return float(_reduce(per_image.detach(), reduction, shape).sum())


def _data_terms(u: torch.Tensor, fitting: torch.Tensor, distance: torch.Tensor, lam: float,
                theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``lam * sum(Phi u)`` and ``theta * sum(D_G u)``, shape ``(B,)`` each."""
    return (lam * (fitting * u).flatten(start_dim=1).sum(dim=1),
            theta * (distance * u).flatten(start_dim=1).sum(dim=1))


class SelectiveLoss(_Loss):
    """Selective loss with explicit regularisation, eq. (3) of Burrows et al. (2021) (methods M1, M2).

    For segmentations ``u`` (``B1H[WD]``, in ``[0, 1]``, the VM-Net output), fitting maps ``Phi(f, c1)``,
    normalised geodesic distances ``D_G`` and edge detectors ``g`` of the same shape, summed over the pixels and
    the ``B`` images:

        ``L = mu * sum g |grad u| + lam * sum Phi u + theta * sum D_G u``

    ``|grad u|`` is discretised by :func:`weighted_tv` (forward differences, Neumann boundary,
    ``sqrt(. + eps)``); the paper does not say how. ``mu = 0`` is method M2 (no explicit regulariser; the TV
    term is then not computed). ``edge=None`` uses ``g = 1`` (plain total variation).

    Reductions: ``"sum"`` (default) is the paper's sum; ``"mean"`` divides it by ``B * H * W [* D]``, which scales
    every term alike, so ``mu``, ``lam`` and ``theta`` keep their balance (only the overall scale, e.g. the
    effective learning rate of SGD, changes); ``"none"`` returns the per-image sums as ``(B, 1, 1, 1[, 1])``.

    After each call the weighted terms are kept as floats for logging, reduced like the loss (summed over the
    batch for ``"none"``): ``last_regulariser`` (``mu`` term), ``last_fitting`` (``lam`` term) and
    ``last_geodesic`` (``theta`` term); they add up to the loss.

    Example:
        >>> loss = SelectiveLoss(mu=1.0, lam=2.0, theta=30.0)
        >>> u = torch.rand(2, 1, 32, 32, requires_grad=True)
        >>> fitting, distance, edge = torch.randn(2, 1, 32, 32), torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
        >>> loss(u, fitting, distance, edge).backward()
    """

    def __init__(self, mu: float = 1.0, lam: float = 2.0, theta: float = 30.0,
                 reduction: LossReduction | str = LossReduction.SUM, eps: float = 1e-8) -> None:
        """
        Args:
            mu: weight of the edge-weighted TV term (``>= 0``; 0 gives method M2). Defaults to 1.0 (no published
                value).
            lam: weight of the fitting term (``>= 0``). Defaults to 2.0 (authors' DIP code).
            theta: weight of the geodesic-distance term (``>= 0``). Defaults to 30.0 (authors' DIP code).
            reduction: {``"sum"``, ``"mean"``, ``"none"``}, see the class docstring. Defaults to ``"sum"``.
            eps: constant under the square root of ``|grad u|`` (``>= 0``). Defaults to 1e-8.

        Raises:
            ValueError: an unknown ``reduction``, or a negative or non-finite weight or ``eps``.
        """
        super().__init__(reduction=check_reduction(reduction))
        self.mu = check_weight(mu, "mu")
        self.lam = check_weight(lam, "lam")
        self.theta = check_weight(theta, "theta")
        self.eps = check_weight(eps, "eps")
        self.last_regulariser: float = float("nan")
        self.last_fitting: float = float("nan")
        self.last_geodesic: float = float("nan")

    def forward(self, u: torch.Tensor, fitting: torch.Tensor, distance: torch.Tensor,
                edge: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            u: segmentation probabilities, shape ``B1HW`` or ``B1HWD``, floating point.
            fitting: fitting map ``Phi(f, c1)``, the same shape.
            distance: normalised geodesic distance ``D_G``, the same shape.
            edge: edge detector ``g``, the same shape, or ``None`` for ``g = 1``.

        Returns:
            A scalar for ``"sum"`` / ``"mean"``; a tensor of shape ``(B, 1, 1, 1[, 1])`` for ``"none"``.

        Raises:
            ValueError: ``u`` not ``B1H[WD]`` floating point, or another argument of a different shape or not
                floating point (the message names the argument).
        """
        _check_u(u, "u")
        _check_like(fitting, "fitting", u, "u")
        _check_like(distance, "distance", u, "u")
        maps = [u, fitting, distance]
        if edge is not None:
            _check_like(edge, "edge", u, "u")
            maps.append(edge)
        dtype = compute_dtype(*maps)
        u_, fitting_, distance_ = (t.to(dtype) for t in maps[:3])
        fit, geo = _data_terms(u_, fitting_, distance_, self.lam, self.theta)
        if self.mu > 0:
            reg = self.mu * weighted_tv(u_, None if edge is None else edge.to(dtype), self.eps)
        else:
            reg = torch.zeros_like(fit)
        self.last_regulariser = _logged(reg, self.reduction, u.shape)
        self.last_fitting = _logged(fit, self.reduction, u.shape)
        self.last_geodesic = _logged(geo, self.reduction, u.shape)
        return _reduce(reg + fit + geo, self.reduction, u.shape)


class DIPSelectiveLoss(_Loss):
    """DIP-assisted selective loss, eq. (2) of Burrows et al. (2021) (methods M3, M4).

    For the VM-Net and DIP-Net outputs ``u_vm``, ``u_dip`` (``B1H[WD]``, in ``[0, 1]``) and their Hadamard
    product ``u = u_vm * u_dip``, with fitting maps ``Phi(f, c1)`` and normalised geodesic distances ``D_G`` of
    the same shape, summed over the pixels and the ``B`` images:

        ``L = lam * sum Phi u + theta * sum D_G u + 1/2 * sum (u_dip - u_vm)^2``

    There is no explicit regulariser: the implicit one of the DIP-Net reaches the VM-Net through ``u`` and the
    coupling term (weight 1/2, fixed by the paper).

    Reductions: ``"sum"`` (default) is the paper's sum; ``"mean"`` divides it by ``B * H * W [* D]`` (all three
    terms alike, so ``lam`` and ``theta`` keep their balance with the coupling term); ``"none"`` returns the
    per-image sums as ``(B, 1, 1, 1[, 1])``.

    After each call the weighted terms are kept as floats for logging, reduced like the loss (summed over the
    batch for ``"none"``): ``last_fitting`` (``lam`` term), ``last_geodesic`` (``theta`` term) and
    ``last_coupling`` (the 1/2 term); they add up to the loss.

    Example:
        >>> loss = DIPSelectiveLoss(lam=2.0, theta=30.0)
        >>> u_vm = torch.rand(2, 1, 32, 32, requires_grad=True)
        >>> u_dip = torch.rand(2, 1, 32, 32, requires_grad=True)
        >>> loss(u_vm, u_dip, torch.randn(2, 1, 32, 32), torch.rand(2, 1, 32, 32)).backward()
    """

    def __init__(
        self, lam: float = 2.0, theta: float = 30.0, reduction: LossReduction | str = LossReduction.SUM
    ) -> None:
        """
        Args:
            lam: weight of the fitting term (``>= 0``). Defaults to 2.0 (authors' DIP code).
            theta: weight of the geodesic-distance term (``>= 0``). Defaults to 30.0 (authors' DIP code).
            reduction: {``"sum"``, ``"mean"``, ``"none"``}, see the class docstring. Defaults to ``"sum"``.

        Raises:
            ValueError: an unknown ``reduction``, or a negative or non-finite weight.
        """
        super().__init__(reduction=check_reduction(reduction))
        self.lam, self.theta = check_weight(lam, "lam"), check_weight(theta, "theta")
        self.last_fitting = self.last_geodesic = self.last_coupling = float("nan")  # components of the last call

    def forward(self, u_vm: torch.Tensor, u_dip: torch.Tensor, fitting: torch.Tensor,
                distance: torch.Tensor) -> torch.Tensor:
        """
        Args:
            u_vm: VM-Net output, shape ``B1HW`` or ``B1HWD``, floating point.
            u_dip: DIP-Net output, the same shape.
            fitting: fitting map ``Phi(f, c1)``, the same shape.
            distance: normalised geodesic distance ``D_G``, the same shape.

        Returns and raises as :meth:`SelectiveLoss.forward` (``u_vm`` in the place of ``u``).
        """
        _check_u(u_vm, "u_vm")
        _check_like(u_dip, "u_dip", u_vm, "u_vm")
        _check_like(fitting, "fitting", u_vm, "u_vm")
        _check_like(distance, "distance", u_vm, "u_vm")
        dtype = compute_dtype(u_vm, u_dip, fitting, distance)
        u_vm_, u_dip_, fitting_, distance_ = (t.to(dtype) for t in (u_vm, u_dip, fitting, distance))
        fit, geo = _data_terms(u_vm_ * u_dip_, fitting_, distance_, self.lam, self.theta)
        coupling = 0.5 * (u_dip_ - u_vm_).square().flatten(start_dim=1).sum(dim=1)
        self.last_fitting = _logged(fit, self.reduction, u_vm.shape)
        self.last_geodesic = _logged(geo, self.reduction, u_vm.shape)
        self.last_coupling = _logged(coupling, self.reduction, u_vm.shape)
        return _reduce(fit + geo + coupling, self.reduction, u_vm.shape)
