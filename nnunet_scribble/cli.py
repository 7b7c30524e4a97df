"""``nnunet_scribble`` command line: one entry point with subcommands.

    nnunet_scribble simulate -i dense.nii.gz -o scribble.nii.gz --ignore_label 4 [--method skeleton] ...
    nnunet_scribble add-configs -d 501 --preset tiny
    nnunet_scribble dmsps-expand -d 501 -c 2d -f 0 -tr nnUNetTrainerDMSPS -o 502 [--tau 0.1] [--lcc slice]
    nnunet_scribble evaluate -pred PRED -ref REF [-l 1 2 3] [-o OUT]
    nnunet_scribble lcc -i PRED -o PRED_LCC [-np 2]   # keep the largest component per class
    nnunet_scribble demo [--output DIR]
    nnunet_scribble ext-trainer-dir        # for export nnUNet_extTrainer=...
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _simulate(args) -> int:
    from nnunet_scribble.scribble_simulation import simulate_scribble_file

    fraction = simulate_scribble_file(args.input, args.output, args.ignore_label, method=args.method,
                                      axis=args.axis, seed=args.seed,
                                      every_nth=args.every_nth, halvings=args.halvings)
    print(f"wrote {args.output}: {100 * fraction:.3f}% of voxels annotated")
    return 0


def _add_configs(args) -> int:
    from nnunet_scribble.plans import add_configurations, needs_preprocessing, plans_file_path

    plans_file = args.plans_file or plans_file_path(args.d, args.p)
    added = add_configurations(plans_file, args.preset, args.c)
    print(f"added configurations {added} to {plans_file}")
    if added and needs_preprocessing(args.preset):
        print(f"these have their own spacing; next: nnUNetv2_preprocess -d {args.d} -c {' '.join(added)}")
    return 0


def _dmsps_expand(args) -> int:
    from nnunet_scribble.pseudo_labels import dmsps_expand

    dmsps_expand(args.d, args.o, args.c, args.f, args.tr, plans_identifier=args.p, tau=args.tau,
                 lcc=args.lcc, checkpoint_name=args.chk, device=args.device, dataset_name=args.name,
                 merge_scribbles=args.merge_scribbles, overwrite=args.overwrite)
    return 0


def _lcc(args) -> int:
    from nnunet_scribble.postprocessing import apply_lcc_to_folder

    files = apply_lcc_to_folder(args.i, args.o, args.np)
    print(f"kept the largest component per class in {len(files)} predictions -> {args.o} "
          f"(rule saved as {os.path.join(args.o, 'postprocessing.pkl')} for nnUNetv2_apply_postprocessing)")
    return 0


def _ext_trainer_dir(args) -> int:
    print(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nnunet_ext"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from nnunet_scribble.scribble_simulation import AXIS_HELP, axis_argument

    parser = argparse.ArgumentParser(prog="nnunet_scribble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate scribbles from a dense label file")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ignore_label", type=int, required=True, help="ignore value = number of classes incl. background")
    p.add_argument("--method", default="interior_border", choices=("interior_border", "skeleton"))
    p.add_argument("--axis", type=axis_argument, default=0, help=AXIS_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every_nth", type=int, default=None, help="keep scribbles on every N-th slice only")
    p.add_argument("--halvings", type=int, default=0, help="shorten scribbles to 1/2^k (DMSPS)")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("add-configs", help="add small configurations (e.g. 2d_tiny) to a plans file")
    p.add_argument("-d", help="dataset id or name (with nnUNet_preprocessed set)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--plans_file", default=None, help="explicit plans file instead of -d/-p")
    p.add_argument("--preset", default="tiny")
    p.add_argument("-c", nargs="+", default=None,
                   help="base configurations, each must be in the plans (default: those of 2d, 3d_fullres and "
                        "3d_lowres that the plans have)")
    p.set_defaults(func=_add_configs)

    p = sub.add_parser("dmsps-expand", help="DMSPS stage 2: expand scribbles with a trained stage-1 model")
    p.add_argument("-d", required=True, help="source (scribble) dataset id or name")
    p.add_argument("-o", required=True, type=int, help="id of the new, expanded dataset")
    p.add_argument("-c", required=True, help="configuration of the stage-1 model")
    p.add_argument("-f", default="0", help="fold of the stage-1 model")
    p.add_argument("-tr", default="nnUNetTrainerDMSPS", help="trainer of the stage-1 model")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("--tau", type=float, default=None, help="entropy threshold (default 0.1 for 2d, 0.3 for 3d)")
    p.add_argument("--lcc", choices=("slice", "volume"), default=None,
                   help="largest connected component per slice or volume (default slice for 2d, volume for 3d)")
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("-device", default="cuda" if _cuda_available() else "cpu")
    p.add_argument("--name", default=None, help="name of the new dataset (default <source>Stage2)")
    p.add_argument("--merge_scribbles", action="store_true", help="keep the original scribbles in the expanded labels")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_dmsps_expand)

    p = sub.add_parser("evaluate", help="Dice/HD95/ASSD against dense labels", add_help=False)
    p.set_defaults(func=None)

    p = sub.add_parser("lcc", help="keep the largest connected component of every class (nnU-Net's function)")
    p.add_argument("-i", required=True, help="nnUNetv2_predict output folder")
    p.add_argument("-o", required=True, help="new output folder (must not exist)")
    p.add_argument("-np", type=int, default=2, help="number of processes")
    p.set_defaults(func=_lcc)

    p = sub.add_parser("demo", help="end-to-end demo on a small synthetic dataset", add_help=False)
    p.set_defaults(func=None)

    p = sub.add_parser("ext-trainer-dir", help="print the folder for nnUNet_extTrainer")
    p.set_defaults(func=_ext_trainer_dir)
    return parser


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "evaluate":
        from nnunet_scribble.evaluation import main as evaluate_main
        return evaluate_main(argv[1:])
    if argv and argv[0] == "demo":
        from nnunet_scribble.demo import main as demo_main
        return demo_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)
