"""Measurement: timing, memory, FLOPs, environment, and isolated workers per case."""
