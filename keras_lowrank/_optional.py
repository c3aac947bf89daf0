"""Optional dependencies: the core needs only Keras, NumPy, threadpoolctl and Pillow."""

import importlib

_EXTRAS = {"sklearn": "data", "mnist1d": "data", "matplotlib": "plots",
           "tensorflow": "tensorflow-cpu", "tensorflow_datasets": "tensorflow-cpu"}


def require(module, purpose):
    """``module`` imported, or an ImportError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        root = module.split(".")[0]
        extra = _EXTRAS.get(root, root)
        raise ImportError(
            f"{purpose} needs the package {root!r}, which is not installed: "
            f"pip install 'keras-lowrank[{extra}]'.") from error
