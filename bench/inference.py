"""2.5D inference of a 512×512×150 CT with each bundle's network, against MONAI BasicUNet eager fp32 on the same slices.

Prints one JSON line per network (``inference_lits``, ``inference_spect``, ``inference_lung``): ``value`` = achieved
GFLOP/s of the network on the fast path (``AdjacentSliceInferer(channels_last=True, autocast_dtype="bfloat16",
compile=True)`` under ``torch.inference_mode``; the one-off compilation is a timed warm-up, ``warmup_s``;
``--no-compile`` leaves it out), ``baseline`` = achieved GFLOP/s of ``monai.networks.nets.BasicUNet`` (2D, default
features, 3 input channels) in eager fp32 on the same slices, ``ratio`` = their quotient (target >= 2). FLOPs are
counted with ``torch.utils.flop_counter.FlopCounterMode`` on one batch. Extra keys: seconds per volume (fast path),
the network's own eager fp32 GFLOP/s, peak RSS of the process that ran it (each configuration runs in its own
subprocess; ``resource.getrusage(RUSAGE_SELF).ru_maxrss``), and the Dice between the fp32 and fast-path masks on
the phantom volume (trained weights from ``bundles/*/models`` when present, else random weights, as ``weights``
says). BasicUNet runs on the first ``baseline_slices`` slices only (its rate, not its time, is compared).
Networks as configured in each bundle's ``train.json``. ``--quick``: 64×64×6 volume, all configurations in one process.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import numpy as np
from _common import ROOT, emit, parser

NETWORKS = ("lits", "spect", "lung")
CHECKPOINTS = {"lits": "bundles/lits/models/model.pt", "spect": "bundles/spect/models/mode1/model.pt",
               "lung": "bundles/lung/models/m4/model.pt"}


def build(name: str):
    import torch
    from monai.networks.nets import BasicUNet

    from networks import RCNN, PolyphaseUNet, VMNet

    torch.manual_seed(0)
    if name == "lits":
        return PolyphaseUNet(spatial_dims=2, in_channels=3, out_channels=3, features=16, init="default"), 3
    if name == "spect":
        return RCNN(spatial_dims=2, in_channels=1, out_channels=1, features=16, num_blocks=3, steps=3), 1
    if name == "lung":
        return VMNet(spatial_dims=2, in_channels=2, out_channels=1, features=32, levels=4, bn_momentum=0.1), 2
    if name == "basicunet":
        return BasicUNet(spatial_dims=2, in_channels=3, out_channels=3), 3
    raise ValueError(f"unknown network {name!r}; choose one of {NETWORKS + ('basicunet',)}")


def volume(shape: tuple[int, int, int], channels: int, seed: int):
    """The CT phantom windowed to [0, 1], ``(1, channels, X, Y, Z)``; extra channels (lung guidance) are zeros."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from data_path import phantom_file

    from pipeline.io.volumes import read_nifti_array

    hu, _ = read_nifti_array(phantom_file((shape[0], shape[1], max(8, shape[2] * 4 // 3)), seed))
    image = torch.as_tensor(np.clip((hu[..., : shape[2]].astype(np.float32) + 124.0) / 400.0, 0.0, 1.0))
    x = torch.zeros((1, channels, *shape))
    x[0, 0] = image
    return x


def masks(name: str, out):
    if name in ("lits", "basicunet"):
        return out.argmax(dim=1)
    return out[:, 0] > (0.5 if name == "lung" else 0.0)


def dice(a, b) -> float:
    a, b = a.bool(), b.bool()
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def child(name: str, mode: str, shape: tuple[int, int, int], slices: int, seed: int, batch: int = 1) -> dict:
    """Run one configuration in this (sub)process and return its figures."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.inference.inferers import AdjacentSliceInferer
    from pipeline.io.files import load_weights

    network, channels = build(name)
    weights = "random"
    ckpt = ROOT / CHECKPOINTS.get(name, "-")
    if ckpt.is_file():
        try:
            load_weights(network, ckpt)
            weights = "trained"
        except RuntimeError:
            weights = "random"
    network.eval()
    k = 3 if name in ("lits", "basicunet") else 1
    x = volume(shape, channels // k, seed)[..., :slices]
    fast = mode in ("fast", "fast-eager")
    inferer = AdjacentSliceInferer(num_slices=k, batch_size=batch, divisible=16, channels_last=fast,
                                   autocast_dtype="bfloat16" if fast else None, compile=mode == "fast")
    with torch.inference_mode():
        probe = x[..., :batch]
        with FlopCounterMode(display=False) as counter:  # counted eagerly: a compiled graph hides its operators
            AdjacentSliceInferer(num_slices=k, batch_size=batch, divisible=16)(probe, network)
        flops_per_slice = counter.get_total_flops() / probe.shape[-1]
        start = time.perf_counter()
        inferer(probe, network)  # warm-up: thread pools, and the one-off compilation of the fast path
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        out = inferer(x, network)
        seconds = time.perf_counter() - start
        result = {"seconds": seconds, "gflops": flops_per_slice * slices / seconds / 1e9, "weights": weights,
                  "gflop_per_slice": flops_per_slice / 1e9, "warmup_s": warmup,
                  # high-water mark of this path alone: read before the fp32 reference of the Dice check runs
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
        if name != "basicunet":
            reference = out if not fast else AdjacentSliceInferer(num_slices=k, batch_size=batch)(x, network)
            result["dice"] = dice(masks(name, reference), masks(name, out)) if fast else 1.0
    result["peak_rss_with_reference_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return result


def run_child(name: str, mode: str, shape, slices: int, seed: int, batch: int, in_process: bool = False) -> dict:
    if in_process:
        return child(name, mode, shape, slices, seed, batch)
    cmd = [sys.executable, __file__, "--child", name, mode, "x".join(map(str, shape)), str(slices), str(seed),
           str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", check=False, cwd=str(ROOT))
    if done.returncode != 0:
        raise RuntimeError(f"inference child {name}/{mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    p.add_argument("--no-compile", action="store_true",
                   help="fast path without torch.compile (no C++ compiler, or a quicker smoke run)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="slices per network call, the same for every configuration and the baseline (default 1)")
    args = p.parse_args()
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    shape = (64, 64, 6) if args.quick else (512, 512, 150)  # data: 512x512x200 phantom file, first 150
    baseline_slices = shape[2] if args.quick else 8
    solo = args.quick  # quick: one process (peak RSS is then that of all configurations together)
    bs = args.batch_size
    base = run_child("basicunet", "fp32", shape, baseline_slices, args.seed, bs, solo)
    for name in args.networks:
        fp32 = run_child(name, "fp32", shape, baseline_slices, args.seed, bs, solo)
        fast = run_child(name, "fast-eager" if args.no_compile else "fast", shape, shape[2], args.seed, bs, solo)
        emit(f"inference_{name}", fast["gflops"], "GFLOP/s", base["gflops"], s_per_volume=fast["seconds"],
             shape="x".join(map(str, shape)), fp32_gflops=fp32["gflops"], gflop_per_slice=fast["gflop_per_slice"],
             peak_rss_mb=fast["peak_rss_mb"], peak_rss_with_reference_mb=fast.get("peak_rss_with_reference_mb"),
             baseline_peak_rss_mb=base["peak_rss_mb"], dice_fp32_vs_fast=fast["dice"],
             weights=fast["weights"], compiled=not args.no_compile, warmup_s=fast["warmup_s"],
             baseline_name="BasicUNet 2D eager fp32", baseline_slices=baseline_slices, batch_size=bs)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, net, mode, size, n, s, b = sys.argv
        print(json.dumps(child(net, mode, tuple(int(v) for v in size.split("x")), int(n), int(s), int(b))))
    else:
        main()
