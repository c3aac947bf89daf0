"""The one warning class the library issues."""


class LowRankWarning(UserWarning):
    """What keras_lowrank warns about: a result that stands but may not be what was asked
    (a layer left dense, a model with nothing to train in low rank, a cache regenerated).

    A ``UserWarning``, so Python shows it by default; filter it alone with
    ``warnings.filterwarnings("ignore", category=keras_lowrank.LowRankWarning)``, or turn
    it into an error in a test suite with ``"error::keras_lowrank.LowRankWarning"``.

    Examples:

        >>> import warnings
        >>> import keras_lowrank
        >>> issubclass(keras_lowrank.LowRankWarning, UserWarning)
        True
    """
