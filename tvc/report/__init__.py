"""Bench records (versioned schema) and their rendering as Markdown / HTML reports."""
