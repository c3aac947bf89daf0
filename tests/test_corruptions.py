import keras
import numpy as np
import pytest

from keras_lowrank.robustness.corruptions import CORRUPTIONS, SEVERITIES, Corruption, all_corruptions

pytestmark = pytest.mark.torch  # in the torch half too (make test-torch)


def apply(name, severity, x, seed=0):
    return np.asarray(keras.ops.convert_to_numpy(Corruption(name, severity, seed=seed)(None, x)))


@pytest.fixture
def images(rng):
    return rng.uniform(size=(6, 12, 12, 3)).astype("float32")


def test_every_corruption_keeps_shape_and_range(images):
    for corruption in all_corruptions():
        out = np.asarray(keras.ops.convert_to_numpy(corruption(None, images)))
        assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1, corruption


def test_gaussian_and_shot_noise_statistics():
    gray = np.full((8, 32, 32, 1), 0.5, "float32")
    delta = apply("gaussian_noise", 3, gray) - gray
    assert delta.std() == pytest.approx(0.08, rel=0.05) and abs(delta.mean()) < 0.005
    shot = apply("shot_noise", 5, gray)            # c = 50: Poisson(25) / 50
    assert shot.mean() == pytest.approx(0.5, abs=0.005)
    assert shot.var() == pytest.approx(0.5 / 50, rel=0.1)


def test_impulse_noise_sets_fraction_to_extremes():
    gray = np.full((8, 32, 32, 1), 0.5, "float32")
    out = apply("impulse_noise", 5, gray)          # c = 0.07
    changed = out != 0.5
    assert changed.mean() == pytest.approx(0.07, rel=0.1)
    assert set(np.unique(out[changed])) <= {0.0, 1.0}


def test_contrast_keeps_means_and_scales_deviations(rng):
    x = rng.uniform(0.4, 0.6, size=(3, 8, 8, 1)).astype("float32")  # no clipping
    out = apply("contrast", 2, x)                  # c = 0.5
    np.testing.assert_allclose(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 0.5 * x.std(axis=(1, 2)), rtol=1e-4)


def test_brightness_grayscale_and_rgb_value(rng):
    x = rng.uniform(0, 0.5, size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(apply("brightness", 5, x), x + 0.3, atol=1e-6)
    rgb = rng.uniform(0, 0.5, size=(2, 8, 8, 3)).astype("float32")
    out = apply("brightness", 5, rgb)
    np.testing.assert_allclose(out.max(-1), rgb.max(-1) + 0.3, atol=1e-5)  # V = max(r, g, b)


def test_blur_matches_scipy_reflect(rng):
    from scipy.ndimage import gaussian_filter

    x = rng.uniform(size=(2, 10, 10, 1)).astype("float32")
    out = apply("gaussian_blur", 5, x)             # σ = 1, radius 3
    expected = np.stack([gaussian_filter(img[..., 0].astype(np.float64), 1.0, mode="reflect",
                                         truncate=3.0)[..., None] for img in x])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_pixelate_is_blockwise_constant(rng):
    x = rng.uniform(size=(2, 20, 20, 1)).astype("float32")
    out = apply("pixelate", 5, x)                  # 20 → 13 → 20
    assert all(len(np.unique(img)) <= 13 * 13 for img in out)
    assert np.abs(out.mean() - x.mean()) < 0.05


@pytest.mark.parametrize("kwargs,match", [({"name": "fog", "severity": 1}, "choose one of"),
                                          ({"name": "contrast", "severity": 6}, "`severity`")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Corruption(**kwargs)
    assert "jpeg" in CORRUPTIONS


def test_signals_get_the_per_value_corruptions_and_a_clear_error_otherwise(rng):
    signals = rng.uniform(size=(5, 40, 1)).astype("float32")
    per_value = all_corruptions((3,), image=False)
    assert {c.corruption for c in per_value} == {
        "gaussian_noise", "shot_noise", "impulse_noise", "brightness", "contrast"}
    for corruption in per_value:
        out = np.asarray(keras.ops.convert_to_numpy(corruption(None, signals)))
        assert out.shape == signals.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="needs image batches"):
        Corruption("pixelate", 3)(None, signals)  # used to return a wrongly shaped array
    # (n, features) data too (contrast averaged over axes 1 and 2: a backend error),
    # with each example's mean over its features; three features are not RGB
    for features in (8, 3):
        table = rng.uniform(0.2, 0.8, size=(6, features)).astype("float32")
        for corruption in per_value:
            out = np.asarray(keras.ops.convert_to_numpy(corruption(None, table)))
            assert out.shape == table.shape and 0 <= out.min() and out.max() <= 1
        c = SEVERITIES["contrast"][2]
        means = table.mean(axis=1, keepdims=True)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(Corruption("contrast", 3)(None, table)),
                                   np.clip((table - means) * c + means, 0, 1), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(Corruption("brightness", 3)(None, table)),
                                   np.clip(table + SEVERITIES["brightness"][2], 0, 1), rtol=1e-6, atol=1e-7)
    # a signal's contrast is per channel, as an image's
    two = rng.uniform(size=(2, 40, 2)).astype("float32")
    means = two.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Corruption("contrast", 3)(None, two)),
                               np.clip((two - means) * SEVERITIES["contrast"][2] + means, 0, 1),
                               rtol=1e-6, atol=1e-7)


def _photos(channels):
    """Two 32×32 crops of a photograph scikit-learn ships (a JPEG's worth of detail)."""
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("china.jpg").astype("float32") / 255.0
    crops = np.stack([photo[100:132, 200:232], photo[250:282, 300:332]])
    return crops if channels == 3 else crops.mean(-1, keepdims=True)


def _libjpeg_through_tensorflow(images, quality):
    """The reference: TensorFlow's own libjpeg binding, encoding at ``quality`` and decoding
    with the accurate inverse DCT (the CIFAR-10-C script's Pillow decodes so)."""
    import tensorflow as tf

    levels = np.floor(np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality), channels=image.shape[-1],
                                       dct_method="INTEGER_ACCURATE").numpy() for image in levels]) / 255.0


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_is_the_cifar_c_codec_eagerly_and_inside_a_compiled_evaluate(channels):
    """jpeg is Pillow's JPEG round trip, as in the CIFAR-10-C script, on every backend:
    at every severity its values are libjpeg's through another binding (TensorFlow's,
    accurate inverse DCT: `tf.image.adjust_jpeg_quality`'s fast one moves ~2/3 of them),
    a gray image compressed as a gray JPEG; inside Keras' compiled `evaluate` (a host
    call on TensorFlow and JAX; XLA asked for, which TensorFlow's host call cannot take:
    ``PerturbedModel`` compiles without it there) the accuracy is the model's on those
    images."""
    from keras_lowrank.robustness import evaluate_robustness

    x = _photos(channels)
    for severity, quality in enumerate(SEVERITIES["jpeg"], start=1):
        expected = _libjpeg_through_tensorflow(x, quality)
        out = apply("jpeg", severity, x)
        assert out.shape == x.shape and out.dtype == np.float32
        off = np.abs(out - expected) * 255
        assert off.max() <= 1.0 + 1e-3 and np.mean(off > 0.5) <= 0.01, (severity, off.max(), np.mean(off > 0.5))
        assert np.abs(out - x).max() > 2 / 255  # it did compress
    model = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Flatten(), keras.layers.Dense(4)])
    model.layers[-1].set_weights([np.random.default_rng(1).normal(size=(x[0].size, 4)).astype("float32"),
                                  np.zeros(4, "float32")])
    corrupted = apply("jpeg", 5, x)
    y = np.argmax(keras.ops.convert_to_numpy(model(corrupted)), -1)
    y[1] = (y[1] + 1) % 4  # one right, one wrong on the compressed images
    xla = keras.backend.backend() != "torch"  # torch's True would be torch.compile
    report = evaluate_robustness(model, (x, y), corruptions=[Corruption("jpeg", 5)], large_eps=None,
                                 jit_compile=True if xla else "auto")
    assert report.rows[-1]["accuracy"] == pytest.approx(0.5)


def test_jpeg_refuses_images_that_are_neither_gray_nor_rgb(rng):
    with pytest.raises(ValueError, match="gray or RGB"):
        Corruption("jpeg", 1)(None, rng.uniform(size=(2, 8, 8, 2)).astype("float32"))
