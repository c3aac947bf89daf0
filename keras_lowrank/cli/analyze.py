"""``keras-lowrank analyze``: ranks and spectra, CKA maps (within the model and
against ``--compare``), class selectivity of the user's model on the user's data."""

import os

import numpy as np

from keras_lowrank.cli import common
from keras_lowrank.cli.common import JobError


def _chosen_layers(model, names, argument):
    from keras_lowrank.analysis.cka import _layers

    try:
        return _layers(model, names or None)
    except ValueError as error:
        raise JobError(f"{argument}: {error}".replace("`layers`: ", "")) from None


def _ranks(model, layers, x):
    """{layer: (ranks, measured as channel vectors?)}: whole outputs up to 2048
    features, wider maps per position (``representation_ranks``' default)."""
    from keras_lowrank.analysis import representation_ranks

    ranks = representation_ranks(model, x, layers=layers)
    return {l.name: (ranks[l.name], not ranks[l.name].flattened) for l in layers}


def run(args, meta):
    import keras

    from keras_lowrank.analysis import cka_map, class_selectivity
    from keras_lowrank.analysis.representation import _AUTO_WHOLE

    model = common.load_model(args.model)
    other = common.load_model(args.compare, "--compare") if args.compare else None
    arrays = common.load_arrays(args.data, args.data_dir, args.limit, splits=("test",))
    checked = common.check_against_model(arrays, model, args.clip)
    if other is not None:
        common.check_against_model(arrays, other, args.clip)
    x, y = checked["test"]
    keras.utils.set_random_seed(args.seed)
    layers = _chosen_layers(model, args.layers, "--layers")
    other_layers = _chosen_layers(other, args.layers, "--layers (in --compare)") if other is not None else None
    name = os.path.basename(args.model)
    print(f"{args.model}: {len(x)} test examples, layers {', '.join(l.name for l in layers)}")
    ranks = _ranks(model, layers, x)
    rank_rows = [[layer, r.num_features, f"{r.effective_rank:.2f}", f"{r.stable_rank:.2f}",
                  r.variance_rank, "channel vectors" if channels else "whole output"]
                 for layer, (r, channels) in ranks.items()]
    within = cka_map(model, x, layers=list(layers))
    maps = {"cka.png": (within, f"CKA within {name}")}
    sections = [
        ("Data", arrays["description"] + f"; {len(x)} test examples."),
        ("Ranks of each layer's output", common.markdown_table(
            ["layer", "features", "effective rank", "stable rank", "variance rank (99 %)", "measured on"],
            rank_rows) + "\n\nSpectra: spectra.png. Feature maps wider than "
            f"{_AUTO_WHOLE} features are measured as per-position channel vectors."),
        ("CKA", f"Linear CKA (unbiased) between layers, cka.png; block-structure score (mean "
                f"off-diagonal CKA) {_block(within)}."),
    ]
    record = {"data": arrays["description"],
              "ranks": {layer: {**r.as_dict(), "channel_vectors": c} for layer, (r, c) in ranks.items()},
              "cka": {"rows": within.rows, "columns": within.columns, "matrix": within.matrix}}
    if other is not None:
        across = cka_map(model, x, model_b=other, layers=list(layers), layers_b=list(other_layers))
        other_within = cka_map(other, x, layers=list(other_layers))
        other_name = os.path.basename(args.compare)
        maps["cka_compare.png"] = (across, f"CKA: {name} (rows) vs {other_name} (columns)")
        maps["cka_other.png"] = (other_within, f"CKA within {other_name}")
        sections.append(("CKA against " + other_name, "cka_compare.png (rows: this model's layers, "
                         f"columns: {other_name}'s); {other_name}'s own map cka_other.png, block-structure "
                         f"score {_block(other_within)}.\n\n"
                         + _matrix_table(across)))
        record["cka_compare"] = {"model": args.compare, "rows": across.rows, "columns": across.columns,
                                 "matrix": across.matrix}
    try:
        selectivity = class_selectivity(model, (x, y), num_classes=common.num_classes(model))
        shifted = [f"{s.layer} (+{s.offset:.3f})" for s in selectivity.layers.values() if s.offset]
        sections.append(("Class selectivity", "Selectivity index per unit, (μ_max − μ_rest)/(μ_max + "
                         "μ_rest) of class-mean activations, on the post-ReLU layers (without ReLU: the "
                         "layers whose activation is bounded below, shifted by its floor"
                         + (f": {', '.join(shifted)}" if shifted else "") + ").\n\n"
                         + selectivity.to_markdown()))
        record["selectivity"] = selectivity.as_dict()
    except ValueError as error:
        sections.append(("Class selectivity", f"Not measured: {error}"))
        record["selectivity"] = None
    with common.staged(args) as folder:
        _plot_spectra(ranks, os.path.join(folder, "spectra.png"), name)
        for file, (cka, title) in maps.items():
            cka.plot(os.path.join(folder, file), title=title)
        common.write_report(folder, f"Representations of {name}", meta, sections, record)
    print("\n".join(f"  {row[0]}: effective rank {row[2]}, variance rank {row[4]}" for row in rank_rows))
    print(f"wrote {args.output}/ (report.md, report.json, spectra.png, {', '.join(maps)})")
    return 0


def _block(cka):
    return f"{cka.block_structure_score():.3f}" if len(cka.rows) >= 2 else "n/a (one layer)"


def _matrix_table(cka):
    rows = [[row] + [f"{v:.3f}" for v in values] for row, values in zip(cka.rows, cka.matrix)]
    return common.markdown_table([""] + list(cka.columns), rows)


def _plot_spectra(ranks, path, title):
    from keras_lowrank._optional import require

    require("matplotlib", "Plotting")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for layer, (r, _) in ranks.items():
        s = np.asarray(r.singular_values, dtype=float)
        if s.size and s[0] > 0:
            ax.semilogy(np.arange(1, len(s) + 1), s / s[0], label=f"{layer} (var. rank {r.variance_rank})")
    ax.set_xlabel("index")
    ax.set_ylabel("σ_i / σ_1")
    ax.set_ylim(1e-6, 1.5)  # below: numerical zeros (fewer samples than features)
    ax.set_xscale("log")
    ax.set_title(f"Spectra of the layers' outputs, {title}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
