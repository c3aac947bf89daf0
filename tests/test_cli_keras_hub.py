"""The command line on a keras-hub text classifier saved with ``model.save()`` and token
data in an ``.npz`` (token_ids, padding_mask, segment_ids, y): compress converts the
attention and feed-forward kernels and its exported files reproduce the model; evaluate
adds noise to the embeddings and refuses attacks on token ids; analyze reads the
backbone's layers by path."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras_hub_models import TOKENS, VOCABULARY, make

pytestmark = pytest.mark.slow


def _cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "keras_lowrank", *args], capture_output=True, text=True,
                          timeout=900, env=env)


def _task(n, rng):
    """Token sequences labelled by whether token 7 occurs in them (a task a small
    transformer learns in a few epochs); padded after a random length."""
    ids = rng.integers(8, VOCABULARY, size=(n, TOKENS)).astype("int32")
    y = rng.integers(0, 2, size=n).astype("int32")
    where = rng.integers(0, TOKENS // 2, size=n)
    ids[y == 1, where[y == 1]] = 7
    mask = np.ones_like(ids)
    lengths = rng.integers(TOKENS // 2, TOKENS + 1, size=n)
    mask[np.arange(TOKENS)[None, :] >= lengths[:, None]] = 0
    ids[mask == 0] = 0
    return {"token_ids": ids, "padding_mask": mask, "segment_ids": np.zeros_like(ids)}, y


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub_cli")
    rng = np.random.default_rng(0)
    x, y = _task(640, rng)
    model = make("BertTextClassifier")
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    model.save(folder / "bert.keras")
    np.savez(folder / "tokens.npz", y=y, **x)
    return folder


def test_compress_a_keras_hub_classifier_on_token_data(saved):
    out = saved / "compressed"
    run = _cli("compress", str(saved / "bert.keras"), "--data", str(saved / "tokens.npz"), "--output", str(out),
               "--rank", "8", "--finetune-epochs", "1", "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    converted = report["converted_layers"]
    assert any(p.endswith("self_attention_layer/query") for p in converted)
    assert any(p.endswith("feedforward_output_dense") for p in converted)
    assert report["parameters"]["after"] < report["parameters"]["before"]
    assert all(check["passed"] for check in report["reload_checks"]), report["reload_checks"]
    assert "keras_lowrank puts them back" in (out / "report.md").read_text()
    reloaded = keras.saving.load_model(out / "export" / "model.keras")
    assert type(reloaded).__name__ == "BertTextClassifier"


def test_evaluate_adds_noise_to_the_embeddings_and_refuses_attacks(saved):
    out = saved / "robust"
    run = _cli("evaluate", str(saved / "bert.keras"), "--data", str(saved / "tokens.npz"), "--output", str(out),
               "--noise", "0", "1.0", "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / "report.json").read_text())["report"]
    assert record["embedding_noise"]["0"] == pytest.approx(record["clean"])
    refused = _cli("evaluate", str(saved / "bert.keras"), "--data", str(saved / "tokens.npz"), "--output",
                   str(saved / "refused"), "--attacks", "pgd:0.1")
    assert refused.returncode == 2 and "token ids" in refused.stderr and "--noise" in refused.stderr
    assert not (saved / "refused").exists()


def test_analyze_reads_the_backbone_layers_by_path(saved):
    out = saved / "analysis"
    model = keras.saving.load_model(saved / "bert.keras")
    backbone = model.backbone.name
    run = _cli("analyze", str(saved / "bert.keras"), "--data", str(saved / "tokens.npz"), "--output", str(out),
               "--layers", f"{backbone}/transformer_layer_0", f"{backbone}/transformer_layer_1", "logits")
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / "report.json").read_text())
    assert set(record["ranks"]) == {"transformer_layer_0", "transformer_layer_1", "logits"}
    assert record["ranks"]["transformer_layer_0"]["num_features"] == 64  # per token (any length)
