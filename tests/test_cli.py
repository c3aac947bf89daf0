import json

import pytest

from keras_lowrank import cli

pytestmark = pytest.mark.slow


@pytest.mark.slow_on_jax("XLA compiles each of the hundreds of perturbation steps: > 20 min on 2 CPUs")
def test_demo_writes_its_outputs(tmp_path, capsys):
    pytest.importorskip("tensorflow")  # data.load builds tf.data pipelines
    assert cli.main(["demo", "--output", str(tmp_path), "--epochs", "2",
                     "--sigmas", "0.1", "0.3", "--seeds", "0", "1",
                     "--dlrt-datasets", "digits", "--dlrt-epochs", "1",
                     "--analysis-datasets", "digits", "--analysis-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "var. rank 99%" in printed and "baseline" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["mean"]) == {"baseline", "lr"}
    assert results["lr_arguments"] == {"loss": "relative"}  # the layer's defaults
    runs = results["per_seed"]["lr"]
    assert len(runs) == 2 and {"accuracy_sigma_0.1", "accuracy_sigma_0.3"} <= set(runs[0])
    accuracies = [r["accuracy"] for r in runs]
    assert results["mean"]["lr"]["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 2)
    assert 0 <= runs[0]["compressed_feature_accuracy"] <= 1
    robustness = results["robustness"]
    assert set(robustness) == {"baseline", "lr", "pgd_trained"}
    assert robustness["lr"]["rows"][0]["name"] == "clean"
    assert "gradient-masking checks, pgd_trained" in printed
    assert "DLRT on digits" in printed
    dlrt = results["dlrt"]["digits"]
    assert set(dlrt) == {"dense", "dlrt", "dlrt_spectral", "dense_to_dlrt"} and len(dlrt["dlrt"]) == 2
    assert 0 < dlrt["dlrt"][0]["compression_rate"] < 1 and "fgsm_0.05" in dlrt["dense"][0]
    assert dlrt["dense_to_dlrt"][0]["compression_rate"] >= 0.9  # rank ≤ max_rank 24 of 512×512
    analysis = results["analysis"]["digits"]
    assert [row["model"] for row in analysis["cka"]] == ["standard", "pgd_trained", "lr"]
    assert all(-0.1 <= row["block_structure"] <= 1.0 for row in analysis["cka"])
    sweep = analysis["selectivity"]
    assert set(sweep["mean"]) == {"-2.0", "-1.0", "0.0", "1.0", "2.0"}
    assert len(sweep["per_alpha"]["0.0"]) == 2 and len(sweep["claims"]) == 6
    assert 0 <= sweep["mean"]["0.0"]["corruptions"] <= 1
    assert "Class-selectivity sweep on digits" in printed and "CKA on digits" in printed
    for name in ("spectra.png", "robustness.png", "robustness.md", "baseline.keras",
                 "lr.keras", "pgd_trained.keras", "cka_digits.png", "selectivity_digits.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_bad_epochs_exit_with_message(capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        cli.main(["demo", "--output", str(tmp_path), "--epochs", "0"])
    assert exited.value.code == 2 and "--epochs" in capsys.readouterr().err
