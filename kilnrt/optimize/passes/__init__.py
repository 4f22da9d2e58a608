"""Optimization passes: each a pure function ``Network -> Network``."""
