"""Clicks to a 3D mask on the real CT liver, no training: Dice and seconds per per-image method.

The TotalSegmentator DICOM series of the real-data folder (512×512×20, 0.98×0.98×2 mm; ``VARSEG_REAL_DATA`` or
``../shared/data/real``) and its liver label (5, resampled onto the series); clicks simulated inside the liver on 3
axial slices (at 20, 50 and 80 % of its slice range, 4–8 clicks each, at least 10 px from the boundary, seed
``--seed``), HU window [-160, 240]; :class:`pipeline.selective.clicks.ClickSegmentation` with the lung bundle's
inference settings (``configs/inference.json``: ``per_image_settings``, ``propagation``, ``slicer``). Prints one JSON
line per method: ``value`` = seconds for the whole volume (clicked slices solved, then propagated; target <= 30 s on
2 cores), ``dice`` = volume Dice against the label, ``dice_clicked`` / ``dice_propagated`` = mean slice Dice of the
clicked / propagated slices, ``seconds_per_slice`` = mean seconds of one slice update (maps + solve on its box),
``baseline`` = seconds of the same method on one whole 512² clicked slice from the polygon of its clicks (maps +
solve, no box), ``ratio`` = ``seconds_per_slice / baseline``.

A second figure, ``clicks_real_3mm_tv``, runs TV with the same protocol on the 3 mm CT of the same folder
(``example_ct_sm.nii.gz``, 122×101×30, label ``example_seg.nii.gz``).

``--methods tv elastica dip`` (default ``tv elastica``; DIP trains a network per slice and takes minutes);
``--quick``: the clicked slices only, no propagation.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import emit, parser


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["tv", "elastica"], choices=["tv", "elastica", "dip"])
    args = p.parse_args()
    from pipeline.experiments.real_eval import label_on_grid
    from pipeline.io.volumes import read_volume
    from pipeline.paths import real_data_root
    from pipeline.selective.clicks import simulate_clicks

    root = real_data_root() / "a_liver_ct" / "totalsegmentator"
    if not (root / "example_ct_dicom").is_dir():
        raise SystemExit(f"real-data folder not found at {real_data_root()} (set VARSEG_REAL_DATA)")
    cases = [("", root / "example_ct_dicom", root / "example_seg_dicom.nii.gz", args.methods),
             ("3mm_", root / "example_ct_sm.nii.gz", root / "example_seg.nii.gz", ["tv"])]
    for prefix, image, label, methods in cases:
        volume = read_volume(image)
        liver = np.asarray(volume.to_ras(label_on_grid(label, volume)[0] == 5))
        hu = np.asarray(volume.to_ras(), dtype=np.float32)
        clicks = simulate_clicks(liver, (0.2, 0.5, 0.8), num_clicks=(4, 8), min_distance=10, seed=args.seed)
        for method in methods:
            _measure(f"clicks_real_{prefix}{method}", method, hu, liver, clicks, args.quick)


def _measure(figure: str, method: str, hu: np.ndarray, liver: np.ndarray, clicks: np.ndarray, quick: bool) -> None:
    from monai.bundle import ConfigParser

    from pipeline.evaluation.metrics import dice_jaccard
    from pipeline.paths import bundle_root

    clicked = set(np.flatnonzero(clicks.any(axis=(0, 1))).tolist())
    config = ConfigParser()
    config.read_config(str(Path(bundle_root("lung")) / "configs" / "inference.json"))
    config.update({"method": method, "window": [-160.0, 240.0], "progress": False, "propagate": not quick})
    segmenter = config.get_parsed_content("click_segmenter")
    whole = _whole_slice_seconds(segmenter, hu[:, :, min(clicked)], clicks[:, :, min(clicked)])
    start = time.perf_counter()
    result = segmenter(hu, clicks, case="liver")
    seconds = time.perf_counter() - start
    per_slice = {z: dice_jaccard(result.mask[:, :, z], liver[:, :, z])[0] for z in range(hu.shape[2])
                 if liver[:, :, z].any()}
    propagated = [d for z, d in per_slice.items() if z not in clicked]
    solved = [r.seconds for r in result.records if r.area > 0]
    emit(figure, seconds, "s", whole, ratio=float(np.mean(solved)) / whole,
         seconds_per_slice=float(np.mean(solved)), shape="x".join(map(str, hu.shape)),
         dice=dice_jaccard(result.mask, liver)[0] if not quick else None,
         dice_clicked=float(np.mean([per_slice[z] for z in sorted(clicked)])),
         dice_propagated=float(np.mean(propagated)) if propagated and not quick else None,
         clicks=int(clicks.sum()), slices_segmented=len(result.slices))


def _whole_slice_seconds(segmenter, hu: np.ndarray, clicks: np.ndarray) -> float:
    """Seconds of the maps and one solve on a whole slice from the polygon of its clicks (the per-image baseline)."""
    from transforms import polygon_mask

    start = time.perf_counter()
    sample = segmenter.slicer.from_slice(hu, markers=polygon_mask(np.argwhere(clicks), hu.shape))
    segmenter.solver(sample)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
