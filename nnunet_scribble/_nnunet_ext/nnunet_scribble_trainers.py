"""nnunet_scribble trainers, made visible to nnU-Net's trainer lookup.

This one file is installed twice by ``pip install nnunet_scribble``:
* into ``nnunetv2/training/nnUNetTrainer/`` so that ``nnUNetv2_train -tr`` and ``nnUNetv2_predict -tr``
  find our trainers with no extra step (non-package modules there are imported before nnU-Net's
  subpackages, so the lookup succeeds before it reaches modules that need timm/torchvision);
* inside ``nnunet_scribble/_nnunet_ext/`` for the documented ``nnUNet_extTrainer`` route
  (``export nnUNet_extTrainer="$(python -m nnunet_scribble ext-trainer-dir)"``), e.g. for editable
  nnU-Net installs.
It must never raise: nnU-Net imports it during every trainer lookup.
"""
try:
    from nnunet_scribble.trainers import *  # noqa: F401,F403
except ImportError as e:  # pragma: no cover - only when nnunet_scribble itself is broken or uninstalled
    import warnings

    warnings.warn(f"nnunet_scribble trainers unavailable: {e}")
