"""Compression stages: prune, low-rank factorize, distil, quantize. One verb, one config each."""
