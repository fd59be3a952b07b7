"""The `tvc` command line: thin commands over the library's stages (nothing below imports it)."""

from tvc.cli.main import cli, main

__all__ = ["cli", "main"]
