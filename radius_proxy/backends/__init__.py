"""Backends: the real servers behind the pipeline's ports."""
