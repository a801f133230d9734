"""Active-contour-without-edges (ACWE) loss, active-contour label loss and their Mode-4 combination.

References:

    Chen, J., Frey, E. C. (2020) Medical Image Segmentation via Unsupervised Convolutional Neural Network.
    Medical Imaging with Deep Learning (MIDL) 2020 (preprint title: "An Unsupervised Learning Model for Medical
    Image Segmentation").

    Chen, X., Williams, B. M., Vallabhaneni, S. R., Czanner, G., Williams, R. (2019) Learning Active Contour Models
    for Medical Image Segmentation. CVPR 2019, 11632–11640 (source of the label loss).

The network output ``f`` is read, as in the authors' code, through ``u = clip(f, 0, 1)``: a soft inside indicator
that is plugged into the two-phase Chan–Vese energy (paper eqs. 1–2, :class:`ACWELoss`) or compared with a ground
truth mask (paper eq. 3 in its code form, :class:`ActiveContourLabelLoss`). At inference the foreground is
``f > 0``. :class:`ACWEWithLabelLoss` is the paper's Mode 4, ``L = L_ACWE + α·L_label`` with ``α = 0.4``, where the
label term is applied to explicitly flagged labelled samples only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .checks import check_reduction, check_weight, compute_dtype, reduce

__all__ = ["ACWELoss", "ACWEWithLabelLoss", "ActiveContourLabelLoss", "LabelOnlyLoss"]

_DENOMINATORS = ("count", "sum")


def _check_single_channel(input: torch.Tensor, other: torch.Tensor, other_name: str) -> None:
    """Validate a ``B1H[WD]`` prediction against a tensor of exactly the same shape.

    Raises:
        ValueError: not tensors, wrong number of dimensions, a channel count other than one, shapes that differ,
            an empty batch or spatial axis, or a non-floating ``input`` (or non-floating ``image``).
    """
    if not isinstance(input, torch.Tensor) or not isinstance(other, torch.Tensor):
        raise ValueError(
            f"input and {other_name} must be torch.Tensor, got {type(input).__name__} and {type(other).__name__}."
        )
    if input.ndim not in (4, 5):
        raise ValueError(f"input must have shape B1HW or B1HWD (4 or 5 dimensions), got shape {tuple(input.shape)}.")
    if input.shape[1] != 1:
        raise ValueError(
            f"input must have exactly one channel (the raw network output f), got shape {tuple(input.shape)}."
        )
    if other.shape != input.shape:
        raise ValueError(
            f"{other_name} must have the same shape as input, got {other_name} shape {tuple(other.shape)} and "
            f"input shape {tuple(input.shape)}."
        )
    if input.numel() == 0:
        raise ValueError(f"input has an empty batch or spatial axis, shape {tuple(input.shape)}.")
    if not torch.is_floating_point(input):
        raise ValueError(f"input must be a floating-point tensor, got dtype {input.dtype}.")
    if other_name == "image" and not torch.is_floating_point(other):
        raise ValueError(f"image must be a floating-point tensor, got dtype {other.dtype}.")


def _region_mean(weight: torch.Tensor, image: torch.Tensor, denominator: str) -> torch.Tensor:
    """Centroid ``Σ w·g / den`` over the last axis of ``(K, P)`` tensors, shape ``(K, 1)``.

    ``den`` is ``count_nonzero(w)`` (detached: an integer with no gradient, so the gradient flows through the
    numerator only) for ``denominator="count"``, and ``Σ w`` (differentiable) for ``"sum"``. A region with
    ``den = 0`` (then also ``Σ w·g = 0``) gets the centroid 0, with a zero gradient and no NaN.
    """
    num = (weight * image).sum(dim=-1, keepdim=True)
    if denominator == "count":
        den = torch.count_nonzero(weight.detach(), dim=-1).unsqueeze(-1).to(num.dtype)
    else:
        den = weight.sum(dim=-1, keepdim=True)
    nonempty = den > 0
    safe_den = torch.where(nonempty, den, torch.ones_like(den))
    return torch.where(nonempty, num / safe_den, torch.zeros_like(num))


def _acwe_energy(u: torch.Tensor, g: torch.Tensor, nu: float, pool_batch: bool, denominator: str) -> torch.Tensor:
    """Per-image ACWE energies ``|E_b|``, shape ``(B,)``.

    Args:
        u: clipped prediction in ``[0, 1]``, shape ``B1H[WD]``.
        g: image, same shape.
        nu: area weight.
        pool_batch: if True, ``c1`` and ``c2`` are computed over the whole batch (the authors' code); otherwise per
            image.
        denominator: ``"count"`` or ``"sum"``, see :func:`_region_mean`.
    """
    batch = u.shape[0]
    u_flat = u.reshape(batch, -1)
    g_flat = g.reshape(batch, -1)
    if pool_batch:
        c1 = _region_mean(u_flat.reshape(1, -1), g_flat.reshape(1, -1), denominator)  # (1, 1)
        c2 = _region_mean((1 - u_flat).reshape(1, -1), g_flat.reshape(1, -1), denominator)
    else:
        c1 = _region_mean(u_flat, g_flat, denominator)  # (B, 1)
        c2 = _region_mean(1 - u_flat, g_flat, denominator)
    inside = (u_flat * (g_flat - c1).square()).sum(dim=-1)
    outside = ((1 - u_flat) * (g_flat - c2).square()).sum(dim=-1)
    area = u_flat.sum(dim=-1)
    # |.| as in the authors' code; with nu >= 0 and u in [0, 1] every term is non-negative, so it never changes the
    # value, and the per-image shares of the pooled energy add up to the pooled |E|.
    return (inside + outside + nu * area).abs()


def _label_terms(u: torch.Tensor, v: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image length and region terms of the code form of paper eq. (3), each of shape ``(B,)``.

    Args:
        u: clipped prediction in ``[0, 1]``, shape ``B1H[WD]``.
        v: label, same shape.
        eps: added under the square root of the length term.
    """
    if u.ndim == 4:
        dx = u[:, :, 1:, :] - u[:, :, :-1, :]  # forward difference along H, (B, 1, H-1, W)
        dy = u[:, :, :, 1:] - u[:, :, :, :-1]  # forward difference along W, (B, 1, H, W-1)
        # The authors' NHWC slices x[:, 1:, :-2, :] and y[:, :-2, 1:, :] index (H, W) as (1:, :-2) and (:-2, 1:);
        # in NCHW they are dx[:, :, 1:, :-2] and dy[:, :, :-2, 1:]. Both are (H-2, W-2) but NOT co-located:
        # dx at (i, j) is u[i+2, j] - u[i+1, j], dy at (i, j) is u[i, j+2] - u[i, j+1]. Kept exactly as written.
        sq = dx[:, :, 1:, :-2].square() + dy[:, :, :-2, 1:].square()
    else:
        # 3D (no published form): co-located forward differences along H, W and D at every voxel of the
        # (H-1, W-1, D-1) grid.
        base = u[:, :, :-1, :-1, :-1]
        dx = u[:, :, 1:, :-1, :-1] - base
        dy = u[:, :, :-1, 1:, :-1] - base
        dz = u[:, :, :-1, :-1, 1:] - base
        sq = dx.square() + dy.square() + dz.square()
    length = torch.sqrt(sq.abs() + eps).flatten(start_dim=1).sum(dim=-1)
    u_flat = u.flatten(start_dim=1)
    v_flat = v.flatten(start_dim=1)
    region_in = (u_flat * (v_flat - 1).square()).sum(dim=-1).abs()
    region_out = ((1 - u_flat) * v_flat.square()).sum(dim=-1).abs()
    return length, region_in + region_out


class ACWELoss(_Loss):
    """Unsupervised ACWE (two-phase Chan–Vese) loss of Chen & Frey (2020), code form of paper eq. (2), 2D and 3D.

    ``input`` (``B1H[WD]``) is the raw network output ``f`` and ``image`` (same shape) the intensities ``g``, in
    ``[0, 1]`` (per-slice min–max in the paper's pipeline). With ``u = clip(f, 0, 1)``:

        ``c1 = Σ u·g / count_nonzero(u)``,   ``c2 = Σ (1−u)·g / count_nonzero(1−u)``
        ``L  = | Σ u (g − c1)² + Σ (1−u) (g − c2)² + ν Σ u |``

    This is the authors' code (their ``ACWE`` class), not the printed eq. (2): eq. (2) uses the hard partition
    ``f > 0``, whose gradient is zero. For a binary ``u`` the two coincide. ``count_nonzero`` is piecewise constant:
    it is treated as a detached count, so gradients flow through the numerators of ``c1``, ``c2`` only (as in the
    code). With ``denominator="sum"`` the centroids are the soft region means ``Σ u·g / Σ u`` and
    ``Σ (1−u)·g / Σ (1−u)`` (the paper's "averages inside and outside", fully differentiable). A region with an
    empty denominator (e.g. all ``u = 0``) gets the centroid 0 — no NaN value or gradient.

    Area weight ``ν`` (``nu``): 0.004 is the value of the paper and of the authors' class default (the default
    here); the authors' shipped training script instead uses ``ν = 5e-4``. Use ``nu=5e-4`` to reproduce that
    script.

    Batch handling:

    - ``pool_batch=False`` (default): every image has its own ``c1``, ``c2`` and absolute value, giving per-image
      energies ``L_b``; the loss does not depend on what else is in the batch (needed for 2.5D/3D batches).
    - ``pool_batch=True``: ``c1``, ``c2`` are pooled over the whole batch, as the authors' code does (it sums over
      the whole ``(N, H, W, 1)`` tensor). ``L_b`` is then image ``b``'s share of the pooled energy; since every term
      is non-negative (``ν ≥ 0``, ``u ∈ [0, 1]``) the shares add up to the pooled ``|·|`` exactly.

    Reductions:

    - ``"sum"``: ``Σ_b L_b``. With ``pool_batch=True`` this equals the authors' code on the whole batch.
    - ``"mean"``: ``Σ_b L_b / B`` (for ``pool_batch=True``: the pooled value divided by ``B``).
    - ``"none"``: the per-image values ``L_b`` as a tensor of shape ``(B, 1, 1, 1[, 1])`` (broadcastable against
      the input).

    No per-pixel normalisation is applied: values grow with the image size as in the paper. Weight mapping: a weight
    ``w_sum`` on the summed loss equals ``w_mean = w_sum · B`` with ``"mean"``. The Mode-4 weight ``α = 0.4``
    between this loss and :class:`ActiveContourLabelLoss` keeps its meaning as long as both use the same reduction.

    Half-precision inputs are computed in float32; otherwise the common dtype of ``input`` and ``image`` is used.

    Example:
        >>> loss = ACWELoss(nu=0.004)
        >>> output = torch.randn(2, 1, 32, 32, requires_grad=True)
        >>> image = torch.rand(2, 1, 32, 32)
        >>> loss(output, image).backward()
    """

    def __init__(self, nu: float = 0.004, pool_batch: bool = False,
                 reduction: LossReduction | str = LossReduction.MEAN, denominator: str = "count") -> None:
        """
        Args:
            nu: area weight ``ν >= 0``. Defaults to 0.004 (paper and the authors' class default; their training
                script uses 5e-4).
            pool_batch: if True, pool ``c1``, ``c2`` over the batch as the authors' code does. Defaults to False
                (per-image centroids).
            reduction: {``"none"``, ``"mean"``, ``"sum"``}, see the class docstring. Defaults to ``"mean"``.
            denominator: ``"count"`` (authors' code: ``count_nonzero`` of ``u`` and ``1 − u``, detached) or
                ``"sum"`` (soft region means ``Σ u`` and ``Σ (1 − u)``, differentiable). Defaults to ``"count"``.

        Raises:
            ValueError: ``reduction`` not one of ``"none"``, ``"mean"``, ``"sum"``; ``denominator`` not ``"count"``
                or ``"sum"``; ``nu`` negative or not finite.
        """
        super().__init__(reduction=check_reduction(reduction))
        if denominator not in _DENOMINATORS:
            raise ValueError(f"denominator must be one of {list(_DENOMINATORS)}, got {denominator!r}.")
        self.nu = check_weight(nu, "nu")
        self.pool_batch = bool(pool_batch)
        self.denominator = denominator

    def per_image(self, input: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Per-image values ``L_b`` of shape ``(B,)`` (see the class docstring); arguments as in :meth:`forward`."""
        _check_single_channel(input, image, "image")
        dtype = compute_dtype(input, image)
        u = torch.clamp(input.to(dtype), 0.0, 1.0)
        return _acwe_energy(u, image.to(dtype), self.nu, self.pool_batch, self.denominator)

    def forward(self, input: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: raw network output ``f`` (not thresholded; clipped to ``[0, 1]`` inside), shape ``B1H[WD]``,
                floating point.
            image: intensities ``g`` in ``[0, 1]``, the same shape as ``input``, floating point.

        Returns:
            A scalar for ``"mean"`` / ``"sum"``; a tensor of shape ``(B, 1, 1, 1[, 1])`` for ``"none"``.

        Raises:
            ValueError: ``input`` not 4D/5D, not single-channel or not floating point; ``image`` of a different
                shape or not floating point.
        """
        return reduce(self.per_image(input, image), self.reduction, input.ndim - 1)


class ActiveContourLabelLoss(_Loss):
    """Supervised active-contour label loss of Chen & Frey (2020), code form of paper eq. (3), 2D (and 3D).

    ``input`` (``B1H[WD]``) is the raw network output ``f`` and ``target`` (same shape) the ground-truth mask ``v``
    (0/1; bool, integer or floating). With ``u = clip(f, 0, 1)`` the loss of one image is

        ``L = length_weight · Σ sqrt(|dx[1:, :-2]² + dy[:-2, 1:]²| + eps)
        + region_weight · (|Σ u (v − 1)²| + |Σ (1 − u) v²|)``

    where ``dx = u[1:, :] − u[:-1, :]`` is the forward difference along H and ``dy = u[:, 1:] − u[:, :-1]`` along W.
    This is the authors' ``ACWE_label`` code (the 2019 summed version of Chen X. et al.'s active contour loss,
    written for NHWC tensors) translated to NCHW. The two difference fields are **not co-located**: the term at
    ``(i, j)`` combines ``u[i+2, j] − u[i+1, j]`` with ``u[i, j+2] − u[i, j+1]``, over an ``(H−2) × (W−2)`` grid;
    this is reproduced exactly because results depend on it. The printed eq. (3) has the region term
    ``Σ ((1 − f)² − f²) v = Σ (1 − 2f) v``, which is linear and ignores false positives; the code form is used.

    3D inputs (``B1HWD``, no published form): the length term is ``Σ sqrt(dx² + dy² + dz² + eps)`` with co-located
    forward differences along H, W and D at every voxel of the ``(H−1) × (W−1) × (D−1)`` grid; the region term is
    unchanged.

    Reductions (per-image values ``L_b``):

    - ``"sum"`` (default, the authors' summed form): ``Σ_b L_b``; equal to the code on the whole batch, because every
      term is non-negative so the per-image absolute values add up to the batch ones.
    - ``"mean"``: ``Σ_b L_b / B``.
    - ``"none"``: ``L_b`` as a tensor of shape ``(B, 1, 1, 1[, 1])``.

    Weight mapping: a weight ``w_sum`` on the summed loss equals ``w_mean = w_sum · B`` with ``"mean"``. For the
    Mode-4 total ``L_ACWE + α·L_label`` (``α = 0.4``) use the same reduction for both terms.

    Example:
        >>> loss = ActiveContourLabelLoss()
        >>> output = torch.randn(2, 1, 32, 32, requires_grad=True)
        >>> target = torch.randint(0, 2, (2, 1, 32, 32))
        >>> loss(output, target).backward()
    """

    def __init__(self, length_weight: float = 1.0, region_weight: float = 1.0,
                 reduction: LossReduction | str = LossReduction.SUM, eps: float = 1e-8) -> None:
        """
        Args:
            length_weight: weight of the length term (``>= 0``). Defaults to 1.0 (authors' code).
            region_weight: weight ``λ`` of the region term (``>= 0``). Defaults to 1.0 (authors' code).
            reduction: {``"none"``, ``"mean"``, ``"sum"``}, see the class docstring. Defaults to ``"sum"``.
            eps: constant under the square root of the length term (``>= 0``). Defaults to 1e-8 (authors' code);
                each length element contributes at least ``sqrt(eps) = 1e-4``.

        Raises:
            ValueError: ``reduction`` not one of ``"none"``, ``"mean"``, ``"sum"``; a negative or non-finite weight
                or ``eps``.
        """
        super().__init__(reduction=check_reduction(reduction))
        self.length_weight = check_weight(length_weight, "length_weight")
        self.region_weight = check_weight(region_weight, "region_weight")
        self.eps = check_weight(eps, "eps")

    def _prepare(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_single_channel(input, target, "target")
        if torch.is_complex(target):
            raise ValueError(f"target must hold real mask values, got dtype {target.dtype}.")
        min_size = 3 if input.ndim == 4 else 2
        if min(input.shape[2:]) < min_size:
            raise ValueError(
                f"the length term needs every spatial size >= {min_size} for {input.ndim - 2}D input, got input "
                f"shape {tuple(input.shape)}."
            )
        dtype = compute_dtype(input, target) if torch.is_floating_point(target) else compute_dtype(input)
        return torch.clamp(input.to(dtype), 0.0, 1.0), target.to(dtype)

    def per_image(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image values ``L_b`` of shape ``(B,)``; arguments as in :meth:`forward`."""
        u, v = self._prepare(input, target)
        length, region = _label_terms(u, v, self.eps)
        return self.length_weight * length + self.region_weight * region

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: raw network output ``f`` (clipped to ``[0, 1]`` inside), shape ``B1HW`` or ``B1HWD``, floating
                point; every spatial size at least 3 in 2D, 2 in 3D.
            target: ground-truth mask ``v``, the same shape as ``input``.

        Returns:
            A scalar for ``"mean"`` / ``"sum"``; a tensor of shape ``(B, 1, 1, 1[, 1])`` for ``"none"``.

        Raises:
            ValueError: bad shapes or dtypes, or spatial sizes too small for the length term.
        """
        return reduce(self.per_image(input, target), self.reduction, input.ndim - 1)

    def terms(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted length and region parts, each reduced like :meth:`forward`; they add up to the loss."""
        u, v = self._prepare(input, target)
        length, region = _label_terms(u, v, self.eps)
        return {
            "length": reduce(self.length_weight * length, self.reduction, input.ndim - 1),
            "region": reduce(self.region_weight * region, self.reduction, input.ndim - 1),
        }


def _labelled_mask(labelled: torch.Tensor | Sequence[bool], batch: int, device: torch.device) -> torch.Tensor:
    """One bool flag per sample from a bool / 0-1 integer tensor or sequence of length ``batch``."""
    mask = torch.as_tensor(labelled, device=device)
    if mask.ndim == 2 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 1 or mask.shape[0] != batch:
        raise ValueError(f"labelled must hold one flag per sample (length {batch}), got shape {tuple(mask.shape)}.")
    if mask.dtype != torch.bool:
        if torch.is_floating_point(mask) or torch.is_complex(mask) or bool(torch.any((mask != 0) & (mask != 1))):
            raise ValueError(f"labelled must hold booleans (or 0/1 integers), got {labelled!r}.")
        mask = mask.bool()
    return mask


class ACWEWithLabelLoss(_Loss):
    """Mode 4 of Chen & Frey (2020): ``L = L_ACWE + α·L_label`` with the label term on labelled samples only.

    The paper trains Mode 4 with ``α = 0.4`` on all samples for the ACWE term (:class:`ACWELoss`) and adds the label
    term (:class:`ActiveContourLabelLoss`) where a ground truth exists; no code for Mode 4 was published. Which
    samples are labelled is given **explicitly** by the ``labelled`` argument of :meth:`forward`, never inferred
    from the mask content (an all-background labelled slice stays labelled). Targets of unlabelled samples are not
    used, so any placeholder of the right shape may be passed there.

    Per-sample totals are ``t_b = L_ACWE,b + α·[b labelled]·L_label,b`` with the per-image values of the two losses
    (for ``pool_batch=True`` the ACWE part is image ``b``'s share of the pooled energy). Reductions: ``"sum"`` →
    ``Σ_b t_b``; ``"mean"`` → ``Σ_b t_b / B`` (the label sum is divided by the batch size, not by the number of
    labelled samples, so ``α`` has the same meaning in both reductions); ``"none"`` → ``t_b`` of shape
    ``(B, 1, 1, 1[, 1])``. After each call the unweighted parts are kept as floats in ``last_acwe`` and
    ``last_label``: summed over the batch for ``"sum"``, averaged over it (divided by ``B``) otherwise.

    Example:
        >>> loss = ACWEWithLabelLoss(alpha=0.4)
        >>> output = torch.randn(4, 1, 32, 32, requires_grad=True)
        >>> image = torch.rand(4, 1, 32, 32)
        >>> target = torch.randint(0, 2, (4, 1, 32, 32))
        >>> loss(output, image, target, labelled=[True, False, False, True]).backward()
    """

    def __init__(self, alpha: float = 0.4, nu: float = 0.004, pool_batch: bool = False, denominator: str = "count",
                 length_weight: float = 1.0, region_weight: float = 1.0,
                 reduction: LossReduction | str = LossReduction.MEAN, eps: float = 1e-8) -> None:
        """
        Args:
            alpha: weight ``α >= 0`` of the label term. Defaults to 0.4 (paper).
            nu: area weight of :class:`ACWELoss`. Defaults to 0.004.
            pool_batch: batch pooling of the ACWE centroids, see :class:`ACWELoss`. Defaults to False.
            denominator: ``"count"`` or ``"sum"``, see :class:`ACWELoss`. Defaults to ``"count"``.
            length_weight: length weight of :class:`ActiveContourLabelLoss`. Defaults to 1.0.
            region_weight: region weight of :class:`ActiveContourLabelLoss`. Defaults to 1.0.
            reduction: {``"none"``, ``"mean"``, ``"sum"``}, see the class docstring. Defaults to ``"mean"``.
            eps: square-root constant of the length term. Defaults to 1e-8.

        Raises:
            ValueError: invalid ``reduction`` or ``denominator``, or a negative / non-finite weight.
        """
        super().__init__(reduction=check_reduction(reduction))
        self.alpha = check_weight(alpha, "alpha")
        self.acwe = ACWELoss(nu=nu, pool_batch=pool_batch, reduction=LossReduction.NONE, denominator=denominator)
        self.label = ActiveContourLabelLoss(
            length_weight=length_weight, region_weight=region_weight, reduction=LossReduction.NONE, eps=eps
        )
        self.last_acwe: float = float("nan")
        self.last_label: float = float("nan")

    def forward(self, input: torch.Tensor, image: torch.Tensor, target: torch.Tensor,
                labelled: torch.Tensor | Sequence[bool]) -> torch.Tensor:
        """
        Args:
            input: raw network output ``f``, shape ``B1H[WD]``, floating point.
            image: intensities in ``[0, 1]``, the same shape, floating point.
            target: ground-truth masks, the same shape; only the labelled samples are read.
            labelled: one flag per sample, a bool tensor / sequence (or 0/1 integers) of length ``B``.

        Returns:
            A scalar for ``"mean"`` / ``"sum"``; a tensor of shape ``(B, 1, 1, 1[, 1])`` for ``"none"``.

        Raises:
            ValueError: bad shapes or dtypes (see the two component losses) or a ``labelled`` length other than
                ``B``.
        """
        acwe = self.acwe.per_image(input, image)
        _check_single_channel(input, target, "target")
        mask = _labelled_mask(labelled, input.shape[0], input.device)
        label = torch.zeros_like(acwe)
        if bool(mask.any()):
            label_lab = self.label.per_image(input[mask], target[mask.to(target.device)].to(input.device))
            label = label.index_put((mask.nonzero(as_tuple=True)[0],), label_lab.to(acwe.dtype))
        part_reduction = LossReduction.SUM.value if self.reduction == LossReduction.SUM.value else "mean"
        self.last_acwe = float(reduce(acwe.detach(), part_reduction, 1))
        self.last_label = float(reduce(label.detach(), part_reduction, 1))
        return reduce(acwe + self.alpha * label, self.reduction, input.ndim - 1)


class LabelOnlyLoss(_Loss):
    """``loss(pred, image, label, labelled)``: :class:`losses.ActiveContourLabelLoss` on the labelled samples only.

    Fine-tuning loss of the SPECT bundle's Modes 2 and 3 (no ACWE term). The sum over labelled samples is divided
    by the batch size for ``reduction="mean"`` (the convention of :class:`losses.ACWEWithLabelLoss`).
    """

    def __init__(self, reduction: str = "mean", **kwargs: Any) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        super().__init__(reduction=reduction)
        self.label = ActiveContourLabelLoss(reduction="none", **kwargs)
        self.last_label: float = float("nan")

    def forward(self, input: torch.Tensor, image: torch.Tensor, target: torch.Tensor, labelled: Any) -> torch.Tensor:
        mask = torch.as_tensor(labelled, dtype=torch.bool, device=input.device).reshape(-1)
        if not bool(mask.any()):
            total = input.sum() * 0.0
        else:
            total = self.label(input[mask], target[mask.to(target.device)].to(input.device)).sum()
        if self.reduction == "mean":
            total = total / input.shape[0]
        self.last_label = float(total.detach())
        return total
