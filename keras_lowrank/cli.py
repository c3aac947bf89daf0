"""Command line: ``keras-lowrank demo --output DIR``."""

import argparse
import sys


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-lowrank",
        description="Low-rank structure for Keras models: the main job.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train a CNN with and without the LR layer on real data and "
                     "report accuracy, ranks and noise robustness")
    demo.add_argument("--output", default="runs/demo",
                      help="folder for results (must be new or empty unless --overwrite)")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace a non-empty --output folder (when the run succeeds)")
    demo.add_argument("--dataset", default="digits", choices=["digits", "mnist1d"])
    demo.add_argument("--epochs", type=int, default=40)
    demo.add_argument("--rank", type=int, default=10, help="target rank of the LR layer")
    demo.add_argument("--projection-weight", type=float, default=None,
                      help="λ_c of the LR layer (default: the layer's, 0.5 for the relative "
                           "loss, 1 for the paper's)")
    demo.add_argument("--lr-loss", choices=["relative", "paper"], default="relative",
                      help="the LR layer's projection loss (docs/methods.md §1)")
    demo.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    demo.add_argument("--dlrt-datasets", nargs="*", default=["digits", "mnist1d"],
                      choices=["digits", "mnist1d"],
                      help="datasets for the DLRT table (none: skip it)")
    demo.add_argument("--dlrt-epochs", type=int, default=20)
    demo.add_argument("--analysis-datasets", nargs="*", default=["digits", "mnist1d"],
                      choices=["digits", "mnist1d"],
                      help="datasets for the CKA maps and the selectivity sweep "
                           "(none: skip them)")
    demo.add_argument("--analysis-epochs", type=int, default=20)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # Every argument checked before any training: a bad one costs no time.
    for flag in ("epochs", "dlrt_epochs", "analysis_epochs", "rank"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be ≥ 1, got {getattr(args, flag)}")
    from keras_lowrank._validation import check_number

    weights = [] if args.projection_weight is None else [args.projection_weight]
    for flag, values in (("projection-weight", weights),
                         ("sigmas", args.sigmas)):
        for value in values:
            try:
                check_number(value, f"--{flag}", minimum=0.0)
            except ValueError as error:
                parser.error(str(error).replace("`", ""))
    if not args.seeds:
        parser.error("--seeds needs at least one seed")
    from keras_lowrank._files import check_output_folder

    try:
        check_output_folder(args.output, args.overwrite, "--output")
    except (FileExistsError, ValueError) as error:
        parser.error(str(error).replace("`--output`", "--output").replace(
            "overwrite=True (--overwrite)", "--overwrite"))
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    # predict_on_batch retraces once per batch shape; TF warns about it at length.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from keras_lowrank_experiments.demo import run_demo  # imports Keras: keep --help fast

    run_demo(args.output, dataset=args.dataset, epochs=args.epochs, rank=args.rank,
             projection_weight=args.projection_weight, lr_loss=args.lr_loss,
             sigmas=args.sigmas,
             seeds=tuple(args.seeds), dlrt_datasets=tuple(args.dlrt_datasets),
             dlrt_epochs=args.dlrt_epochs, analysis_datasets=tuple(args.analysis_datasets),
             analysis_epochs=args.analysis_epochs, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
