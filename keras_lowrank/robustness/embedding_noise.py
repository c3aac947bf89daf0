"""Gaussian noise in embedding space: the perturbation that means something for a model
of token ids (where noise on the ids themselves means nothing), scored with Keras' own
``evaluate``."""

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_number, check_seed

__all__ = ["NoisyEmbedding", "embedding_noise"]


@keras.saving.register_keras_serializable(package="keras_lowrank")
class NoisyEmbedding(keras.layers.Layer):
    """An embedding layer whose lookups come out with Gaussian noise added, in every
    call (``evaluate`` and ``predict`` too, not only in training); reverse calls — the
    tied output projection of keras-hub's ``ReversibleEmbedding`` — stay exact.

    Args:
        embedding: the ``keras.layers.Embedding`` (or subclass) to wrap, built.
        stddev: the noise's standard deviation, in the embedding's units.
        seed: the noise's seed (an int, or None for a random one).

    Input shape: the wrapped embedding's (token ids).
    Output shape: the wrapped embedding's, (..., output_dim).

    Examples:

        >>> table = keras.layers.Embedding(10, 4)
        >>> table.build((None,))
        >>> noisy = NoisyEmbedding(table, stddev=0.0)
        >>> ids = np.array([[1, 2]])
        >>> bool(np.all(ops.convert_to_numpy(noisy(ids)) == ops.convert_to_numpy(table(ids))))
        True
    """

    def __init__(self, embedding, stddev, seed=None, **kwargs):
        kwargs.setdefault("name", embedding.name)
        kwargs.setdefault("dtype", embedding.dtype_policy)
        super().__init__(**kwargs)
        self.embedding = embedding
        self.stddev = check_number(stddev, "stddev", minimum=0.0)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = getattr(embedding, "supports_masking", False)
        self.built = embedding.built

    def build(self, input_shape):
        if not self.embedding.built:
            self.embedding.build(input_shape)

    def call(self, inputs, reverse=False, **kwargs):
        if reverse:
            return self.embedding(inputs, reverse=True, **kwargs)
        outputs = self.embedding(inputs, **kwargs)
        noise = keras.random.normal(ops.shape(outputs), stddev=self.stddev, dtype=outputs.dtype,
                                    seed=self.seed_generator)
        return outputs + noise

    def compute_mask(self, inputs, mask=None):
        return self.embedding.compute_mask(inputs, mask)

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return self.embedding.compute_output_shape(input_shape, reverse=True)
        return self.embedding.compute_output_shape(input_shape)

    def __getattr__(self, name):
        # what the model's own code reads of its embedding (``input_dim``, ``embeddings``,
        # keras-hub's ``tie_weights``) comes from the wrapped layer
        if name.startswith("_") or name == "embedding":
            # on torch a Layer is a torch.nn.Module, which keeps sub-layers in _modules
            # and finds them in its own __getattr__; elsewhere they are plain attributes
            parent = getattr(super(), "__getattr__", None)
            if parent is None:
                raise AttributeError(name)
            return parent(name)
        return getattr(self.embedding, name)

    def get_config(self):
        config = super().get_config()
        config.update(embedding=keras.saving.serialize_keras_object(self.embedding),
                      stddev=self.stddev, seed=self.seed)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedding"] = keras.saving.deserialize_keras_object(config["embedding"])
        return cls(**config)


def embedding_noise(model, stddev, layer=None, seed=0):
    """A copy of ``model`` whose token embeddings come out with Gaussian noise of
    standard deviation ``stddev`` × (the root mean square of the embedding table's
    entries): the noise sweep of a model of token ids, where noise on the ids means
    nothing. Compile and ``evaluate`` it as the model itself; the original is unchanged.

    Args:
        model: a Keras model holding an embedding layer (keras-hub's backbones and tasks
            included: their ``token_embedding``).
        stddev: the noise's size relative to a typical embedding entry (0.1: a tenth).
        layer: the embedding's path or name; default the layer named "token_embedding",
            else the model's one ``Embedding`` layer.
        seed: the noise's seed (the same draws for every model given the same seed).

    Returns:
        the noisy copy.

    Examples:

        >>> tokens = keras.Input((5,), dtype="int32")
        >>> model = keras.Model(tokens, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(
        ...     keras.layers.Embedding(20, 8, name="token_embedding")(tokens))))
        >>> noisy = embedding_noise(model, 0.5)
        >>> x = np.arange(10).reshape(2, 5)
        >>> bool(np.allclose(ops.convert_to_numpy(noisy(x)), ops.convert_to_numpy(model(x))))
        False
    """
    from keras_lowrank._keras_compat import layer_paths
    from keras_lowrank.compression._surgery import copy_model, swap

    stddev = check_number(stddev, "stddev", minimum=0.0)
    seed = check_seed(seed)
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    found = layer_paths(model)
    tables = [(p, l) for p, l in found if isinstance(l, keras.layers.Embedding)]
    if layer is not None:
        chosen = [(p, l) for p, l in found if layer in (p, l.name)]
        if len(chosen) != 1 or not isinstance(chosen[0][1], keras.layers.Embedding):
            raise ValueError(f"`layer` must name one Embedding layer of the model, got {layer!r}; its "
                             f"embeddings are {[p for p, _ in tables]}.")
    else:
        chosen = [(p, l) for p, l in tables if l.name == "token_embedding"] or tables
        if len(chosen) != 1:
            raise ValueError(
                "embedding_noise needs `layer`: the model has "
                + (f"several embeddings, {[p for p, _ in tables]}" if tables else "no Embedding layer")
                + "; name the one that embeds the tokens.")
    path, table = chosen[0]
    rms = float(np.sqrt(np.mean(np.square(ops.convert_to_numpy(table.embeddings).astype("float64")))))
    noisy, twins = copy_model(model, "embedding_noise", chosen)
    twin = twins[id(table)]
    swap(noisy, path, twin, NoisyEmbedding(twin, stddev * rms, seed=seed))
    return noisy
