"""gRPC definitions (`apiary.proto`) and their generated stubs: `python -m apiary.wire.generate`."""
