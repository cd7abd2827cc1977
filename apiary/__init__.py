"""Apiary: swarm learning for hospitals with CKKS-encrypted updates averaged on chain."""

__version__ = "0.1.0"
