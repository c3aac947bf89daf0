import json

import pytest

from keras_lowrank import cli

pytestmark = pytest.mark.slow


def test_demo_writes_its_outputs(tmp_path, capsys):
    assert cli.main(["demo", "--output", str(tmp_path), "--epochs", "2",
                     "--sigmas", "0.1", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "var. rank 99%" in printed and "baseline" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["models"]) == {"baseline", "lr"}
    lr = results["models"]["lr"]
    assert set(lr["noise_accuracy"]) == {"0.1", "0.3"}
    assert 0 <= lr["compressed_feature_accuracy"] <= 1
    for name in ("spectra.png", "baseline.keras", "lr.keras"):
        assert (tmp_path / name).stat().st_size > 0


def test_bad_epochs_exit_with_message():
    with pytest.raises(SystemExit, match="--epochs"):
        cli.main(["demo", "--epochs", "0"])
