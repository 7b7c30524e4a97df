"""How many scribble voxels survive nnU-Net's deep-supervision target downsampling?

    python benchmarks/ds_scribble_survival.py [--data ../shared/data] [--out benchmarks/results/ds_scribble_survival.md]

For every slice of the real ACDC expert scribbles (2D, as the 2d configuration sees them) this applies
nnU-Net's ``DownsampleSegForDSTransform`` (nearest-exact) and our ``ScribblePreservingDownsampleSegForDS``
at the deep-supervision scales 1/2 ... 1/16 and reports, per scale, the fraction of low-resolution voxels
that carry a label and the fraction of slices (with scribbles) that lose every annotation of a class.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnunet_scribble.transforms import ScribblePreservingDownsampleSegForDS  # noqa: E402

SCALES = [1.0, 0.5, 0.25, 0.125, 0.0625]
IGNORE = 4


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ds_scribble_survival.md"))
    args = p.parse_args(argv)
    files = sorted((Path(args.data) / "acdc_scribble_h5").glob("*.h5"))
    ds_scales = [[s, s] for s in SCALES]
    transforms = {"nnU-Net nearest-exact": DownsampleSegForDSTransform(ds_scales),
                  "scribble-preserving (ours)": ScribblePreservingDownsampleSegForDS(ds_scales, IGNORE)}
    annotated = {k: np.zeros(len(SCALES)) for k in transforms}
    voxels = np.zeros(len(SCALES))
    class_lost = {k: np.zeros(len(SCALES)) for k in transforms}
    class_slices = 0
    for f in files:
        with h5py.File(f, "r") as h:
            scribble = h["scribble"][:]
        for sl in scribble:
            h_, w_ = (sl.shape[0] // 16) * 16, (sl.shape[1] // 16) * 16  # nnU-Net patches are divisible
            seg = torch.from_numpy(sl[:h_, :w_].astype(np.int16))[None]
            present = [c for c in range(IGNORE) if (seg == c).any()]
            class_slices += len(present)
            for name, t in transforms.items():
                outs = t._apply_to_segmentation(seg)
                for i, o in enumerate(outs):
                    annotated[name][i] += int((o != IGNORE).sum())
                    class_lost[name][i] += sum(int(not (o == c).any()) for c in present)
                    if name.startswith("nnU-Net"):
                        voxels[i] += o.numel()
    lines = [f"ACDC expert scribbles, {len(files)} volumes, every slice cropped to a multiple of 16; "
             f"{class_slices} (slice, class) pairs with scribbles.", "",
             "| scale | " + " | ".join(f"annotated % ({k})" for k in transforms) + " | " +
             " | ".join(f"(slice, class) pairs lost ({k})" for k in transforms) + " |",
             "|---|" + "---|" * (2 * len(transforms))]
    for i, s in enumerate(SCALES):
        lines.append(f"| 1/{int(round(1 / s))} | " +
                     " | ".join(f"{100 * annotated[k][i] / voxels[i]:.3f}" for k in transforms) + " | " +
                     " | ".join(f"{100 * class_lost[k][i] / class_slices:.1f}%" for k in transforms) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
