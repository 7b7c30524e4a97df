"""Data-augmentation transforms for sparse labels."""
from __future__ import annotations

from typing import List

import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from torch.nn.functional import interpolate, one_hot


class ScribblePreservingDownsampleSegForDS(DownsampleSegForDSTransform):
    """Deep-supervision target downsampling that keeps thin scribbles.

    nnU-Net's ``nearest-exact`` downsampling treats the ignore label as an ordinary value, so a
    one-voxel-wide scribble disappears at half resolution whenever it falls between the sampled
    voxels. Here a low-resolution voxel is annotated if *any* voxel of its block is annotated, and
    takes the most frequent annotated class of the block (area interpolation of the one-hot map of
    annotated classes). Blocks without annotation stay ``ignore_label``.
    """

    def __init__(self, ds_scales, ignore_label: int):
        super().__init__(ds_scales)
        self.ignore_label = ignore_label

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> List[torch.Tensor]:
        results = []
        onehot = None
        for s in self.ds_scales:
            if not isinstance(s, (tuple, list)):
                s = [s] * (segmentation.ndim - 1)
            if all(i == 1 for i in s):
                results.append(segmentation)
                continue
            if onehot is None:
                # channels 0..ignore: the ignore channel is dropped so it never wins the vote
                onehot = one_hot(segmentation[0].long().clamp_min(0), self.ignore_label + 1)
                onehot = onehot.movedim(-1, 0)[:self.ignore_label][None].float()
            new_shape = [round(i * j) for i, j in zip(segmentation.shape[1:], s)]
            counts = interpolate(onehot, new_shape, mode="area")[0]
            best = counts.argmax(0)
            best[counts.amax(0) <= 0] = self.ignore_label
            results.append(best[None].to(segmentation.dtype))
        return results


def out_of_image_to_ignore(transforms, ignore_label: int) -> int:
    """Make nnU-Net's out-of-image voxels ignore instead of background, in place; returns how many
    ``RemoveLabelTransform(-1, 0)`` were replaced by ``RemoveLabelTransform(-1, ignore_label)``.

    nnU-Net marks voxels outside the image with -1 (cropping to the nonzero region, padding in the spatial
    augmentation) and maps them to background. With dense labels that is harmless; with scribbles it adds
    far more "background" voxels than the scribbles have in total (on ACDC 2D patches, ~12 000 padded
    voxels per slice against ~600 scribbled ones), so the partial CE learns mostly "background".
    """
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

    replaced = 0
    for i, t in enumerate(transforms.transforms):
        if isinstance(t, RemoveLabelTansform) and t.label_value == -1 and t.set_to == 0:
            transforms.transforms[i] = RemoveLabelTansform(-1, ignore_label, t.segmentation_channels)
            replaced += 1
    return replaced
