"""Convert trained models to dynamic low-rank layers, summarise, export small files.

- ``to_low_rank``: Dense / Conv1D / Conv2D / EinsumDense → DynamicLowRankDense /
  DynamicLowRankConv1D / DynamicLowRankConv2D / DynamicLowRankEinsumDense wherever they
  sit (custom layers, keras-hub's transformers), initialised by the truncated SVD of the
  trained kernel (plain, or whitened by calibration data), ranks by tol, rank or budget.
- ``compression_summary``: per layer and total parameters, ranks, compression
  rate 1 − Σ(n_in r + r² + n_out r)/Σ(n_in n_out) (biases on neither side, as
  keras_lowrank/methods.md §2), multiply-adds, cond(S).
- ``truncate_ranks``: truncates every layer by its tol now — after DLRT's
  ``fit``, which usually stops inside a cycle, on augmented bases.
- ``export_compressed``: rebuilds the model at the exact ranks from Keras' own
  layers (Dense(r) → Dense(units); ConvND(r) → 1×1 ConvND; two EinsumDense), so the ``.keras``
  file and the SavedModel really are small; they load without keras_lowrank but where
  the low-rank layers sit inside custom layers (then keras_lowrank puts them back).
  ``prefer="size"`` (default) writes each layer in the form with fewer weights (the
  factor pair, or the layer with its kernel multiplied back at a rank past break-even),
  ``prefer="speed"`` in the form timed faster here.
- ``export_forms`` / ``time_export_forms``: those per-layer choices and timings alone.
- ``kernel_layers``: the (path, layer) pairs ``to_low_rank``'s ``layers`` chooses from.
- ``save_model``: ``model.save`` for a model converted inside its custom layers.
"""

from keras_lowrank.compression._surgery import save_model
from keras_lowrank.compression.convert import kernel_layers, to_low_rank, truncate_ranks
from keras_lowrank.compression.export import compressed_model, export_compressed
from keras_lowrank.compression.forms import export_forms, time_export_forms
from keras_lowrank.compression.summary import CompressionSummary, compression_summary

__all__ = ["kernel_layers", "to_low_rank", "truncate_ranks", "compression_summary", "CompressionSummary",
           "compressed_model", "export_compressed", "export_forms", "time_export_forms", "save_model"]
