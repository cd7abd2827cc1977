"""Wire definitions and their generated stubs (``python -m apiary.wire.generate``): Apiary's
gRPC service (`apiary.proto`) and TenSEAL's CKKS vector container (`tenseal.proto`)."""
