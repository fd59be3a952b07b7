"""Runners and benchmarks. Never imports torch at module level, so it installs on a board."""
