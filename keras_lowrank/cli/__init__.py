"""The command line ``keras-lowrank``: ``main`` parses and checks the arguments
(``parser.py``); each subcommand runs in a module of its own (``compress``, ``evaluate``,
``analyze``; what they share in ``common``)."""

from keras_lowrank.cli.parser import main

__all__ = ["main"]
