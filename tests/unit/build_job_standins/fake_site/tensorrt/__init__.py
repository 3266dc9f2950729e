"""Fake TensorRT Python package: just a version."""

__version__ = "10.99.0-standin"
