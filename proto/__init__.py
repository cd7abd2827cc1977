"""gRPC definitions (`apiary.proto`) and their generated stubs: `python -m proto.generate`."""
