"""Tiny random-initialised keras-hub models of the architectures users bring (BERT,
GPT-2, Llama, Gemma, ViT; backbones and tasks): vocabulary 256, 2 layers, hidden 64,
intermediate 128, 16 tokens. No weights are downloaded: each is built from its config."""

import numpy as np

VOCABULARY, LAYERS, HIDDEN, INTERMEDIATE, TOKENS = 256, 2, 64, 128, 16

NAMES = ["BertBackbone", "BertTextClassifier", "GPT2Backbone", "GPT2CausalLM", "LlamaBackbone",
         "LlamaCausalLM", "GemmaBackbone", "ViTBackbone", "ViTImageClassifier"]


def make(name, seed=0):
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    models = keras_hub.models
    text = dict(vocabulary_size=VOCABULARY, num_layers=LAYERS, hidden_dim=HIDDEN, intermediate_dim=INTERMEDIATE)
    if name == "BertBackbone":
        return models.BertBackbone(num_heads=4, max_sequence_length=TOKENS, **text)
    if name == "BertTextClassifier":
        return models.BertTextClassifier(backbone=make("BertBackbone", seed), num_classes=3, preprocessor=None)
    if name == "GPT2Backbone":
        return models.GPT2Backbone(num_heads=4, max_sequence_length=TOKENS, **text)
    if name == "GPT2CausalLM":
        return models.GPT2CausalLM(backbone=make("GPT2Backbone", seed), preprocessor=None)
    if name == "LlamaBackbone":
        return models.LlamaBackbone(num_query_heads=4, num_key_value_heads=2, **text)
    if name == "LlamaCausalLM":
        return models.LlamaCausalLM(backbone=make("LlamaBackbone", seed), preprocessor=None)
    if name == "GemmaBackbone":
        return models.GemmaBackbone(num_query_heads=4, num_key_value_heads=1, head_dim=16, **text)
    if name == "ViTBackbone":
        return models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=LAYERS, num_heads=4,
                                  hidden_dim=HIDDEN, mlp_dim=INTERMEDIATE)
    if name == "ViTImageClassifier":
        return models.ViTImageClassifier(backbone=make("ViTBackbone", seed), num_classes=3, preprocessor=None)
    raise ValueError(name)


def inputs(model, n=4, seed=0):
    """A batch for ``model``: random token ids (padding mask all ones, the last two
    tokens of the second example masked), segment ids 0, or images in [0, 1)."""
    rng = np.random.default_rng(seed)
    batch = {}
    for tensor in model.inputs:
        name = tensor.name
        shape = (n,) + tuple(TOKENS if d is None else d for d in tensor.shape[1:])
        if "image" in name:
            batch[name] = rng.random(shape).astype("float32")
        elif "mask" in name:
            mask = np.ones(shape, "int32")
            mask[1, -2:] = 0
            batch[name] = mask
        elif "segment" in name:
            batch[name] = np.zeros(shape, "int32")
        else:
            batch[name] = rng.integers(1, VOCABULARY, shape).astype("int32")
    return batch


def main_output(outputs):
    """A backbone's sequence output (Bert's is a dict), else the model's output."""
    return outputs["sequence_output"] if isinstance(outputs, dict) else outputs
