"""Volume predictors of the bundles for batch inference: ``predict(volume, entry) -> mask``.

Each predictor takes a :class:`pipeline.io.volumes.Volume` (or a list of them, one per modality, sharing one geometry)
and returns an integer mask with the first volume's shape, in that volume's own voxel order, so
:func:`pipeline.io.volumes.write_mask` can save it in the input's exact geometry. Inside, every predictor works on the
RAS-reoriented array exactly like the bundles' MONAI pipelines did (``LoadImaged`` → ``Orientationd("RAS")`` →
intensity transform → :class:`pipeline.inference.inferers.AdjacentSliceInferer` → post-processing → ``Invertd``):

* :func:`lits_predictor`: fixed HU window, 2.5D polyphase U-Net, softmax, argmax, class → label map;
* :func:`brats_predictor`: per-modality z-score inside the brain (or clip already z-scored input), 2.5D polyphase
  U-Net over ``modalities × num_slices`` channels, softmax, argmax, class → label map;
* :func:`spect_predictor`: percentile intensity scaling, 2D RCNN, ``logit > 0``;
* :class:`SelectivePredictor`: the lung (selective) VM-Net on every axial slice that holds clicks from the case's
  markers file (``entry["markers"]``).

Checkpoints are loaded by :meth:`load` (called once by :func:`pipeline.inference.batch.execute` after it has checked
that the file exists), so building a predictor from a config never touches the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io.files import load_weights

logger = logging.getLogger(__name__)

__all__ = [
    "ClickPredictor",
    "SelectivePredictor",
    "SlicePredictor",
    "brats_predictor",
    "click_volume",
    "lits_predictor",
    "segment_selective",
    "spect_predictor",
]


def _as_list(volume: Any) -> list[Any]:
    return list(volume) if isinstance(volume, (list, tuple)) else [volume]


def _case(volume: Any, entry: Mapping[str, Any] | None) -> str:
    if entry is not None and entry.get("case"):
        return str(entry["case"])
    return str(getattr(volume, "case", "case"))


class SlicePredictor:
    """2.5D: RAS array → intensity transform → :class:`AdjacentSliceInferer` → labels → own voxel order.

    Args:
        network: the 2D network (``in_channels`` = modalities × ``num_slices``).
        ckpt_path: checkpoint loaded by :meth:`load`; None keeps the network's current weights.
        intensity: ``intensity(image, source) -> image`` on the channel-first RAS tensor ``(C, X, Y, Z)``.
        postprocess: ``postprocess(output) -> labels`` from the network output ``(N, X, Y, Z)`` to an integer
            tensor ``(X, Y, Z)``.
        num_slices: adjacent slices per channel.
        batch_size: slices per forward pass.
        divisible: pad in-plane size to a multiple of this for the network.
        device: where the network runs.
        progress: show a progress bar over slice batches.
        inferer: an :class:`AdjacentSliceInferer` to use instead of one built from the three arguments above.
    """

    def __init__(self, network: torch.nn.Module, ckpt_path: str | Path | None,
                 intensity: Callable[[torch.Tensor, str], torch.Tensor],
                 postprocess: Callable[[torch.Tensor], torch.Tensor], num_slices: int = 3, batch_size: int = 32,
                 divisible: int = 16, device: str | torch.device = "cpu", progress: bool = False,
                 inferer: Any = None) -> None:
        from pipeline.inference.inferers import AdjacentSliceInferer

        self.network = network
        self.ckpt_path = ckpt_path
        self.intensity = intensity
        self.postprocess = postprocess
        self.device = torch.device(device)
        self.inferer = inferer if inferer is not None else AdjacentSliceInferer(
            num_slices=num_slices, batch_size=batch_size, divisible=divisible, progress=progress)

    def load(self) -> None:
        """Load the checkpoint (if any) and put the network in eval mode on its device."""
        if self.ckpt_path is not None:
            load_weights(self.network, self.ckpt_path, self.device)
        self.network.to(self.device).eval()

    def __call__(self, volume: Any, entry: Mapping[str, Any] | None = None) -> np.ndarray:
        """Mask of ``volume`` (a Volume or a list of them) in the first volume's own voxel order."""
        volumes = _as_list(volume)
        first = volumes[0]
        image = torch.stack([torch.as_tensor(np.ascontiguousarray(v.to_ras()), dtype=torch.float32)
                             for v in volumes])
        image = self.intensity(image, f"case '{_case(first, entry)}'")
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        image = image.to(torch.float32)
        self.network.eval()
        with torch.no_grad():
            output = self.inferer(image[None].to(self.device), self.network)
        labels = self.postprocess(output[0]).to("cpu").numpy()
        return np.ascontiguousarray(first.from_ras(labels.astype(np.uint8)))


def lits_predictor(network: torch.nn.Module, ckpt_path: str | Path | None,
                   hu_window: Sequence[float] = (-124.0, 276.0), num_slices: int = 3, batch_size: int = 32,
                   target_labels: Sequence[int] = (0, 0, 1), device: str | torch.device = "cpu", divisible: int = 16,
                   inferer: Any = None) -> SlicePredictor:
    """The LiTS predictor: HU window → [0, 1], 2.5D network, softmax, argmax, class ``c`` → ``target_labels[c]``.

    The same steps as the former ``inference.json`` pipeline (``HUWindowd``, ``Activationsd(softmax)``,
    ``AsDiscreted(argmax)``, ``MapLabelValued``), so the masks are identical. ``inferer`` (the config's) replaces
    the one built from ``num_slices``, ``batch_size`` and ``divisible``.
    """
    from transforms import HUWindow

    window = HUWindow(a_min=float(hu_window[0]), a_max=float(hu_window[1]))
    lut = torch.as_tensor([int(t) for t in target_labels], dtype=torch.int64)

    def _intensity(image: torch.Tensor, source: str) -> torch.Tensor:
        return window(image, source=source)

    def _post(output: torch.Tensor) -> torch.Tensor:
        if output.shape[0] != len(lut):
            raise RuntimeError(f"the network gives {output.shape[0]} classes but target_labels has {len(lut)}")
        probabilities = torch.softmax(output, dim=0)
        classes = torch.argmax(probabilities, dim=0)
        return lut.to(classes.device)[classes]

    return SlicePredictor(network, ckpt_path, _intensity, _post, num_slices=num_slices, batch_size=batch_size,
                          divisible=divisible, device=device, inferer=inferer)


def brats_predictor(network: torch.nn.Module, ckpt_path: str | Path | None,
                    modalities: Sequence[str] = ("t1", "t1ce", "t2", "flair"), already_normalized: bool = False,
                    clip: float | Sequence[float] | None = 10.0, num_slices: int = 3, batch_size: int = 32,
                    target_labels: Sequence[int] = (0, 1), device: str | torch.device = "cpu", divisible: int = 16,
                    inferer: Any = None) -> SlicePredictor:
    """The BraTS predictor: per-modality normalisation, 2.5D network, softmax, argmax, class ``c`` → label.

    The volumes come in the order of ``modalities`` (one :class:`pipeline.io.volumes.Volume` each, sharing one
    geometry). Each is z-scored inside the brain ("any modality > 0"), or only clipped when the input is
    ``already_normalized`` (e.g. the DeepMedic copy of BraTS 2015), as :class:`transforms.NormalizeModalitiesd`
    does in training. ``target_labels[c]`` is the saved label of class ``c`` (default: 1 = complete tumour).
    """
    from transforms import NormalizeModalities

    normalize = NormalizeModalities(list(modalities), already_normalized=already_normalized, clip=clip)
    lut = torch.as_tensor([int(t) for t in target_labels], dtype=torch.int64)

    def _intensity(image: torch.Tensor, source: str) -> torch.Tensor:
        return torch.as_tensor(normalize(image, source=source))

    def _post(output: torch.Tensor) -> torch.Tensor:
        if output.shape[0] != len(lut):
            raise RuntimeError(f"the network gives {output.shape[0]} classes but target_labels has {len(lut)}")
        return lut.to(output.device)[torch.argmax(torch.softmax(output, dim=0), dim=0)]

    return SlicePredictor(network, ckpt_path, _intensity, _post, num_slices=num_slices, batch_size=batch_size,
                          divisible=divisible, device=device, inferer=inferer)


def spect_predictor(network: torch.nn.Module, ckpt_path: str | Path | None,
                    intensity_percentiles: Sequence[float] = (0.0, 99.5), num_slices: int = 1, batch_size: int = 64,
                    device: str | torch.device = "cpu", divisible: int = 1, inferer: Any = None) -> SlicePredictor:
    """The SPECT predictor: percentile scaling to [0, 1] (clipped), 2D RCNN per slice, mask = ``output > 0``.

    The same steps as the former ``inference.json`` pipeline (``ScaleIntensityRangePercentilesd``, ``x > 0``).
    ``inferer`` (the config's) replaces the one built from ``num_slices``, ``batch_size`` and ``divisible``.
    """
    from monai.transforms import ScaleIntensityRangePercentiles

    scale = ScaleIntensityRangePercentiles(lower=float(intensity_percentiles[0]), upper=float(intensity_percentiles[1]),
                                           b_min=0.0, b_max=1.0, clip=True)

    def _intensity(image: torch.Tensor, source: str) -> torch.Tensor:
        return scale(image)

    def _post(output: torch.Tensor) -> torch.Tensor:
        return (output[0] > 0).to(torch.uint8)

    return SlicePredictor(network, ckpt_path, _intensity, _post, num_slices=num_slices, batch_size=batch_size,
                          divisible=divisible, device=device, inferer=inferer)


# ----------------------------------------------------------------------------------------------------------------
# Selective (clicks)
# ----------------------------------------------------------------------------------------------------------------


def click_volume(volume: Any, markers_path: str | Path, markers_space: str | None = None) -> np.ndarray:
    """The clicks of ``markers_path`` as a ``uint8`` volume in the voxel order of ``volume``.

    The markers (CSV or 3D Slicer ``.mrk.json``, voxel or RAS/LPS coordinates) are mapped to voxels with the volume's
    RAS affine (:func:`transforms.read_markers`).

    Raises:
        CaseError: markers outside the image (e.g. a markers file of another image), an unreadable markers file or
            markers that are not 3D.
    """
    from pipeline.io.volumes import CaseError
    from transforms import read_markers

    shape = tuple(np.asarray(volume.array).shape)
    try:
        points = read_markers(markers_path, image_affine=np.asarray(volume.affine, dtype=np.float64),
                              space=markers_space, spatial_shape=shape)
    except (ValueError, OSError, KeyError) as err:
        text = " ".join(str(err).split())
        if "outside" in text:
            raise CaseError(f"markers outside the image: {text}") from None
        raise CaseError(f"unusable markers file: {text}") from None
    if points.ndim != 2 or points.shape[1] != 3:
        raise CaseError(f"markers file {Path(markers_path).name} holds 2D points; 3D coordinates are needed")
    clicks = np.zeros(shape, dtype=np.uint8)
    clicks[tuple(points.T)] = 1
    return clicks


def segment_selective(volume: Any, markers_path: str | Path, predict: Callable[[Mapping[str, Any]], np.ndarray],
                      slicer: Any, markers_space: str | None = None, case: str | None = None) -> np.ndarray:
    """Segment the object marked in ``markers_path`` on a :class:`pipeline.io.volumes.Volume`, clicked slices only.

    The clicks (:func:`click_volume`) are grouped by axial slice of the RAS-reoriented volume, each slice holding
    clicks is segmented by ``predict(sample)``, and the mask comes back in the volume's own voxel order.

    Raises:
        CaseError: markers outside the image, an unreadable markers file or markers that are not 3D.
    """
    case = case or str(getattr(volume, "case", "case"))
    clicks = click_volume(volume, markers_path, markers_space)
    data_ras = np.asarray(volume.to_ras(), dtype=np.float32)
    clicks_ras = np.asarray(volume.to_ras(clicks))
    mask_ras = np.zeros(data_ras.shape, dtype=np.uint8)
    for z in np.flatnonzero(clicks_ras.any(axis=(0, 1))):
        pts = np.argwhere(clicks_ras[:, :, z] > 0)
        sample = slicer.from_slice(data_ras[:, :, z], points=pts, case=case, slice_index=int(z))
        mask_ras[:, :, z] = np.asarray(predict(sample), dtype=bool)
    return np.ascontiguousarray(np.asarray(volume.from_ras(mask_ras)).astype(np.uint8))


class ClickPredictor:
    """Clicks to a whole 3D mask with no trained network (``varseg infer lung --method tv|elastica|dip``).

    ``entry["markers"]`` (set by :func:`pipeline.inference.batch.run_batch` from ``--markers``) is the case's markers
    file; the volume is reoriented to RAS, segmented by a :class:`pipeline.selective.clicks.ClickSegmentation`
    (clicked slices, then propagated through the structure) and the mask comes back in the volume's voxel order.

    Args:
        segmenter: the :class:`pipeline.selective.clicks.ClickSegmentation`.
        markers_space: coordinate system of CSV ``x,y,z`` markers (``"RAS"``, ``"LPS"`` or ``"voxel"``).
    """

    needs_markers = True

    def __init__(self, segmenter: Any, markers_space: str | None = None) -> None:
        self.segmenter = segmenter
        self.markers_space = markers_space or None
        self.last_result: Any = None

    def load(self) -> None:
        """Nothing to load: the per-image models are solved on each input."""

    def __call__(self, volume: Any, entry: Mapping[str, Any] | None = None) -> np.ndarray:
        from pipeline.io.volumes import CaseError

        volume = _as_list(volume)[0]
        case = _case(volume, entry)
        markers = (entry or {}).get("markers")
        if not markers:
            raise CaseError("no markers file for this case (pass --markers <file or folder>)")
        clicks_ras = np.asarray(volume.to_ras(click_volume(volume, markers, self.markers_space)))
        try:
            result = self.segmenter(np.asarray(volume.to_ras(), dtype=np.float32), clicks_ras, case=case)
        except ValueError as err:
            raise CaseError(" ".join(str(err).split())) from None
        self.last_result = result
        stops = [f"slice {r.slice}: {r.stop}" for r in result.records if r.stop]
        logger.info("%s: %d slices segmented (%s); propagation stopped at %s", case, len(result.slices),
                    f"{min(result.slices)}-{max(result.slices)}" if result.slices else "none", "; ".join(stops) or "-")
        return np.ascontiguousarray(np.asarray(volume.from_ras(result.mask.astype(np.uint8))).astype(np.uint8))


class SelectivePredictor:
    """The lung (selective) predictor: a trained VM-Net on the clicked slices of each case.

    ``entry["markers"]`` (set by :func:`pipeline.inference.batch.run_batch` from ``--markers``) is the case's markers
    file.

    Args:
        network: the VM-Net.
        ckpt_path: its checkpoint (loaded by :meth:`load`).
        guidance: ``"polygon"`` or ``"geodesic"`` (second network input).
        slicer: a :class:`pipeline.selective.samples.SelectiveSlices` (window, geodesic, edge and fitting settings).
        divisible: pad slices to a multiple of this.
        device: where the network runs.
        markers_space: coordinate system of CSV ``x,y,z`` markers (``"RAS"``, ``"LPS"`` or ``"voxel"``).
        sample_predict: optional ``predict(sample) -> 2D mask`` used instead of the network (tests, baselines).
    """

    needs_markers = True

    def __init__(self, network: torch.nn.Module | None, ckpt_path: str | Path | None, guidance: str, slicer: Any,
                 divisible: int = 16, device: str | torch.device = "cpu", markers_space: str | None = None,
                 sample_predict: Callable[[Mapping[str, Any]], np.ndarray] | None = None) -> None:
        self.network = network
        self.ckpt_path = ckpt_path
        self.guidance = guidance
        self.slicer = slicer
        self.divisible = int(divisible)
        self.device = device
        self.markers_space = markers_space or None
        self._predict = sample_predict

    def load(self) -> None:
        """Load the VM-Net checkpoint (nothing to do with a ``sample_predict``)."""
        if self._predict is not None:
            return
        from pipeline.selective.evaluation import predict_mask
        from pipeline.selective.samples import loader_samples

        if self.network is None:
            raise RuntimeError("SelectivePredictor needs a network or a sample_predict")
        if self.ckpt_path is not None:
            load_weights(self.network, self.ckpt_path, self.device)
        network, guidance, divisible, device = self.network, self.guidance, self.divisible, self.device

        def _predict(sample: Mapping[str, Any]) -> np.ndarray:
            return predict_mask(network, loader_samples([sample], guidance)[0], divisible, device)

        self._predict = _predict

    def __call__(self, volume: Any, entry: Mapping[str, Any] | None = None) -> np.ndarray:
        from pipeline.io.volumes import CaseError

        if self._predict is None:
            self.load()
        case = _case(_as_list(volume)[0], entry)
        markers = (entry or {}).get("markers")
        if not markers:
            raise CaseError(f"no markers file for this case (pass --markers <file or folder>)")
        return segment_selective(_as_list(volume)[0], markers, self._predict, self.slicer,
                                 markers_space=self.markers_space, case=case)
