"""``keras-lowrank evaluate``: the robustness report (attacks, noise, corruptions,
gradient-masking checks) of the user's model on the user's data."""

import dataclasses
import math
import os
import re

from keras_lowrank.cli import common
from keras_lowrank.cli.common import JobError

ATTACKS = {
    "fgsm": "FGSM (one signed-gradient step)",
    "pgd": "PGD, 10 steps",
    "apgd-ce": "APGD on cross-entropy, 100 iterations",
    "apgd-t": "targeted APGD on the DLR loss, 9 target classes",
    "fab": "FAB-T, 9 target classes",
    "square": "Square (black box), 5000 queries",
    "spsa": "SPSA (black box), 10 steps of 32 samples",
    "autoattack": "AutoAttack, standard: APGD-CE, APGD-T, FAB-T, Square",
    "autoattack-fast": "AutoAttack, fast: APGD-CE, APGD-T with 3 targets",
    "autoattack-rand": "AutoAttack for randomised models: APGD-CE, APGD-DLR, gradients averaged over 20 passes",
}
DEFAULT_ATTACKS = ("fgsm:0.03", "pgd:0.03")
ATTACK_HELP = ("; ".join(f"{name}: {text}" for name, text in ATTACKS.items())
               + ". NAME followed by a number sets the steps (pgd100:0.03, apgd-ce20:0.03; for "
               "autoattack those of its APGD and FAB stages), except fgsm")
_PATTERN = re.compile(r"^(?P<name>[a-z-]+?)(?P<steps>\d+)?:(?P<eps>[^:]+)(?::(?P<norm>linf|l2))?$")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    name: str
    eps: float
    norm: str = "inf"
    steps: int = None

    def build(self, clip, seed):
        from keras_lowrank import robustness as r

        common_args = {"clip": tuple(clip)}
        if self.steps is not None:  # else each attack's own default
            common_args["steps"] = self.steps
        if self.name == "fgsm":
            return r.FGSM(self.eps, norm=self.norm, **common_args)
        if self.name == "pgd":
            return r.PGD(self.eps, norm=self.norm, seed=seed, **common_args)
        if self.name == "apgd-ce":
            return r.APGD(self.eps, norm=self.norm, loss="ce", seed=seed, **common_args)
        if self.name == "apgd-t":
            return r.APGDT(self.eps, norm=self.norm, seed=seed, **common_args)
        if self.name == "fab":
            return r.FAB(self.eps, norm=self.norm, **common_args)
        if self.name == "square":
            return r.Square(self.eps, norm=self.norm, seed=seed, **common_args)
        if self.name == "spsa":
            return r.SPSA(self.eps, seed=seed, **common_args)
        version = {"autoattack-fast": "fast", "autoattack-rand": "rand"}.get(self.name, "standard")
        return r.AutoAttack(self.eps, norm=self.norm, version=version, seed=seed, **common_args)


def parse_attack(text):
    """``NAME[STEPS]:EPS[:linf|l2]`` → AttackSpec (raises JobError with the grammar)."""
    match = _PATTERN.match(text.strip().lower())
    grammar = (f"expected NAME[STEPS]:EPS[:linf|l2], e.g. pgd:0.03, pgd100:0.03 or autoattack:0.5:l2, with NAME one of "
               f"{', '.join(ATTACKS)}")
    if not match or match["name"] not in ATTACKS:
        raise JobError(f"--attacks {text!r}: {grammar}.")
    try:
        eps = float(match["eps"])
    except ValueError:
        raise JobError(f"--attacks {text!r}: ε must be a number; {grammar}.") from None
    if not math.isfinite(eps) or eps < 0:
        raise JobError(f"--attacks {text!r}: ε must be finite and ≥ 0.")
    if match["steps"] and match["name"] == "fgsm":
        raise JobError(f"--attacks {text!r}: fgsm is one step; a step count goes with the others (pgd100:0.03).")
    norm = "2" if match["norm"] == "l2" else "inf"
    if norm == "2" and match["name"] == "spsa":
        raise JobError(f"--attacks {text!r}: {match['name']} is L∞ only here.")
    steps = int(match["steps"]) if match["steps"] else None
    if steps == 0:
        raise JobError(f"--attacks {text!r}: an attack needs at least 1 step.")
    return AttackSpec(match["name"], eps, norm, steps)


def run(args, meta):
    import keras

    from keras_lowrank.robustness import all_corruptions, evaluate_robustness

    model = common.load_model(args.model)
    explicit = args.attacks is not None
    if args.attacks is None:
        args.attacks = [] if common.named_inputs(model) is not None else list(DEFAULT_ATTACKS)
    attacks = [parse_attack(a) for a in args.attacks]
    arrays = common.check_against_model(common.load_arrays(args.data, args.data_dir, args.limit, splits=("test",)),
                                        model, args.clip)
    x, y = arrays["test"]
    if common.named_inputs(model) is not None:
        return _token_model(args, meta, model, arrays, explicit)
    classes = common.num_classes(model)
    built = [spec.build(args.clip, args.seed) for spec in attacks]
    for spec, attack in zip(attacks, built):  # before any row runs; each attack knows what it needs
        needed, what = getattr(attack, "required_classes", (0, None))
        if classes < needed:
            raise JobError(f"--attacks {spec.name}:{spec.eps:g}: needs a model of at least {needed} classes "
                           f"({what}); this one has {classes}. Use the attacks that apply: "
                           f"--attacks apgd-ce:{spec.eps:g} square:{spec.eps:g}.")
    keras.utils.set_random_seed(args.seed)
    corruptions = []
    if args.corruptions:
        image = len(x.shape) == 4
        corruptions = all_corruptions(severities=tuple(args.corruptions), seed=args.seed, image=image)
    print(f"{args.model}: {len(x)} test examples; {len(built)} attack(s), {len(args.noise)} noise level(s), "
          f"{len(corruptions)} corruption(s)")
    try:
        report = evaluate_robustness(model, (x, y), attacks=built, noise_sigmas=args.noise,
                                     corruptions=corruptions, clip=tuple(args.clip), seed=args.seed,
                                     large_eps="auto" if args.probe else None,
                                     verbose=0 if args.quiet else 1)
    except ValueError as error:
        raise JobError(str(error)) from None
    print(report)
    with common.staged(args) as folder:
        if attacks or args.noise:  # else there are no curves to draw
            report.plot(os.path.join(folder, "robustness.png"), title=os.path.basename(args.model))
        sections = [("Data", arrays["description"] + f"; {len(x)} test examples."),
                    ("Accuracy and gradient-masking checks", report.to_markdown())]
        if not report.all_checks_passed:
            sections.append(("Warning", "A check failed: the attack accuracies may overstate robustness "
                                        "(gradient masking, or an attack too weak for this model)."))
        common.write_report(folder, f"Robustness of {os.path.basename(args.model)}", meta, sections,
                            {"data": arrays["description"], "report": report.as_dict(),
                             "attacks": [dataclasses.asdict(a) for a in attacks]})
    print(f"wrote {args.output}/ (report.md, report.json{', robustness.png' if attacks or args.noise else ''})")
    return 0


def _token_model(args, meta, model, arrays, explicit_attacks):
    """A model of token ids (or several named inputs): accuracy clean and with Gaussian
    noise on its token embeddings at each --noise σ (relative to the embeddings' RMS
    entry); attacks and corruptions, which perturb continuous inputs, are refused."""
    import keras

    from keras_lowrank.robustness import embedding_noise

    names = common.named_inputs(model)
    if (explicit_attacks and args.attacks) or args.corruptions:
        raise JobError(f"MODEL takes {', '.join(names)} (token ids): attacks and corruptions perturb "
                       "continuous inputs and mean nothing on token ids; --noise σ … adds Gaussian noise "
                       "to the token embeddings instead (σ × their RMS entry).")
    x, y = arrays["test"]
    keras.utils.set_random_seed(args.seed)
    clean = common.accuracy(model, x, y)
    rows, record = [["clean", "", f"{clean:.4f}"]], {"clean": clean, "embedding_noise": {}}
    for sigma in args.noise:
        try:
            noisy = embedding_noise(model, sigma, seed=args.seed)
        except ValueError as error:
            raise JobError(f"MODEL: {error}") from None
        accuracy = common.accuracy(noisy, x, y)
        rows.append(["Gaussian noise on the token embeddings", f"{sigma:g}", f"{accuracy:.4f}"])
        record["embedding_noise"][f"{sigma:g}"] = accuracy
    n = common.length(x)
    print("\n".join(f"  {r[0]} {r[1]}: {r[2]}" for r in rows))
    with common.staged(args) as folder:
        sections = [("Data", arrays["description"] + f"; {n} test examples."),
                    ("Accuracy", common.markdown_table(["perturbation", "σ (× the embeddings' RMS entry)",
                                                        "accuracy"], rows)
                     + "\n\nThe model takes token ids (" + ", ".join(names) + "): noise is added to "
                     "their embeddings (keras_lowrank.robustness.embedding_noise), the same draws for "
                     "every model given the same --seed; attacks and corruptions do not apply.")]
        common.write_report(folder, f"Robustness of {os.path.basename(args.model)}", meta, sections,
                            {"data": arrays["description"], "report": record})
    print(f"wrote {args.output}/ (report.md, report.json)")
    return 0
