"""Core library: HE codec, coefficient arithmetic, key wrapping, TLS, wire transport,
models, training, data and settings. It imports nothing above it."""
