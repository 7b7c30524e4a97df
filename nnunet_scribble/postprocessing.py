"""Largest-connected-component post-processing of predictions, with nnU-Net's own functions.

Scribble-trained models often predict scattered false positives far from the annotated region (the
scribbles say nothing about most of the image). The scribble literature removes them by keeping the
largest connected component of every class (PyMIC ``KeepLargestComponent``, METHODS.md §3). nnU-Net
has exactly this operation (``remove_all_but_largest_component_from_segmentation``), but decides per class
whether to apply it by cross-validating on *dense* validation labels (``nnUNetv2_find_best_configuration``),
which a scribble dataset does not have. Here it is applied unconditionally to every foreground class,
through nnU-Net's ``apply_postprocessing_to_folder``; the same rule is written as a ``postprocessing.pkl``
that ``nnUNetv2_apply_postprocessing -pp_pkl_file`` accepts.

    nnunet_scribble lcc -i pred -o pred_lcc [-np 2]   # also writes pred_lcc/postprocessing.pkl
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

from nnunetv2.postprocessing.remove_connected_components import (apply_postprocessing_to_folder,
                                                                 remove_all_but_largest_component_from_segmentation)


def foreground_labels(dataset_json: dict) -> List[int]:
    """Foreground class values of a dataset.json (neither background nor ignore); region datasets are refused."""
    labels = dataset_json["labels"]
    if any(not isinstance(v, int) for v in labels.values()):
        raise ValueError("region-based datasets are not supported by the LCC post-processing")
    return sorted(v for k, v in labels.items() if k not in ("background", "ignore"))


def lcc_postprocessing(labels: Sequence[int]) -> Tuple[List[Callable], List[dict]]:
    """nnU-Net's (pp_fns, pp_fn_kwargs): keep the largest component of each class, the rest -> background."""
    if not labels:
        raise ValueError("no foreground label to post-process")
    fns = [remove_all_but_largest_component_from_segmentation] * len(labels)
    return fns, [{"labels_or_regions": int(c)} for c in labels]


def write_lcc_postprocessing_pkl(path, labels: Sequence[int]) -> None:
    """A postprocessing.pkl for ``nnUNetv2_apply_postprocessing -pp_pkl_file``."""
    with open(path, "wb") as f:
        pickle.dump(lcc_postprocessing(labels), f)


def apply_lcc_to_folder(input_folder, output_folder, num_processes: int = 2) -> List[str]:
    """Post-process every prediction of an ``nnUNetv2_predict`` output folder (which holds the dataset.json
    and plans.json that nnU-Net copies there). Written to a temporary folder and moved into place at the
    end, so a failure never leaves a half-written output. Returns the processed file names."""
    src, dst = Path(input_folder), Path(output_folder)
    for name in ("dataset.json", "plans.json"):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} is missing: is {src} an nnUNetv2_predict output folder?")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; remove it or choose another output folder")
    dataset_json = json.loads((src / "dataset.json").read_text())
    files = sorted(p.name for p in src.glob("*" + dataset_json["file_ending"]))
    if not files:
        raise FileNotFoundError(f"no *{dataset_json['file_ending']} prediction in {src}")
    fns, kwargs = lcc_postprocessing(foreground_labels(dataset_json))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        apply_postprocessing_to_folder(str(src), str(tmp), fns, kwargs, str(src / "plans.json"),
                                       dataset_json, num_processes)
        missing = [f for f in files if not (tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"post-processing wrote no output for {missing}")
        for name in ("dataset.json", "plans.json"):
            shutil.copy(src / name, tmp / name)
        write_lcc_postprocessing_pkl(tmp / "postprocessing.pkl", foreground_labels(dataset_json))
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files
