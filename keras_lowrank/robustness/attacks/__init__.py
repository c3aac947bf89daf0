"""Attacks as callables, ``x_adv = attack(model, x, y)``, one per file.

FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018), L∞ or L2, untargeted
or targeted, with the semantics of cleverhans 4 (``fast_gradient_method``,
``projected_gradient_descent``) so results can be cross-checked:

    FGSM:  x' = clip(x + ε · d),  d = sign(g) (L∞) or g / max(‖g‖₂, 1e-6) (L2),
           g = ∇ₓ CE(f(x), y)  (−∇ for targeted attacks, y = target)
    PGD:   x₀ = clip(x + η₀) (η₀ random in the ε-ball, or 0), then `steps` times
           x ← clip(x + Π_ε(FGSM_α(x) − x)),  Π_ε scales η back into the ε-ball.

SPSA (Uesato et al. 2018) estimates the gradient from loss values alone. AutoAttack
(Croce & Hein 2020) and its stages — APGD, APGD-T, FAB-T, Square — are native to
Keras 3 (written by hand: the authors' implementation runs in PyTorch, and ART's
wrappers refuse Keras 3 models), following the authors' code step for step.

The model runs in inference mode (``training=False``). Each batch is attacked in
one compiled graph on TensorFlow or JAX.

Files: ``base`` (the ``Attack`` class and shared steps), ``fgsm``, ``pgd``,
``spsa``, ``losses`` (DLR, targeted DLR, margin), ``apgd``, ``square``, ``fab``,
``autoattack`` (the ensemble); ``_runner`` holds what AutoAttack's stages share.
"""

from keras_lowrank.robustness.attacks.apgd import APGD, APGDT, apgd_checkpoints
from keras_lowrank.robustness.attacks.autoattack import AutoAttack, AutoAttackResult
from keras_lowrank.robustness.attacks.base import Attack
from keras_lowrank.robustness.attacks.fab import FAB, project_to_hyperplane_l2, project_to_hyperplane_linf
from keras_lowrank.robustness.attacks.fgsm import FGSM
from keras_lowrank.robustness.attacks.losses import dlr_loss, targeted_dlr_loss
from keras_lowrank.robustness.attacks.pgd import PGD
from keras_lowrank.robustness.attacks.spsa import SPSA
from keras_lowrank.robustness.attacks.square import Square, square_eta

__all__ = ["Attack", "FGSM", "PGD", "SPSA", "APGD", "APGDT", "Square", "FAB", "AutoAttack", "AutoAttackResult",
           "apgd_checkpoints", "dlr_loss", "targeted_dlr_loss", "square_eta", "project_to_hyperplane_linf",
           "project_to_hyperplane_l2"]
