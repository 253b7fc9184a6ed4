"""The ``waveflow`` command (``main``): its parser and verbs in ``main``, the options that verbs
share in ``arguments``, synthesis from mel files in ``synthesize``. Importing it loads no torch."""

from waveflow.cli.main import CLIError, build_parser, main

__all__ = ["CLIError", "build_parser", "main"]
