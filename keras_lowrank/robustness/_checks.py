"""The gradient-masking checks of a robustness report (Carlini et al., "On Evaluating
Adversarial Robustness", and AutoAttack's ``checks.py``), on its rows: a real robustness
gain told from a broken attack."""

import dataclasses

from keras_lowrank.robustness.attacks.autoattack import EOT_ITER
from keras_lowrank.robustness.attacks.base import _SYMBOL


@dataclasses.dataclass
class Check:
    """One check of a report: its name, whether it passed, what was found."""

    name: str
    passed: bool
    detail: str


BLACK_BOX_MARGIN = 0.02
AUTOATTACK_BLACK_BOX_MARGIN = 0.002  # the authors' check_square_sr


def _autoattack_checks(row):
    """The checks of AutoAttack's checks.py on one AutoAttack row."""
    flags, label = row["flags"], f"AutoAttack ε={row['size']:g}"
    checks = [
        Check("AutoAttack: input gradients not zero", flags["zero_gradient_share"] == 0,
              f"{label}: {flags['zero_gradient_share']:.2%} of the points have an all-zero input gradient"),
        Check("AutoAttack: outputs attacked as logits are logits", not flags["probabilities"],
              f"{label}: " + ("the outputs sum to 1 like probabilities: pass from_logits=False"
                              if flags["probabilities"] else "logits, or probabilities handled")),
        _randomized_check(flags, label),
    ]
    if flags["black_box_gain"] is not None:
        checks.append(Check(
            "AutoAttack: black-box stage adds nothing", flags["black_box_gain"] <= AUTOATTACK_BLACK_BOX_MARGIN,
            f"{label}: Square lowered robust accuracy by {flags['black_box_gain']:.2%} after the white-box stages"
            + (" (gradients likely masked)" if flags["black_box_gain"] > AUTOATTACK_BLACK_BOX_MARGIN else "")))
    return checks


def _randomized_check(flags, label):
    """The authors' check_randomized: a randomised forward pass needs the "rand"
    version (gradients averaged over passes), which passes it."""
    if flags.get("version") == "rand":
        return Check("AutoAttack: forward pass deterministic, or attacked with EOT", True,
                     f"{label}: version 'rand', each gradient averaged over {EOT_ITER} passes"
                     + (" (outputs differ between passes)" if flags["randomized"] else ""))
    return Check("AutoAttack: forward pass deterministic, or attacked with EOT", not flags["randomized"],
                 f"{label}: " + ("outputs differ between passes (a randomised defence?): attack it with "
                                 "AutoAttack(eps, version='rand') (CLI: autoattack-rand:EPS)"
                                 if flags["randomized"] else "repeated passes agree"))


def masking_checks(rows, probe, num_examples):
    """The gradient-masking checks on a report's rows (``probe``: the large-ε row or
    None): attacks never above clean accuracy, accuracy falling with ε, PGD at least as
    strong as FGSM, black-box SPSA not stronger than PGD, AutoAttack's own checks, and
    the large-ε probe near 0."""
    # One example; Keras' metrics are float32, so k/n and (k+1)/n can differ by a
    # hair more than 1/n: the slack keeps a one-example difference a pass.
    tolerance = (1.0 + 1e-3) / num_examples if num_examples else 0.005
    clean = rows[0]["accuracy"]
    attack_rows = [r for r in rows if r["norm"] is not None and r is not probe]  # a threat model: an attack
    checks = []
    worst = max((r["accuracy"] - clean for r in attack_rows), default=0.0)
    checks.append(Check("attacks do not raise accuracy above clean", worst <= tolerance,
                        f"largest gain over clean {worst:+.4f}"))
    for family in ("FGSM", "PGD"):
        for norm in ("inf", "2"):
            series = sorted((r["size"], r["accuracy"]) for r in attack_rows
                            if r["family"] == family and r["norm"] == norm)
            if len(series) < 2:
                continue
            rises = [(a, b) for (a, acc_a), (b, acc_b) in zip(series, series[1:])
                     if acc_b > acc_a + tolerance]
            checks.append(Check(
                f"{family} L{_SYMBOL[norm]} accuracy non-increasing in ε", not rises,
                "monotone" if not rises else f"rises between ε={rises[0][0]:g} and {rises[0][1]:g}"))
    for norm in ("inf", "2"):
        fgsm = {r["size"]: r["accuracy"] for r in attack_rows
                if r["family"] == "FGSM" and r["norm"] == norm}
        pgd = {r["size"]: r["accuracy"] for r in attack_rows
               if r["family"] == "PGD" and r["norm"] == norm}
        common = sorted(set(fgsm) & set(pgd))
        if common:
            weaker = [e for e in common if pgd[e] > fgsm[e] + tolerance]
            checks.append(Check(
                f"PGD L{_SYMBOL[norm]} at least as strong as FGSM", not weaker,
                f"at ε in {common}" if not weaker else f"PGD weaker at ε={weaker}"))
    pgd = {r["size"]: r["accuracy"] for r in attack_rows
           if r["family"] == "PGD" and r["norm"] == "inf"}
    spsa = {r["size"]: r["accuracy"] for r in attack_rows if r["family"] == "SPSA"}
    common = sorted(set(pgd) & set(spsa))
    if common:
        # SPSA is random: "much stronger" means by more than BLACK_BOX_MARGIN.
        stronger = [e for e in common if spsa[e] < pgd[e] - max(BLACK_BOX_MARGIN, tolerance)]
        checks.append(Check(
            "black-box SPSA not stronger than white-box PGD L∞", not stronger,
            f"at ε in {common}" if not stronger else
            f"SPSA stronger at ε={stronger}: gradients are likely masked"))
    for row in attack_rows:
        if row["family"] == "AutoAttack":
            checks.extend(_autoattack_checks(row))
    if probe is not None:
        checks.append(Check(f"large ε={probe['size']:g} drives accuracy near 0",
                            probe["accuracy"] <= 0.1,
                            f"accuracy {probe['accuracy']:.4f} (threshold 0.10)"))
    return checks
