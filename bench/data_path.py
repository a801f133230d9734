"""Data path: load + HU window + adjacent-slice stacking of a 512×512×200 int16 ``.nii.gz`` CT, against nibabel.

Prints one JSON line: ``value`` = seconds of :func:`pipeline.io.volumes.read_nifti_array` (ISA-L inflate, no copy)
followed by :func:`pipeline.io.datapath.window_stack` (window [-124, 276] → [0, 1], k = 3 adjacent slices per sample as
a strided view); ``baseline`` = seconds of nibabel's plain decode ``np.asanyarray(nib.load(path).dataobj)`` of the
same file. Also: the MONAI route the bundles' training configs use today (``LoadImage`` + ``HUWindow`` +
``StackAdjacentSlices``, ``monai_s``), and a check that the fast path gives the same samples (``max_abs_diff``).
The phantom file is written once to ``bench/out/`` (git-ignored). ``--quick``: 128×128×24.
"""

from __future__ import annotations

import numpy as np
from _common import OUT, ct_phantom, emit, parser, timed


def phantom_file(shape: tuple[int, int, int], seed: int) -> str:
    import nibabel as nib

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"ct_{'x'.join(map(str, shape))}_seed{seed}.nii.gz"
    if not path.exists():
        volume, _, affine = ct_phantom(shape, seed)
        tmp = path.with_name(".tmp-" + path.name)
        nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), str(tmp))
        tmp.replace(path)
    return str(path)


def main() -> None:
    args = parser(__doc__).parse_args()
    import nibabel as nib
    from monai.transforms import LoadImage

    from pipeline.io.datapath import window_stack
    from pipeline.io.volumes import read_nifti_array
    from transforms import HUWindow, StackAdjacentSlices

    shape = (128, 128, 24) if args.quick else (512, 512, 200)
    path = phantom_file(shape, args.seed)
    repeats = args.repeats or 3

    def fast():
        array, _ = read_nifti_array(path)
        return window_stack(array, -124.0, 276.0, 3)

    def monai_route():
        image = LoadImage(image_only=True, ensure_channel_first=True)(path)
        return StackAdjacentSlices(3)(HUWindow(-124.0, 276.0)(image))

    t_nib, decoded = timed(lambda: np.asanyarray(nib.load(path).dataobj), repeats, warmup=1)
    t_fast, stacked = timed(fast, repeats, warmup=1)
    t_monai, reference = timed(monai_route, 1)
    diff = float((stacked - reference.float()).abs().max())
    emit("data_path", t_fast, "s", t_nib, shape="x".join(map(str, shape)), baseline_name="nibabel decode",
         monai_s=t_monai, max_abs_diff=diff, decoded_mb=decoded.nbytes / 1e6)


if __name__ == "__main__":
    main()
