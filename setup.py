"""nnunet_scribble: scribble-supervised trainers, converters and evaluation for nnU-Net v2.

Besides the packages, the wheel installs ONE file into nnU-Net's trainer folder,
``nnunetv2/training/nnUNetTrainer/nnunet_scribble_trainers.py`` (a re-export of our trainers), so that
``nnUNetv2_train -tr <our trainer>`` works without any environment variable. pip removes it again on
``pip uninstall nnunet_scribble`` (it is listed in our RECORD); no nnU-Net file is modified.
Do not use ``pip install -e .`` (editable installs cannot place that file); see README.
"""
from setuptools import setup

setup(
    name="nnunet_scribble",
    version="0.1.0",
    description="Scribble-supervised segmentation trainers (DMPLS, DMSPS, PS-Seg, pCE) for nnU-Net v2",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["nnunet_scribble", "dataset_conversion", "nnunetv2.training.nnUNetTrainer"],
    package_dir={"nnunetv2.training.nnUNetTrainer": "nnunet_scribble/_nnunet_ext"},
    package_data={"nnunet_scribble": ["_nnunet_ext/*.py"]},
    # CPU machines: install requirements-cpu.txt first and this package with --no-deps (README);
    # these are the dependencies for a plain `pip install .` on a CUDA machine.
    install_requires=[
        "nnunetv2>=2.8.1,<2.9",
        "dynamic-network-architectures>=0.4.4,<0.5",
        "batchgeneratorsv2>=0.3.2",
        "torch>=2.1.2,!=2.9.*",
        "numpy>=1.24",
        "scipy",
        "scikit-image>=0.19.3",
        "SimpleITK>=2.2.1",
        "connected-components-3d>=3.12",
        "h5py",
        "matplotlib",
    ],
    entry_points={
        "console_scripts": [
            "nnunet_scribble=nnunet_scribble.cli:main",
            "nnunet_scribble_demo=nnunet_scribble.demo:main",
            "nnunet_scribble_evaluate=nnunet_scribble.evaluation:main",
            "nnunet_scribble_convert_acdc=dataset_conversion.acdc:main",
            "nnunet_scribble_convert_btcv=dataset_conversion.btcv:main",
            "nnunet_scribble_convert_word=dataset_conversion.word:main",
            "nnunet_scribble_convert_dense=dataset_conversion.dense_to_scribble:main",
        ]
    },
)
