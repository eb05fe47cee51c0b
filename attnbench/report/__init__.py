"""Tables and figures from stored results (never re-measures)."""
