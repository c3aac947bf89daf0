"""PerturbedModel under tf.distribute.MirroredStrategy (two logical CPUs)."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def run_script(name, pattern):
    """Runs tests/scripts/<name> in a fresh process; the groups of ``pattern``
    in its output."""
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, name)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(pattern, done.stdout)
    assert found, done.stdout[-2000:]
    return found.groups()


@pytest.mark.tf_only("tf.distribute")
def test_evaluate_under_attack_is_the_same_on_two_replicas():
    replicas, distributed, single, loss, outside = run_script(
        "mirrored_perturbed_model.py",
        r"replicas=(\d+) distributed=([\d.]+) single=([\d.]+) fit_loss=([\d.]+) outside=(\S+)")
    assert int(replicas) == 2
    assert 0.2 < float(single) < 0.95            # a trained model, attacked but not to 0
    assert float(distributed) == pytest.approx(float(single), abs=1e-6)
    assert float(loss) < 10
    assert outside == "1"  # the input-range guard counts the second replica's inputs too


@pytest.mark.tf_only("tf.distribute")
def test_dlrt_training_on_two_replicas_matches_one_device():
    replicas, diff, rounding, ranks_single, ranks_mirrored, ortho = run_script(
        "mirrored_dlrt.py",
        r"replicas=(\d+) max_diff=(\S+) rounding=(\S+) ranks_single=(\S+) "
        r"ranks_mirrored=(\S+) ortho=(\S+)")
    assert int(replicas) == 2
    # 24 Adam steps with augmentations and truncations amplify float32 rounding
    # by a machine-dependent amount (oneDNN's kernels: 0.0002-0.0024 seen), so the
    # bound is measured in the same run: the spread of one-device runs that differ
    # only in the order of each batch's sums (what two replicas change). A wrong
    # all-reduce moves the weights by O(0.1).
    assert float(diff) <= 3 * float(rounding) + 1e-6, (diff, rounding)
    assert float(rounding) < 0.05  # the yardstick itself is rounding, not divergence
    assert ranks_single == ranks_mirrored
    assert float(ortho) < 1e-4
