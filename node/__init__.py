"""The hospital node: local training, peer gRPC server, round loop, admin API."""
