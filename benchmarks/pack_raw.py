"""Lossless, compact copy of an nnU-Net raw dataset folder, for a machine the data cannot otherwise reach.

    python benchmarks/pack_raw.py pack RAW_DATASET_FOLDER OUT_FOLDER [--parts 2]
    python benchmarks/pack_raw.py unpack OUT_FOLDER/part*.npz.xz RAW_DATASET_FOLDER

The GPU machines lent to this project take at most 64 MiB of files per call and reach nothing else. The ACDC
images converted from the WSL4MIS h5 files are float32 with a few hundred distinct values per volume
(intensities scaled to [0, 1] from integers), which gzip stores poorly. ``pack`` keeps each image as the sorted
table of its distinct values and a uint8/uint16 index into it (the float32 array itself where a volume has
more than 65536 values), with its spacing, origin and direction; every other file (label files, json) is kept
byte for byte. The entries are spread over ``--parts`` xz-compressed files of similar size (one per device
call where one call cannot carry them all). ``unpack`` writes the folder back: the images as .nii.gz with
exactly the original voxel values and geometry, the other files unchanged. It refuses to write into an
existing folder and writes through a temporary folder, so a failed unpack leaves nothing half-written. The
voxel values, dtype, spacing, origin and direction are kept; other NIfTI header fields of the images are not.
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import shutil
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np


def _is_image(path: Path) -> bool:
    return path.parent.name.startswith("images") and path.name.endswith(".nii.gz")


def _encode_image(path: Path) -> dict:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    table, index = np.unique(array, return_inverse=True)
    arrays = {"table": table, "index": index.reshape(array.shape).astype(np.uint8 if len(table) <= 256 else np.uint16)}
    if len(table) > 65536:
        arrays = {"array": array}
    geometry = np.array([*image.GetSpacing(), *image.GetOrigin(), *image.GetDirection()], dtype=np.float64)
    return dict(arrays, geometry=geometry)


def pack(raw: Path, out: Path, parts: int = 1) -> List[Path]:
    raw, out = Path(raw), Path(out)
    if parts < 1:
        raise SystemExit(f"--parts must be at least 1, not {parts}")
    if not (raw / "dataset.json").is_file():
        raise SystemExit(f"{raw} is not an nnU-Net raw dataset folder (no dataset.json)")
    files = sorted(p for p in raw.rglob("*") if p.is_file())
    entries = []
    for f in files:
        rel = f.relative_to(raw).as_posix()
        arrays = _encode_image(f) if _is_image(f) else {"bytes": np.frombuffer(f.read_bytes(), dtype=np.uint8)}
        entries.append((rel, arrays, sum(a.nbytes for a in arrays.values())))
    groups: List[list] = [[] for _ in range(parts)]
    sizes = [0] * parts
    for entry in sorted(entries, key=lambda e: -e[2]):   # largest first, each into the smallest part so far
        k = int(np.argmin(sizes))
        groups[k].append(entry)
        sizes[k] += entry[2]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("part*.npz.xz"):   # an earlier pack's parts would be unpacked with these
        stale.unlink()
    written = []
    for k, group in enumerate(groups):
        arrays = {"names": np.array(json.dumps([{"path": rel, "kind": sorted(a)} for rel, a, _ in group]))}
        for i, (_, a, _) in enumerate(group):
            arrays.update({f"{i}_{key}": value for key, value in a.items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        target = out / f"part{k}.npz.xz"
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=6))
        os.replace(tmp, target)
        written.append(target)
    return written


def unpack(parts: Sequence[Path], raw: Path) -> Path:
    import SimpleITK as sitk

    raw = Path(raw)
    if raw.exists():
        raise SystemExit(f"{raw} exists: unpack writes a new folder")
    if not parts:
        raise SystemExit("no part files given")
    tmp = raw.with_name(raw.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    seen = set()
    try:
        tmp.mkdir(parents=True)
        for part in parts:
            with np.load(io.BytesIO(lzma.decompress(Path(part).read_bytes())), allow_pickle=False) as data:
                for i, entry in enumerate(json.loads(str(data["names"]))):
                    if entry["path"] in seen:
                        raise SystemExit(f"{entry['path']} is in more than one part: parts of different packs?")
                    seen.add(entry["path"])
                    _write_entry(data, i, entry["kind"], tmp / entry["path"], sitk)
        if not (tmp / "dataset.json").is_file():
            raise SystemExit("the parts hold no dataset.json: not every part of the pack was given")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)   # nothing half-written is left behind
        raise
    os.replace(tmp, raw)
    return raw


def _write_entry(data, i: int, kind: list, target: Path, sitk) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == ["bytes"]:
        target.write_bytes(data[f"{i}_bytes"].tobytes())
        return
    array = data[f"{i}_array"] if "array" in kind else data[f"{i}_table"][data[f"{i}_index"]]
    geometry = data[f"{i}_geometry"]
    image = sitk.GetImageFromArray(array)
    d = array.ndim
    image.SetSpacing(geometry[:d].tolist())
    image.SetOrigin(geometry[d:2 * d].tolist())
    image.SetDirection(geometry[2 * d:].tolist())
    sitk.WriteImage(image, str(target), True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack")
    a.add_argument("raw")
    a.add_argument("out")
    a.add_argument("--parts", type=int, default=1)
    b = sub.add_parser("unpack")
    b.add_argument("parts", nargs="+")
    b.add_argument("raw")
    args = p.parse_args(argv)
    if args.command == "pack":
        for f in pack(Path(args.raw), Path(args.out), args.parts):
            print(f"{f} {f.stat().st_size / 2**20:.1f} MiB")
    else:
        print(unpack([Path(x) for x in args.parts], Path(args.raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
