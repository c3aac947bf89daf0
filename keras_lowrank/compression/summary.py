"""``compression_summary``: per layer and total parameters, ranks, compression
rate 1 − Σ(n_in r + r² + n_out r)/Σ(n_in n_out) (biases on neither side, as
keras_lowrank/methods.md §2), multiply-adds, cond(S), counting what ``export_compressed`` writes."""

import keras  # noqa: F401  (the examples use it)
import numpy as np

from keras_lowrank._keras_compat import all_sublayers
from keras_lowrank._low_rank.model import condition_number, low_rank_layers
from keras_lowrank.compression._common import KINDS, _bias_size, _kernel_matrix
from keras_lowrank.layers.low_rank_projection import LowRankProjection

__all__ = ["compression_summary", "CompressionSummary"]


class CompressionSummary:
    """``compression_summary``'s result: rows (one dict per Dense/Conv2D-like layer)
    and totals; ``str()`` is a Markdown table.

    Attributes:
        rows: one dict per layer (see ``compression_summary``).
        total: the totals (see ``compression_summary``).

    Examples:

        >>> from keras_lowrank.compression import compression_summary, to_low_rank
        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(32), keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> summary = compression_summary(small)
        >>> [row["rank"] for row in summary.rows], summary.total["low_rank_params"]
        ([4, 4, None], 576)
    """

    def __init__(self, rows, total):
        self.rows = rows
        self.total = total

    def to_dict(self):
        return {"layers": self.rows, "total": self.total}

    def to_markdown(self):
        head = ("| layer | shape | rank | dense params | exported params | compression | dense MACs "
                "| low-rank MACs | cond(S) |")
        lines = [head, "|" + "---|" * 9]
        for r in self.rows:
            rank = "dense (kept)" if r["rank"] is None else f"{r['rank']}/{r['max_rank']}"
            cond = "" if r["cond"] is None else f"{r['cond']:.3g}"
            lines.append(
                f"| {r['layer']} | {r['n_in']}×{r['n_out']} | {rank} | "
                f"{r['dense_params']:,} | {r['exported_params']:,} | {r['compression_rate']:.1%} | "
                f"{r['dense_macs']:,} | {r['low_rank_macs']:,} | {cond} |"
            )
        t = self.total
        lines.append(
            f"| **low-rank layers** | | | {t['dense_params']:,} | {t['exported_params']:,} | "
            f"{t['compression_rate']:.1%} | {t['dense_macs']:,} | {t['low_rank_macs']:,} | |"
        )
        lines.append(
            f"| **whole model** | | | {t['model_dense_params']:,} | "
            f"{t['model_exported_params']:,} | {t['model_compression_rate']:.1%} | | | |"
        )
        return "\n".join(lines)

    __str__ = to_markdown


def compression_summary(model):
    """What ``export_compressed`` writes, counted per layer and for the model.

    Rows, one per dynamic low-rank layer: n_in, n_out, rank r, max_rank,
    ``dense_params`` n_in·n_out + bias (the equivalent Keras layer),
    ``low_rank_params`` r(n_in + n_out) + bias (the pair of factor layers, S
    folded into the second), ``exported_params`` the smaller of the two (what
    ``compressed_model`` writes with its default ``prefer="size"``: the dense layer at
    a rank at or above the break-even n_in·n_out / (n_in + n_out)), their ``compression_rate``, multiply-adds per
    sample of the dense and of the exported layer (r(n_in + n_out) per output
    position of a convolution, and per position of a Dense applied to feature
    maps; per token where the model takes sequences of any length, as keras-hub's
    text models do), cond(S_r). Plain Dense/Conv2D layers (e.g. left dense by
    ``to_low_rank`` because their rank did not pay) get a row with rank None.

    Totals: over the low-rank layers (``dense_params``, ``low_rank_params``,
    ``compression_rate``, MACs), and for the whole model: ``model_dense_params``
    (every low-rank layer dense), ``model_exported_params`` (exactly the
    parameter count of ``compressed_model(model)``, never above ``model_dense_params``) and
    ``model_compression_rate``.

    Args:
        model: a Keras model (nested models and layers are searched).

    Returns:
        a ``CompressionSummary``.

    Examples:
        a 32 × 32 kernel at rank 4 stores 4·(32 + 32) + 32 = 288 numbers
        instead of 32·32 + 32 = 1056.

        >>> from keras_lowrank.compression import compression_summary, to_low_rank
        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(32), keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> row = compression_summary(small).rows[0]
        >>> row["dense_params"], row["low_rank_params"]
        (1056, 288)
    """
    rows = []
    low_rank = low_rank_layers(model)
    for layer in low_rank:
        r, n_in, n_out = layer.rank, layer.n_in, layer.n_out
        bias = _bias_size(layer)
        dense_params, low_params = n_in * n_out + bias, r * (n_in + n_out) + bias
        dense_macs, low_macs = layer.multiply_adds(r)  # at every position it multiplies
        rows.append(dict(
            layer=layer.name, n_in=n_in, n_out=n_out, rank=r, max_rank=layer.max_rank,
            dense_params=dense_params, low_rank_params=low_params,
            exported_params=min(dense_params, low_params),
            compression_rate=1.0 - low_params / dense_params,
            dense_macs=dense_macs, low_rank_macs=low_macs, cond=condition_number(layer),
        ))
    for layer in all_sublayers(model):
        if type(layer) in KINDS and layer.built:
            n_in, n_out = _kernel_matrix(layer).shape
            params = n_in * n_out + _bias_size(layer)
            rows.append(dict(layer=layer.name, n_in=n_in, n_out=n_out, rank=None, max_rank=None,
                             dense_params=params, low_rank_params=params, exported_params=params,
                             compression_rate=0.0,
                             dense_macs=0, low_rank_macs=0, cond=None))
    low_rows = [r for r in rows if r["rank"] is not None]
    dense = sum(r["dense_params"] for r in low_rows)
    low = sum(r["low_rank_params"] for r in low_rows)
    exported = sum(r["exported_params"] for r in low_rows)
    held = sum(int(np.prod(w.shape)) for layer in low_rank for w in layer.weights)
    # A LowRankProjection exports as an Identity or one Dense (``_projection_as_keras``).
    projections = [l for l in all_sublayers(model) if isinstance(l, LowRankProjection) and l.built]
    held += sum(int(np.prod(w.shape)) for l in projections for w in l.weights)
    exported_projections = sum(l.features * (l.features + 1) for l in projections
                               if l.output_mode != "input")
    others = model.count_params() - held + exported_projections if model.built else 0
    total = dict(
        dense_params=dense, low_rank_params=low, exported_params=exported,
        compression_rate=(1.0 - low / dense) if dense else 0.0,
        dense_macs=sum(r["dense_macs"] for r in low_rows),
        low_rank_macs=sum(r["low_rank_macs"] for r in low_rows),
        model_dense_params=others + dense, model_exported_params=others + exported,
        model_compression_rate=(1.0 - (others + exported) / (others + dense)) if others + dense else 0.0,
    )
    return CompressionSummary(rows, total)
