"""Benchmarks behind `apiary bench`: the CKKS codec and on-chain aggregation."""
