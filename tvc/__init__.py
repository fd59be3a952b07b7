"""tvc: put vision transformers on edge hardware (compress, export, benchmark)."""

__version__ = "0.1.0"
