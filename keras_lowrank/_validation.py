"""Argument checks shared by the public entry points.

Numbers arrive as Python or numpy scalars (``np.int64(8)``, ``np.float32(0.1)``,
0-d arrays); both are accepted and returned as Python numbers. Booleans,
strings, NaN and ±inf are refused with the argument's name: a NaN weight would
otherwise act as 0 or ruin a run without a word.
"""

import numbers

import numpy as np


def _scalar(value):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_int(value, name, minimum=1, allow_none=False):
    """``value`` as a Python int ≥ ``minimum`` (None passes if ``allow_none``)."""
    if value is None and allow_none:
        return None
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer ≥ {minimum}, got {name}={value!r}.")
    return int(value)


def check_number(value, name, minimum=None, maximum=None, strict=False, allow_none=False):
    """``value`` as a finite Python float in [minimum, maximum] (open ends if
    ``strict``); None passes if ``allow_none``."""
    if value is None and allow_none:
        return None
    value = _scalar(value)
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and np.isfinite(float(value)))
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if strict else value <= maximum
    if not ok:
        low = "" if minimum is None else f"{'>' if strict else '≥'} {minimum}"
        high = "" if maximum is None else f"{'<' if strict else '≤'} {maximum}"
        bounds = " and ".join(b for b in (low, high) if b)
        raise ValueError(f"`{name}` must be a finite number{' ' + bounds if bounds else ''}, "
                         f"got {name}={value!r}.")
    return float(value)


def check_clip(clip, name="clip"):
    """None, or (low, high) finite numbers with low < high, as floats."""
    if clip is None:
        return None
    try:
        low, high = clip
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be None or (low, high), got {name}={clip!r}.") from None
    low, high = check_number(low, f"{name}[0]"), check_number(high, f"{name}[1]")
    if not low < high:
        raise ValueError(f"`{name}` must be None or (low, high) with low < high, got {clip!r}.")
    return (low, high)


def check_seed(value, name="seed"):
    """None, or a seed as a Python int (``np.int64(3)`` too: Keras'
    ``SeedGenerator`` refuses numpy integers)."""
    if value is None:
        return None
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer or None, got {name}={value!r}.")
    if not 0 <= value < 2**32:  # JAX's generators take unsigned 32-bit seeds (TF took -1 silently)
        raise ValueError(f"`{name}` must be an integer in 0..2³²−1 or None, got {name}={value!r}.")
    return int(value)
