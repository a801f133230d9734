"""Mumford–Shah loss and its semi-supervised combination with cross-entropy.

Reference:

    Kim, B., Ye, J. C. (2020) Mumford–Shah Loss Functional for Image Segmentation With Deep Learning.
    IEEE Transactions on Image Processing 29, 1856–1866.

The softmax output ``y`` of a segmentation network is read as a set of soft characteristic functions (eqs. 10–11)
and plugged into the piecewise-constant Mumford–Shah functional (eq. 12) with per-class, per-channel centroids
(eq. 13). :class:`SemiSupervisedMumfordShahLoss` adds the cross-entropy of the labelled samples (eqs. 16–18).
:class:`BiasFieldMumfordShahLoss` is the bias-field variant (eqs. 19–20): one extra network output channel models a
smooth multiplicative bias ``b`` and the data term fits ``b·c_n``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .checks import check_reduction, compute_dtype, reduce

__all__ = ["BiasFieldMumfordShahLoss", "MumfordShahLoss", "SemiSupervisedMumfordShahLoss"]

def _check_input_image(input: torch.Tensor, image: torch.Tensor, input_name: str = "input") -> None:
    """Validate a ``BNH[WD]`` prediction against a ``BCH[WD]`` image.

    Raises:
        ValueError: wrong number of dimensions, non-floating dtype, empty channel or spatial axes, or batch / spatial
            shapes that differ between the two tensors.
    """
    if not isinstance(input, torch.Tensor) or not isinstance(image, torch.Tensor):
        raise ValueError(
            f"{input_name} and image must be torch.Tensor, got {type(input).__name__} and {type(image).__name__}."
        )
    if input.ndim not in (4, 5):
        raise ValueError(
            f"{input_name} must have shape BNHW or BNHWD (4 or 5 dimensions), got shape {tuple(input.shape)}."
        )
    if image.ndim != input.ndim:
        raise ValueError(
            f"image must have shape BCHW[D] with the same number of dimensions as {input_name}, got image shape "
            f"{tuple(image.shape)} and {input_name} shape {tuple(input.shape)}."
        )
    if not torch.is_floating_point(input):
        raise ValueError(f"{input_name} must be a floating-point tensor, got dtype {input.dtype}.")
    if not torch.is_floating_point(image):
        raise ValueError(f"image must be a floating-point tensor, got dtype {image.dtype}.")
    if input.shape[0] != image.shape[0] or input.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"{input_name} and image must have the same batch size and spatial shape, got {input_name} shape "
            f"{tuple(input.shape)} and image shape {tuple(image.shape)}."
        )
    if input.shape[1] < 1 or image.shape[1] < 1:
        raise ValueError(
            f"{input_name} and image need at least one channel, got {input_name} shape {tuple(input.shape)} and "
            f"image shape {tuple(image.shape)}."
        )
    if input.shape[0] < 1 or input[0, 0].numel() == 0:
        raise ValueError(f"{input_name} has an empty batch or spatial axis, shape {tuple(input.shape)}.")


def _mumford_shah_terms(y: torch.Tensor, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised data and total-variation terms of eq. (12), per image and per class.

    Args:
        y: soft characteristic functions, shape ``BNH[WD]``.
        x: image, shape ``BCH[WD]`` (same batch and spatial shape as ``y``).
        eps: added to the centroid denominators ``Σ_r y_{b,n}(r)`` only.

    Returns:
        ``(data, tv)``, each of shape ``(B, N)``:
        ``data[b, n] = Σ_c Σ_r (x_{b,c}(r) − c_{b,n,c})² y_{b,n}(r)`` with the centroids of eq. (13), and
        ``tv[b, n]`` the anisotropic L1 total variation of ``y_{b,n}`` (forward differences along every spatial axis,
        no padding).
    """
    b, n = y.shape[:2]
    c = x.shape[1]
    y_flat = y.reshape(b, n, -1)  # (B, N, P)
    x_flat = x.reshape(b, c, -1)  # (B, C, P)

    # eq. (13): c_{b,n,c} = Σ_r x_{b,c}(r) y_{b,n}(r) / Σ_r y_{b,n}(r)
    mass = y_flat.sum(dim=-1)  # (B, N)
    centroids = torch.einsum("bcp,bnp->bnc", x_flat, y_flat) / (mass + eps).unsqueeze(-1)  # (B, N, C)

    # Channel loop keeps the temporaries at (B, N, P) instead of (B, N, C, P).
    data = y_flat.new_zeros((b, n))
    for ch in range(c):
        residual = x_flat[:, ch].unsqueeze(1) - centroids[:, :, ch].unsqueeze(-1)  # (B, N, P)
        data = data + (residual.square() * y_flat).sum(dim=-1)

    tv = y_flat.new_zeros((b, n))
    for axis in range(2, y.ndim):
        tv = tv + torch.diff(y, dim=axis).abs().flatten(start_dim=2).sum(dim=-1)
    return data, tv


class MumfordShahLoss(_Loss):
    """Piecewise-constant Mumford–Shah loss of Kim & Ye (2020), eqs. (12)–(13), for 2D and 3D inputs.

    ``input`` (``BNH[WD]``) holds the class probabilities ``y_n`` — soft characteristic functions that sum to one
    over ``N`` (or logits with ``softmax=True``) — and ``image`` (``BCH[WD]``) the intensities ``x_c`` fed to the
    network. For every image ``b``, class ``n`` and image channel ``c`` the centroid is

        ``c_{b,n,c} = Σ_r x_{b,c}(r) y_{b,n}(r) / (Σ_r y_{b,n}(r) + eps)``                      (eq. 13)

    and the per-image, per-class energy is

        ``E_{b,n} = Σ_c Σ_r (x_{b,c}(r) − c_{b,n,c})² y_{b,n}(r) + tv_weight · TV(y_{b,n})``       (eq. 12)

    where ``TV`` is the anisotropic L1 total variation with forward differences and no padding, summed over every
    spatial axis (two in 2D, three in 3D): ``Σ|y[..., i+1, :] − y[..., i, :]| + Σ|y[..., :, j+1] − y[..., :, j]|
    (+ the depth axis)``. This is the authors' discretisation of the paper's ``λ Σ_n ∫|∇y_n|``, with their
    ``λ = 1e-3`` as the default ``tv_weight``. Centroids are per image (never pooled over the batch) and per input
    channel; gradients flow through them.

    Reductions (``C`` image channels, ``P`` pixels/voxels per image):

    - ``"sum"``: ``Σ_{b,n} E_{b,n}`` — eq. (12) in the summed form the authors train with.
    - ``"none"``: ``E_{b,n} / (C·P)`` as a tensor of shape ``(B, N, 1, 1[, 1])`` (per-element normalisation, so the
      values do not grow with the image size).
    - ``"mean"``: the mean of the ``"none"`` values, i.e. ``"sum" / (B·N·C·P)``.

    Weight mapping: a weight ``β_sum`` applied to the summed loss (as in the paper's ``L = α L_CE + β L_MS``) is
    reproduced with the mean reduction by ``β_mean = β_sum · B·N·C·P``. For example the paper's LiTS setting
    ``β = 1e-6`` with batch 4, ``N = 2`` classes, ``C = 3`` adjacent slices and 256×256 slices corresponds to
    ``β_mean = 1e-6 · 4·2·3·65536 ≈ 1.57``. ``tv_weight`` is the same in both forms (both terms are divided by the
    same factor).

    Half-precision inputs are computed in float32; otherwise the common dtype of ``input`` and ``image`` is used.

    Example:
        >>> loss = MumfordShahLoss(tv_weight=1e-3, softmax=True)
        >>> logits = torch.randn(2, 2, 32, 32, requires_grad=True)
        >>> image = torch.rand(2, 3, 32, 32)
        >>> loss(logits, image).backward()
    """

    def __init__(self, tv_weight: float = 1e-3, reduction: LossReduction | str = LossReduction.MEAN,
                 softmax: bool = False, eps: float = 1e-8) -> None:
        """
        Args:
            tv_weight: weight ``λ`` of the total-variation (contour length) term; must be ``>= 0``.
                Defaults to 1e-3, the value of the authors' code.
            reduction: {``"none"``, ``"mean"``, ``"sum"``}, see the class docstring. Defaults to ``"mean"``.
            softmax: if True, apply a softmax over the channel axis of ``input`` (which then holds logits).
                Requires ``N >= 2``. Defaults to False (``input`` already holds probabilities).
            eps: small constant added to the centroid denominators ``Σ_r y_{b,n}(r)`` only, so that a class with no
                mass gives a zero centroid instead of 0/0. It changes the value by a relative amount of about
                ``eps / Σ_r y_{b,n}(r)``. Must be ``>= 0``; 0 reproduces eq. (13) exactly. Defaults to 1e-8.

        Raises:
            ValueError: ``reduction`` not one of ``"none"``, ``"mean"``, ``"sum"``; negative ``tv_weight`` or ``eps``.

        Note:
            With ``softmax=False`` a single channel (``N = 1``) is accepted and treated as one soft region; its
            complement is *not* added. For a two-phase (Chan–Vese-like) loss from a foreground probability ``p``
            pass ``torch.cat([1 - p, p], dim=1)``. With ``softmax=True``, ``N = 1`` is rejected because the softmax
            of a single channel is identically one.
        """
        super().__init__(reduction=check_reduction(reduction))
        if not float(tv_weight) >= 0.0:
            raise ValueError(f"tv_weight must be a non-negative number, got {tv_weight!r}.")
        if not float(eps) >= 0.0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}.")
        self.tv_weight = float(tv_weight)
        self.softmax = bool(softmax)
        self.eps = float(eps)

    def _prepare(self, input: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input_image(input, image, "input")
        if self.softmax and input.shape[1] < 2:
            raise ValueError(
                f"softmax=True needs at least two channels in input (the softmax of one channel is constant), "
                f"got input shape {tuple(input.shape)}."
            )
        dtype = compute_dtype(input, image)
        y = input.to(dtype)
        x = image.to(dtype)
        if self.softmax:
            y = torch.softmax(y, dim=1)
        return y, x

    def _reduce(self, energy: torch.Tensor, num_channels: int, spatial: Sequence[int]) -> torch.Tensor:
        """Reduce per-(b, n) energies of shape ``(B, N)`` as described in the class docstring."""
        if self.reduction == LossReduction.SUM.value:
            return energy.sum()
        num_pixels = 1
        for s in spatial:
            num_pixels *= int(s)
        return reduce(energy / float(num_channels * num_pixels), self.reduction, len(spatial))

    def forward(self, input: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: class probabilities (or logits with ``softmax=True``), shape ``BNH[WD]``, floating point.
            image: intensities, shape ``BCH[WD]`` with the same ``B`` and spatial shape as ``input``, floating point.

        Returns:
            A scalar for ``"mean"`` / ``"sum"``; a tensor of shape ``(B, N, 1, 1[, 1])`` for ``"none"``.

        Raises:
            ValueError: ``input`` or ``image`` not 4D/5D, not floating point, with mismatched batch size or spatial
                shape, or ``softmax=True`` with a single channel.
        """
        y, x = self._prepare(input, image)
        data, tv = _mumford_shah_terms(y, x, self.eps)
        return self._reduce(data + self.tv_weight * tv, x.shape[1], y.shape[2:])

    def energies(self, input: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Unreduced energies ``data + tv_weight * tv`` per sample and class, shape ``(B, N)``, and the number of
        values each one sums over (``C`` image channels times the pixels), which ``"mean"`` divides by."""
        y, x = self._prepare(input, image)
        data, tv = _mumford_shah_terms(y, x, self.eps)
        return data + self.tv_weight * tv, int(x.shape[1] * y[0, 0].numel())

    def terms(self, input: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Data and (weighted) total-variation parts of the loss, each reduced like :meth:`forward`.

        Args:
            input: as in :meth:`forward`.
            image: as in :meth:`forward`.

        Returns:
            ``{"data": ..., "tv": ...}`` where ``"tv"`` already includes ``tv_weight``, so that
            ``terms["data"] + terms["tv"]`` equals ``forward(input, image)``.
        """
        y, x = self._prepare(input, image)
        data, tv = _mumford_shah_terms(y, x, self.eps)
        return {
            "data": self._reduce(data, x.shape[1], y.shape[2:]),
            "tv": self._reduce(self.tv_weight * tv, x.shape[1], y.shape[2:]),
        }


class SemiSupervisedMumfordShahLoss(_Loss):
    """Semi-supervised loss of Kim & Ye (2020), eqs. (16)–(18): ``L = α·L_CE + β·L_MS``.

    ``α = 1`` for a labelled sample and 0 otherwise. The cross-entropy (eq. 18) is computed from the logits on the
    labelled samples only; the Mumford–Shah term (:class:`MumfordShahLoss` on ``softmax(logits)``) on *all* samples,
    labelled or not.

    Which samples are labelled is given **explicitly** by the ``labelled`` argument of :meth:`forward`; it is never
    inferred from the label content. (The authors' code treated a slice as labelled iff ``max(label) != 0``, which
    turns labelled all-background slices into unlabelled ones; this class does not do that.) Targets of unlabelled
    samples are ignored completely — neither used nor validated — so any placeholder values may be passed there.

    Reductions of the total (``reduction``):

    - ``"mean"`` (eq. 18 and the authors' code): ``L_CE`` is the mean over all pixels of the labelled samples
      (with class weights, PyTorch's weighted mean ``Σ w_{g(i)} ℓ_i / Σ w_{g(i)}``), and the total is
      ``L_CE + beta · L_MS`` with ``L_MS`` reduced over the batch by ``ms_reduction``. Scalar.
    - ``"sum"``: as ``"mean"`` but ``L_CE`` is summed over the labelled pixels (``Σ w_{g(i)} ℓ_i``). Scalar.
    - ``"none"``: per-sample totals, shape ``(B,)``: ``α_b·L_CE,b + beta·L_MS,b`` where ``L_CE,b`` is the (weighted)
      mean over the pixels of sample ``b`` and ``L_MS,b`` is sample ``b``'s share of the Mumford–Shah term
      (``Σ_n E_{b,n}`` for ``ms_reduction="sum"``; the mean over ``n`` of ``E_{b,n}/(C·P)`` for ``"mean"``).

    If no sample of the batch is labelled the cross-entropy is a zero that stays attached to the graph, so the total
    equals ``beta · L_MS``.

    Weight mapping: the authors use a summed Mumford–Shah term with ``β = 1e-6`` (LiTS) next to a mean
    cross-entropy. With ``ms_reduction="mean"`` the same balance is ``beta = β_sum · B·N·C·P`` (≈ 1.57 for batch 4,
    ``N = 2``, ``C = 3``, 256×256); with ``ms_reduction="sum"`` use ``beta = β_sum`` directly.

    Example:
        >>> loss = SemiSupervisedMumfordShahLoss(beta=1.0)
        >>> logits = torch.randn(4, 2, 64, 64, requires_grad=True)
        >>> image = torch.rand(4, 3, 64, 64)
        >>> target = torch.randint(0, 2, (4, 1, 64, 64))
        >>> total = loss(logits, image, target, labelled=[True, False, False, True])
        >>> total.backward(); print(loss.last_ce, loss.last_ms)  # doctest: +SKIP
    """

    def __init__(self, beta: float = 1.0, tv_weight: float = 1e-3,
                 ms_reduction: LossReduction | str = LossReduction.MEAN,
                 ce_weight: Sequence[float] | torch.Tensor | None = None, ce_on_probabilities: bool = False,
                 reduction: LossReduction | str = LossReduction.MEAN, eps: float = 1e-8) -> None:
        """
        Args:
            beta: weight ``β`` of the Mumford–Shah term (``>= 0``). Its scale depends on ``ms_reduction``, see the
                class docstring. Defaults to 1.0.
            tv_weight: total-variation weight inside the Mumford–Shah term. Defaults to 1e-3 (authors' code).
            ms_reduction: ``"mean"`` or ``"sum"``, the reduction of the Mumford–Shah term over the batch
                (see :class:`MumfordShahLoss`). Defaults to ``"mean"``.
            ce_weight: optional per-class weights for the cross-entropy, a sequence of ``N`` non-negative numbers.
            ce_on_probabilities: if True, reproduce the authors' code: the cross-entropy is applied to the softmax
                probabilities clamped to ``[1e-10, 1]`` instead of to the logits, i.e. a second softmax is applied
                inside the cross-entropy. This is not eq. (18) (it bounds the per-pixel loss and weakens the
                gradients); use it only for reproduction. Defaults to False (eq. 18, cross-entropy on the logits).
            reduction: {``"none"``, ``"mean"``, ``"sum"``}, see the class docstring. Defaults to ``"mean"``.
            eps: centroid denominator constant of :class:`MumfordShahLoss`. Defaults to 1e-8.

        Raises:
            ValueError: invalid ``reduction`` / ``ms_reduction``, negative ``beta``, ``tv_weight`` or ``eps``, or
                ``ce_weight`` that is not a 1-D sequence of non-negative numbers.
        """
        super().__init__(reduction=check_reduction(reduction))
        ms_reduction = check_reduction(ms_reduction, "ms_reduction")
        if ms_reduction == LossReduction.NONE.value:
            raise ValueError(f"ms_reduction must be 'mean' or 'sum', got {ms_reduction!r}.")
        if not float(beta) >= 0.0:
            raise ValueError(f"beta must be a non-negative number, got {beta!r}.")
        self.beta = float(beta)
        self.ms_reduction = ms_reduction
        self.ce_on_probabilities = bool(ce_on_probabilities)
        self.ms_loss = MumfordShahLoss(tv_weight=tv_weight, reduction=LossReduction.SUM, softmax=False, eps=eps)
        weight = None
        if ce_weight is not None:
            weight = torch.as_tensor(ce_weight, dtype=torch.float32).detach().clone()
            if weight.ndim != 1 or weight.numel() < 1:
                raise ValueError(f"ce_weight must be a 1-D sequence of per-class weights, got {ce_weight!r}.")
            if not bool(torch.all(torch.isfinite(weight))) or bool(torch.any(weight < 0)):
                raise ValueError(f"ce_weight must hold finite non-negative numbers, got {ce_weight!r}.")
        self.register_buffer("ce_weight", weight)
        self.ce_weight: torch.Tensor | None
        self.last_ce: float = float("nan")
        self.last_ms: float = float("nan")

    @property
    def tv_weight(self) -> float:
        """Total-variation weight of the Mumford–Shah term."""
        return self.ms_loss.tv_weight

    @staticmethod
    def _labelled_mask(labelled: torch.Tensor | Sequence[bool], batch: int, device: torch.device) -> torch.Tensor:
        mask = torch.as_tensor(labelled, device=device)
        if mask.ndim == 2 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.ndim != 1 or mask.shape[0] != batch:
            raise ValueError(
                f"labelled must hold one flag per sample (length {batch}), got shape {tuple(mask.shape)}."
            )
        if mask.dtype != torch.bool:
            if torch.is_floating_point(mask) or torch.is_complex(mask) or bool(torch.any((mask != 0) & (mask != 1))):
                raise ValueError(f"labelled must hold booleans (or 0/1 integers), got {labelled!r}.")
            mask = mask.bool()
        return mask

    @staticmethod
    def _target_indices(target: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return the labelled samples' targets as int64 class indices of shape ``(L, H, W[, D])``."""
        if not isinstance(target, torch.Tensor):
            raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}.")
        spatial = tuple(logits.shape[2:])
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if target.shape[0] != logits.shape[0] or tuple(target.shape[1:]) != spatial:
            raise ValueError(
                f"target must have shape (B, 1, *spatial) or (B, *spatial) matching logits, got target shape "
                f"{tuple(target.shape)} and logits shape {tuple(logits.shape)}."
            )
        if torch.is_complex(target):
            raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}.")
        target = target[mask.to(target.device)]
        if target.numel() == 0:
            return target.long()
        if torch.is_floating_point(target) and not bool(torch.all(target == torch.round(target))):
            raise ValueError("target must hold integer class indices; got non-integral values in a labelled sample.")
        num_classes = logits.shape[1]
        t_min, t_max = target.min().item(), target.max().item()
        if t_min < 0 or t_max > num_classes - 1:
            raise ValueError(
                f"target values of labelled samples must lie in [0, {num_classes - 1}] (N = {num_classes} classes), "
                f"got values in [{t_min}, {t_max}]."
            )
        return target.long()

    def forward(self, logits: torch.Tensor, image: torch.Tensor, target: torch.Tensor,
                labelled: torch.Tensor | Sequence[bool]) -> torch.Tensor:
        """
        Args:
            logits: raw network output (before the softmax), shape ``BNH[WD]`` with ``N >= 2``.
            image: network input intensities, shape ``BCH[WD]`` with the same ``B`` and spatial shape.
            target: class indices, shape ``B1H[WD]`` or ``BH[WD]``; integer tensors, or floating tensors holding
                integers. Values of labelled samples must lie in ``[0, N − 1]``; unlabelled samples are ignored.
            labelled: one flag per sample, a bool tensor / sequence (or 0/1 integers) of length ``B``.

        Returns:
            The total loss: a scalar for ``"mean"`` / ``"sum"``, shape ``(B,)`` for ``"none"``. The unweighted parts
            are stored as floats in ``last_ce`` (cross-entropy term; for ``"none"`` its mean over the labelled
            samples, 0 if there are none) and ``last_ms`` (Mumford–Shah term reduced over the batch by
            ``ms_reduction``, before multiplying by ``beta``).

        Raises:
            ValueError: bad shapes or dtypes, fewer than two classes, a ``labelled`` length different from ``B``,
                target values outside ``[0, N − 1]``, or a ``ce_weight`` length different from ``N``.
        """
        _check_input_image(logits, image, "logits")
        batch, num_classes = logits.shape[:2]
        if num_classes < 2:
            raise ValueError(f"logits need at least two channels (classes), got shape {tuple(logits.shape)}.")
        mask = self._labelled_mask(labelled, batch, logits.device)
        target_lab = self._target_indices(target, logits, mask).to(logits.device)
        weight = self.ce_weight
        if weight is not None and weight.numel() != num_classes:
            raise ValueError(f"ce_weight has {weight.numel()} entries but logits have N = {num_classes} classes.")
        probs = torch.softmax(logits.to(compute_dtype(logits, image)), dim=1)
        ms_per_sample, ms_total = self._mumford_shah(probs, image)
        if weight is not None:
            weight = weight.to(device=probs.device, dtype=probs.dtype)
        ce_input = probs if self.ce_on_probabilities else logits.to(probs.dtype)
        if self.ce_on_probabilities:
            ce_input = torch.clamp(ce_input, 1e-10, 1.0)
        ce_input = ce_input[mask]
        zero = logits.sum() * 0.0
        self.last_ms = float(ms_total.detach())
        if self.reduction == LossReduction.NONE.value:
            ce_per_sample = self._ce_per_sample(ce_input, target_lab, weight, mask, zero.expand(batch).to(probs.dtype))
            return ce_per_sample + self.beta * ms_per_sample
        if ce_input.shape[0] > 0:
            ce = F.cross_entropy(ce_input, target_lab, weight=weight, reduction=self.reduction)
        else:
            ce = zero.to(probs.dtype)
        self.last_ce = float(ce.detach())
        return ce + self.beta * ms_total

    def _mumford_shah(self, probs: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Mumford–Shah term on all samples: per sample ``(B,)`` and reduced by ``ms_reduction``."""
        energy, count = self.ms_loss.energies(probs, image)  # (B, N)
        if self.ms_reduction == LossReduction.SUM.value:
            per_sample = energy.sum(dim=1)
            return per_sample, per_sample.sum()
        per_sample = (energy / float(count)).mean(dim=1)
        return per_sample, per_sample.mean()

    def _ce_per_sample(self, ce_input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                       mask: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (eq. 18) per sample for ``reduction="none"``: the labelled ones' (weighted) mean, else 0."""
        per_sample = zeros.clone()
        if ce_input.shape[0] == 0:
            self.last_ce = 0.0
            return per_sample
        pixel_ce = F.cross_entropy(ce_input, target, weight=weight, reduction="none")
        numer = pixel_ce.flatten(start_dim=1).sum(dim=1)
        if weight is None:
            denom = torch.full_like(numer, float(pixel_ce[0].numel()))
        else:
            denom = weight[target].flatten(start_dim=1).sum(dim=1)
        self.last_ce = float((numer / denom).mean().detach())
        return per_sample.index_put((mask.nonzero(as_tuple=True)[0],), numer / denom)


_BIAS_ACTIVATIONS = ("softplus", "exp", "none")


def _bias_field_terms(
    y: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unnormalised terms of eq. (19) with the bias-weighted centroids of eq. (20).

    Args:
        y: soft characteristic functions, shape ``BNH[WD]``.
        bias: positive bias field, shape ``B1H[WD]`` (one field for every image channel) or ``BCH[WD]`` (one per
            channel).
        x: image, shape ``BCH[WD]``.
        eps: added to the centroid denominators ``Σ_r b(r)² y_{b,n}(r)`` only.

    Returns:
        ``(data, tv, bias_tv)``: ``data[b, n] = Σ_c Σ_r (x_{b,c}(r) − b_{b,c}(r) c_{b,n,c})² y_{b,n}(r)`` with
        ``c_{b,n,c} = Σ_r b_{b,c} x_{b,c} y_{b,n} / (Σ_r b_{b,c}² y_{b,n} + eps)``, shape ``(B, N)``; ``tv[b, n]`` the
        anisotropic L1 total variation of ``y_{b,n}``, shape ``(B, N)``; ``bias_tv[b]`` the anisotropic L1 total
        variation of the bias field, summed over its channels, shape ``(B,)``.
    """
    b, n = y.shape[:2]
    c = x.shape[1]
    y_flat = y.reshape(b, n, -1)  # (B, N, P)
    x_flat = x.reshape(b, c, -1)  # (B, C, P)
    bias_flat = bias.reshape(b, bias.shape[1], -1)  # (B, 1 or C, P)

    data = y_flat.new_zeros((b, n))
    for ch in range(c):
        b_ch = bias_flat[:, min(ch, bias_flat.shape[1] - 1)]  # (B, P)
        x_ch = x_flat[:, ch]  # (B, P)
        # eq. (20): c_{b,n,c} = Σ_r b x y_n / Σ_r b² y_n
        numerator = torch.einsum("bp,bnp->bn", b_ch * x_ch, y_flat)
        denominator = torch.einsum("bp,bnp->bn", b_ch.square(), y_flat)
        centroids = numerator / (denominator + eps)  # (B, N)
        residual = x_ch.unsqueeze(1) - b_ch.unsqueeze(1) * centroids.unsqueeze(-1)  # (B, N, P)
        data = data + (residual.square() * y_flat).sum(dim=-1)

    tv = y_flat.new_zeros((b, n))
    bias_tv = y_flat.new_zeros((b,))
    for axis in range(2, y.ndim):
        tv = tv + torch.diff(y, dim=axis).abs().flatten(start_dim=2).sum(dim=-1)
        bias_tv = bias_tv + torch.diff(bias, dim=axis).abs().flatten(start_dim=1).sum(dim=-1)
    return data, tv, bias_tv


class BiasFieldMumfordShahLoss(MumfordShahLoss):
    """Mumford–Shah loss with a bias field, Kim & Ye (2020) eqs. (19)–(20) (the image model ``x = b·J + n``, eq. 5).

    The network predicts ``N`` class channels and one extra, **positive** bias channel ``b`` (the bias output is not
    softmaxed). With the Li et al. (2011) local term reduced to a delta kernel, the loss of one image is

        ``L = Σ_n Σ_c Σ_r (x_c(r) − b(r) c_{n,c})² y_n(r) + λ Σ_n TV(y_n) + γ TV(b)``          (eq. 19)

    with the bias-weighted centroids, computed per image, class and image channel (gradients flow through them):

        ``c_{n,c} = Σ_r b(r) x_c(r) y_n(r) / (Σ_r b(r)² y_n(r) + eps)``                           (eq. 20)

    ``TV`` is the anisotropic L1 total variation of :class:`MumfordShahLoss` (forward differences along every spatial
    axis, no padding); ``λ = tv_weight`` (default 1e-3, the authors' code for eq. 12) and ``γ = bias_tv_weight``.
    With ``b ≡ 1`` the centroids and the data term are exactly those of :class:`MumfordShahLoss` and the bias term
    vanishes, so the two losses agree.

    Input layout: ``input`` is ``(B, N + K, H, W[, D])``; the first ``N`` channels are class probabilities (or logits
    with ``softmax=True``), the last ``K`` channels are the raw bias output. ``K = 1`` (default, the paper's single
    bias channel) applies one field to every image channel; ``per_channel_bias=True`` expects ``K = C`` (one field
    per image channel, e.g. per MR modality, since each sequence has its own bias). The positive field is
    ``b = activation(raw) + bias_eps`` with ``bias_activation`` ``"softplus"`` (default), ``"exp"``, or ``"none"``
    (the raw channel already is ``b``; then ``bias_eps`` is still added).

    Choices where the paper leaves it open (METHODS A-MS-10; no public code exists for this variant): ``b`` is
    ``softplus(extra channel) + ε`` (the paper only says the channel comes "before the softmax"); ``γ`` (symbol and
    value lost in the paper, "a fixed parameter") is configurable with the placeholder default 1e-3; the bias TV is
    anisotropic L1 like the length term.

    Reductions (``C`` image channels, ``P`` pixels/voxels, ``N`` classes). Per image and class the energy is
    ``E_{b,n} = data_{b,n} + λ·TV(y_{b,n}) + γ·TV(b_b)/N`` (the bias term is shared equally among the classes so
    that ``Σ_n E_{b,n}`` is eq. 19 for image ``b``):

    - ``"sum"``: ``Σ_{b,n} E_{b,n}`` — eq. (19) summed over the batch, as the authors' losses are.
    - ``"none"``: ``E_{b,n} / (C·P)``, shape ``(B, N, 1, 1[, 1])``.
    - ``"mean"``: the mean of the ``"none"`` values, ``"sum" / (B·N·C·P)``; weights map between the two as for
      :class:`MumfordShahLoss` (``β_mean = β_sum·B·N·C·P``; ``λ`` and ``γ`` are the same in both).

    Example:
        >>> loss = BiasFieldMumfordShahLoss(softmax=True, bias_tv_weight=1e-3)
        >>> output = torch.randn(2, 3, 32, 32, requires_grad=True)  # 2 class logits + 1 bias channel
        >>> image = torch.rand(2, 1, 32, 32)
        >>> loss(output, image).backward()
    """

    def __init__(self, tv_weight: float = 1e-3, bias_tv_weight: float = 1e-3,
                 reduction: LossReduction | str = LossReduction.MEAN, softmax: bool = False,
                 bias_activation: str = "softplus", bias_eps: float = 1e-6, per_channel_bias: bool = False,
                 eps: float = 1e-8) -> None:
        """
        Args:
            tv_weight: weight ``λ`` of the length (TV) term on the class maps, ``>= 0``. Defaults to 1e-3.
            bias_tv_weight: weight ``γ`` of the TV penalty on the bias field, ``>= 0``. Defaults to 1e-3 (placeholder,
                the paper's value is lost).
            reduction: {``"none"``, ``"mean"``, ``"sum"``}, see the class docstring. Defaults to ``"mean"``.
            softmax: apply a softmax over the ``N`` class channels (which then hold logits); requires ``N >= 2``.
            bias_activation: ``"softplus"``, ``"exp"`` or ``"none"``: how the raw bias channel becomes positive.
            bias_eps: added to the activated bias so that it stays strictly positive, ``>= 0``. Defaults to 1e-6.
            per_channel_bias: one bias channel per image channel instead of one shared field. Defaults to False.
            eps: added to the centroid denominators ``Σ_r b² y_n`` only, ``>= 0``. Defaults to 1e-8.

        Raises:
            ValueError: invalid ``reduction`` or ``bias_activation``; negative ``tv_weight``, ``bias_tv_weight``,
                ``bias_eps`` or ``eps``.
        """
        super().__init__(tv_weight=tv_weight, reduction=reduction, softmax=softmax, eps=eps)
        if not float(bias_tv_weight) >= 0.0:
            raise ValueError(f"bias_tv_weight must be a non-negative number, got {bias_tv_weight!r}.")
        if not float(bias_eps) >= 0.0:
            raise ValueError(f"bias_eps must be a non-negative number, got {bias_eps!r}.")
        if bias_activation not in _BIAS_ACTIVATIONS:
            raise ValueError(f"bias_activation must be one of {list(_BIAS_ACTIVATIONS)}, got {bias_activation!r}.")
        self.bias_tv_weight = float(bias_tv_weight)
        self.bias_activation = bias_activation
        self.bias_eps = float(bias_eps)
        self.per_channel_bias = bool(per_channel_bias)

    def _split(self, input: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class maps ``y`` (``BNH[WD]``), positive bias ``b`` (``BKH[WD]``) and image ``x`` in the compute dtype."""
        _check_input_image(input, image, "input")
        k = image.shape[1] if self.per_channel_bias else 1
        n = input.shape[1] - k
        if n < 1 or (self.softmax and n < 2):
            raise ValueError(
                f"input needs {'at least two' if self.softmax else 'at least one'} class channel(s) plus {k} bias "
                f"channel(s) ({'one per image channel' if self.per_channel_bias else 'the last channel'}), got input "
                f"shape {tuple(input.shape)} for image shape {tuple(image.shape)}."
            )
        dtype = compute_dtype(input, image)
        y, raw = input.to(dtype)[:, :n], input.to(dtype)[:, n:]
        if self.softmax:
            y = torch.softmax(y, dim=1)
        if self.bias_activation == "softplus":
            raw = F.softplus(raw)
        elif self.bias_activation == "exp":
            raw = torch.exp(raw)
        return y, raw + self.bias_eps, image.to(dtype)

    def _energy_parts(self, input: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-(b, n) data, weighted class TV and shared weighted bias TV, plus C and the spatial shape."""
        y, bias, x = self._split(input, image)
        data, tv, bias_tv = _bias_field_terms(y, bias, x, self.eps)
        shared = (self.bias_tv_weight * bias_tv / y.shape[1]).unsqueeze(1).expand_as(data)
        return data, self.tv_weight * tv, shared, x.shape[1], y.shape[2:]

    def forward(self, input: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: ``N`` class channels (probabilities, or logits with ``softmax=True``) followed by the raw bias
                channel(s), shape ``B(N+K)H[WD]``, floating point.
            image: intensities, shape ``BCH[WD]`` with the same ``B`` and spatial shape, floating point.

        Returns:
            A scalar for ``"mean"`` / ``"sum"``; a tensor of shape ``(B, N, 1, 1[, 1])`` for ``"none"``.

        Raises:
            ValueError: ``input`` or ``image`` not 4D/5D, not floating point, mismatched batch size or spatial shape,
                or too few channels for the classes and the bias.
        """
        data, tv, bias_tv, channels, spatial = self._energy_parts(input, image)
        return self._reduce(data + tv + bias_tv, channels, spatial)

    def terms(self, input: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Data, weighted class-TV and weighted bias-TV parts, each reduced like :meth:`forward`.

        Returns:
            ``{"data": ..., "tv": ..., "bias_tv": ...}``; their sum equals ``forward(input, image)``.
        """
        data, tv, bias_tv, channels, spatial = self._energy_parts(input, image)
        return {name: self._reduce(value, channels, spatial)
                for name, value in (("data", data), ("tv", tv), ("bias_tv", bias_tv))}

    def bias_field(self, input: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The positive bias field ``b`` of a network output (its last ``K`` channels), shape ``BKH[WD]``.

        Args:
            input: as in :meth:`forward`.
            image: as in :meth:`forward` (it fixes ``K`` when ``per_channel_bias`` is set).
        """
        return self._split(input, image)[1]
