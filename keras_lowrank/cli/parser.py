"""The command line: ``keras-lowrank compress | evaluate | analyze | demo``.

Every argument is checked before Keras is imported or any work starts; bad input
ends with one line on stderr and exit status 2. Each subcommand writes its
folder (``--output``) whole or not at all, and refuses a non-empty one unless
``--overwrite``.
"""

import argparse
import importlib.util
import math
import os
import sys
import textwrap

DATA_HELP = ("digits, mnist1d (offline), mnist, fashion_mnist, cifar10, cifar100, "
             "cifar10_corrupted/<corruption>_<1..5> (TensorFlow Datasets, with --data-dir), or an .npz "
             "file holding x and y (and optionally x_test, y_test; without them the last 20 %% of x "
             "is the test split)")

EXAMPLES = {
    "compress": """
        keras-lowrank compress model.keras --data digits --output runs/small
        keras-lowrank compress model.keras --data my_data.npz --rank 16 --finetune-epochs 3 \\
            --formats keras saved_model tflite --output runs/small
    """,
    "evaluate": """
        keras-lowrank evaluate model.keras --data digits --output runs/robust
        keras-lowrank evaluate model.keras --data cifar10 --data-dir ~/tensorflow_datasets \\
            --attacks pgd:0.031 autoattack:0.031 --noise 0.05 0.1 --corruptions 3 --limit 1000 \\
            --output runs/robust
    """,
    "analyze": """
        keras-lowrank analyze model.keras --data digits --output runs/analysis
        keras-lowrank analyze model.keras --compare other.keras --data my_data.npz \\
            --layers conv_1 conv_2 features --output runs/analysis
    """,
    "demo": """
        keras-lowrank demo --output runs/demo                 # ≤ 3 minutes on 2 CPU cores
        keras-lowrank demo --full --output runs/demo_full     # the 3-seed tables (~15 minutes)
    """,
}


def _whole(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {value}")
        return value
    return parse


_positive_int, _count = _whole(1), _whole(0)


def _finite(minimum=None, strict=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or (minimum is not None and (value <= minimum if strict else value < minimum)):
            bound = "" if minimum is None else f" {'>' if strict else '≥'} {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text}")
        return value
    return parse


def _severity(text):
    value = _positive_int(text)
    if value > 5:
        raise argparse.ArgumentTypeError(f"severities are 1..5, got {value}")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as the one line the docs promise (argparse prints the
    usage first): ``keras-lowrank COMMAND: error: …; see … --help``, exit 2."""

    def error(self, message):
        message = " ".join(str(message).split())  # any newline of a quoted message folded
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _subparser(commands, name, help_text, description):
    paragraphs = "\n\n".join(textwrap.fill(p, 88) for p in description.split("\n\n"))
    return commands.add_parser(
        name, help=help_text, description=paragraphs,
        epilog="examples:\n" + textwrap.dedent(EXAMPLES[name]).strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter)


def _common(parser, model=True, data=True, default_output=None):
    if model:
        parser.add_argument("model", metavar="MODEL.keras", help="a classifier saved with model.save()")
    if data:
        parser.add_argument("--data", required=True, metavar="DATA", help=DATA_HELP)
        parser.add_argument("--data-dir", default=None, help="TensorFlow Datasets folder (tfds names only)")
        parser.add_argument("--limit", type=_positive_int, default=None,
                            help="use only the first N examples of each split")
        parser.add_argument("--clip", type=_finite(), nargs=2, default=[0.0, 1.0], metavar=("LOW", "HIGH"),
                            help="the model's input range, checked against the data; noise and attacks "
                                 "stay in it (default 0 1)")
    parser.add_argument("--output", required=default_output is None, default=default_output,
                        help="folder for the report (new or empty, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --output folder (when the run succeeds)")
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"], default=None,
                        help="Keras backend (default: $KERAS_BACKEND, else Keras' own default)")
    parser.add_argument("--seed", type=_count, default=0, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser():
    from keras_lowrank.cli.evaluate import ATTACK_HELP

    parser = _OneLineParser(
        prog="keras-lowrank",
        description="Low-rank structure for Keras models: compress, evaluate and analyze your own "
                    "model, or run the demo. `keras-lowrank COMMAND --help` shows each command's "
                    "options and examples.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compress = _subparser(
        commands, "compress", "make a trained model low-rank, fine-tune it with DLRT and export it small",
        "Converts the model's Dense, Conv1D and Conv2D layers to dynamic low-rank layers (SVD of the trained "
        "kernels), fine-tunes them with the rank-adaptive DLRT integrator, truncates the ranks and "
        "exports the model at its exact ranks from Keras' own layers. Each exported file is re-loaded "
        "in a fresh Python that cannot import keras_lowrank and checked against the model (to 1e-5; "
        "exit status 1 if one differs). Writes report.md, report.json, compression.png, export/.")
    _common(compress)
    rank = compress.add_mutually_exclusive_group()
    rank.add_argument("--budget", type=_finite(0.0, strict=True), default=None,
                      help="the converted layers keep at most this share of their kernels' parameters, ranks "
                           "allocated across layers by their output errors on the training data (default 0.25 "
                           "when neither --tol nor --rank is given)")
    rank.add_argument("--tol", type=_finite(0.0, strict=True), default=None,
                      help="instead: each rank keeps ‖σ[r:]‖ < tol·‖σ‖ of its output errors")
    rank.add_argument("--rank", type=_positive_int, default=None, help="instead: every layer at this rank")
    rank.add_argument("--max-drop", type=_finite(0.0), default=None, metavar="POINTS",
                      help="instead: the smallest budget of 71, 50, 35, 25, 18, 12.5, … %% whose accuracy on a "
                           "held-out tenth of the training data, right after factorisation, stays within POINTS "
                           "percentage points of the model's (tried largest first; stops at the first that "
                           "loses more)")
    compress.add_argument("--finetune-epochs", type=_count, default=5, help="DLRT epochs (default 5; 0: none)")
    compress.add_argument("--spectral-weight", type=_finite(0.0), default=0.0,
                          help="β of the spectral regularizer on S (default 0)")
    compress.add_argument("--learning-rate", type=_finite(0.0, strict=True), default=1e-3,
                          help="Adam's learning rate inside DLRT (default 1e-3)")
    compress.add_argument("--batch-size", type=_positive_int, default=32)
    compress.add_argument("--formats", nargs="+", choices=["keras", "saved_model", "tflite", "onnx"],
                          default=None,
                          help="exported formats (default keras saved_model, or keras without TensorFlow; "
                               "saved_model and tflite need TensorFlow, onnx the onnx extra)")
    compress.add_argument("--quantize", choices=["int8", "int4"], default=None,
                          help="store the exported Dense factors as integers (Keras' own quantisation; "
                               "convolutions stay float32)")
    compress.add_argument("--prefer", choices=["size", "speed"], default="size",
                          help="each low-rank layer exported as its factor pair or as one layer with the kernel "
                               "multiplied back: the form with fewer weights (size, default) or the one timed "
                               "faster here, on test inputs (speed: run where the model will run)")
    compress.add_argument("--check-examples", type=_positive_int, default=256,
                          help="test examples the re-loaded files are checked on (default 256)")

    evaluate = _subparser(
        commands, "evaluate", "the robustness report: attacks, noise, corruptions, gradient-masking checks",
        "Accuracy of the model clean, under each attack, noise level and corruption, with the "
        "gradient-masking checks (a large-ε probe, AutoAttack's flags). Writes report.md, "
        f"report.json, robustness.png.\n\nAttacks (--attacks NAME:EPS[:linf|l2]): {ATTACK_HELP}.")
    _common(evaluate)
    evaluate.add_argument("--attacks", nargs="*", default=None, metavar="NAME:EPS",
                          help="attacks and their ε in input units (default fgsm:0.03 pgd:0.03; none on a "
                               "model of token ids)")
    evaluate.add_argument("--noise", type=_finite(0.0), nargs="*", default=[], metavar="SIGMA",
                          help="Gaussian noise standard deviations")
    evaluate.add_argument("--corruptions", type=_severity, nargs="*", default=[], metavar="SEVERITY",
                          help="every corruption of the library at these severities (1..5)")
    evaluate.add_argument("--no-probe", dest="probe", action="store_false",
                          help="skip the large-ε PGD probe (a check that attacks can reach 0 %%)")

    analyze = _subparser(
        commands, "analyze", "ranks and spectra, CKA maps, class selectivity of a model's layers",
        "Measures the model's representations on the test split: the spectrum and ranks of each "
        "layer's output, the CKA map between its layers (and against --compare), the class "
        "selectivity of its post-ReLU layers. Writes report.md, report.json, spectra.png, cka*.png.")
    _common(analyze)
    analyze.add_argument("--compare", metavar="OTHER.keras", default=None,
                         help="a second model (same inputs): cross-model CKA map")
    analyze.add_argument("--layers", nargs="+", default=None,
                         help="layer names (default: every Conv1D/Conv2D/Dense and low-rank layer)")

    demo = _subparser(
        commands, "demo", "the library on real, offline data: ≤ 3 minutes, or --full for the 3-seed tables",
        "By default trains a small CNN on scikit-learn's digits with and without the LR layer, then runs "
        "compress, evaluate and analyze on the two models (≤ 3 minutes on 2 CPU cores), one table per "
        "capability in README.md. --full runs the 3-seed tables of docs/results.md instead.")
    _common(demo, model=False, data=False, default_output="runs/demo")
    demo.add_argument("--full", action="store_true", help="the 3-seed tables (digits and MNIST-1D, ~15 min)")
    full = demo.add_argument_group("--full only")
    full.add_argument("--dataset", default="digits", choices=["digits", "mnist1d"])
    full.add_argument("--epochs", type=_positive_int, default=40)
    full.add_argument("--rank", type=_positive_int, default=10, help="target rank of the LR layer")
    full.add_argument("--projection-weight", type=_finite(0.0), default=None,
                      help="λ_c of the LR layer (default: the layer's, 0.5 for the relative loss, 1 for the paper's)")
    full.add_argument("--lr-loss", choices=["relative", "paper"], default="relative",
                      help="the LR layer's projection loss (keras_lowrank/methods.md §1)")
    full.add_argument("--sigmas", type=_finite(0.0), nargs="+", default=[0.1, 0.2, 0.3])
    full.add_argument("--seeds", type=_count, nargs="+", default=[0, 1, 2])
    full.add_argument("--dlrt-datasets", nargs="*", default=["digits", "mnist1d"], choices=["digits", "mnist1d"],
                      help="datasets for the DLRT table (none: skip it)")
    full.add_argument("--dlrt-epochs", type=_positive_int, default=20)
    full.add_argument("--analysis-datasets", nargs="*", default=["digits", "mnist1d"],
                      choices=["digits", "mnist1d"],
                      help="datasets for the CKA maps and the selectivity sweep (none: skip them)")
    full.add_argument("--analysis-epochs", type=_positive_int, default=20)
    return parser


def _check(parser, args, argv, from_shell):
    """Everything that can be checked without Keras, before any work."""
    from keras_lowrank._files import check_output_folder

    try:
        check_output_folder(args.output, args.overwrite, "--output")
    except (FileExistsError, PermissionError, ValueError) as error:
        parser.error(str(error).replace("`--output`", "--output").replace(
            "overwrite=True (--overwrite)", "--overwrite"))
    for flag in ("model", "compare"):
        path = getattr(args, flag, None)
        if path is not None and not os.path.isfile(path):
            parser.error(f"{'MODEL' if flag == 'model' else '--compare'}: {path} is not a file.")
    if getattr(args, "clip", None) is not None and not args.clip[0] < args.clip[1]:
        parser.error(f"--clip: LOW must be below HIGH, got {args.clip[0]:g} {args.clip[1]:g}.")
    if args.command == "evaluate":
        from keras_lowrank.cli.common import JobError
        from keras_lowrank.cli.evaluate import parse_attack

        for text in args.attacks or []:
            try:
                parse_attack(text)
            except JobError as error:
                parser.error(str(error))
    if args.command == "compress":
        if args.budget is not None and args.budget > 1:
            parser.error(f"--budget: a share of the layers' parameters in (0, 1], got {args.budget:g}.")
        if args.tol is not None and args.tol >= 1:
            parser.error(f"--tol: must be below 1, got {args.tol:g}.")
        from keras_lowrank.cli.common import JobError
        from keras_lowrank.cli.compress import check_formats

        try:
            check_formats(args.formats or [])
        except JobError as error:
            parser.error(str(error))
    if args.backend is not None:
        module = args.backend
        if importlib.util.find_spec(module) is None:
            parser.error(f"--backend {args.backend}: {module} is not installed "
                         f"(pip install keras-lowrank[{'tensorflow-cpu' if module == 'tensorflow' else module}]).")
        os.environ["KERAS_BACKEND"] = args.backend
        import keras  # importing keras_lowrank (this module's package) imported it

        if keras.backend.backend() != args.backend:
            if not from_shell:
                parser.error(f"--backend {args.backend}: Keras already runs on {keras.backend.backend()} "
                             "in this process; set KERAS_BACKEND before importing Keras.")
            # Keras picks its backend once, on import: start again with it set
            if os.environ.get("KERAS_LOWRANK_RESTARTED") == args.backend:
                parser.error(f"--backend {args.backend}: Keras still starts on {keras.backend.backend()} "
                             "with KERAS_BACKEND set; check the backend's installation.")
            os.environ["KERAS_LOWRANK_RESTARTED"] = args.backend
            sys.stdout.flush()
            os.execv(sys.executable, [sys.executable, "-m", "keras_lowrank", *argv])
    if args.command == "demo" and args.full and not args.seeds:
        parser.error("--seeds needs at least one seed")


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    # predict_on_batch retraces once per batch shape; TF warns about it at length.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def main(argv=None):
    from_shell = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args, argv, from_shell)
    _quiet_tensorflow()
    from keras_lowrank.cli import common

    meta = common.metadata(common.command_line(argv), args.seed)
    try:
        if args.command == "demo":
            # imports Keras and the demos: keep --help fast
            if args.full:
                from keras_lowrank._demo.full import run_demo

                run_demo(args.output, dataset=args.dataset, epochs=args.epochs, rank=args.rank,
                         projection_weight=args.projection_weight, lr_loss=args.lr_loss,
                         sigmas=args.sigmas, seeds=tuple(args.seeds), dlrt_datasets=tuple(args.dlrt_datasets),
                         dlrt_epochs=args.dlrt_epochs, analysis_datasets=tuple(args.analysis_datasets),
                         analysis_epochs=args.analysis_epochs, overwrite=args.overwrite)
                return 0
            from keras_lowrank._demo.quick import run_quick_demo

            return run_quick_demo(args, meta)
        from keras_lowrank.cli import analyze, compress, evaluate

        return {"compress": compress, "evaluate": evaluate, "analyze": analyze}[args.command].run(args, meta)
    except common.JobError as error:
        message = " ".join(str(error).split())  # one line, as parser errors
        print(f"keras-lowrank {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
