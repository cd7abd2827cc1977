"""Core library: HE codec, coefficient arithmetic, key wrapping, TLS, wire transport,
models, training, data and settings; the error base, atomic file writes and stopping child
processes. It imports nothing above it."""
