"""Federated mode: a central server that averages encrypted updates with the public key only."""
