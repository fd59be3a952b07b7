"""Recipes (validated YAML pipelines) and the runner behind `tvc run`."""
