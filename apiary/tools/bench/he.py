"""`apiary bench he`: throughput of the CKKS codec and of the coefficient weighted sum."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

from apiary.core.coefficients import (
    BLOCK_BYTES,
    COEFFS_PER_BLOCK,
    SLOTS_PER_BLOCK,
    block_count,
    block_from_bytes,
    weighted_sum,
    weights_from_sample_counts,
)
from apiary.core.he import COEFF_MOD_BIT_SIZES, GLOBAL_SCALE, POLY_MODULUS_DEGREE, HEContext
from apiary.tools.bench.report import machine, median, table
from apiary.tools.progress import as_progress

TARGET_BYTES_PER_PARAM = 32.0
TARGET_WEIGHTED_SUM_COEFFS_PER_S = 20e6


def bench_he(
    params: int = 102_400,
    nodes: int = 5,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Encrypt/decrypt a vector of `params` weights through the full codec the node uses
    (TenSEAL encryption + coefficient extraction, and back), and time the weighted sum of
    `nodes` such updates. Rates are medians over `repeats`."""
    for name, value in (("params", params), ("nodes", nodes), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    he = HEContext.create()
    rng = np.random.default_rng(0)
    n_blocks = block_count(params)

    # Steps: the updates to sum, then each repeat of the codec and of the sum.
    task = as_progress(progress).task(
        1 + 2 * repeats, f"encrypting {nodes} updates of {params:,} parameters "
        f"({n_blocks} blocks each)")
    vectors = [rng.normal(0, 0.1, params) for _ in range(nodes)]
    updates = [he.encrypt(v) for v in vectors]
    task.advance()

    encrypt_s, decrypt_s, tenseal_s, roundtrip_error = [], [], [], 0.0
    for r in range(repeats):
        task.describe(f"codec round trip {r + 1}/{repeats}")
        started = time.perf_counter()
        blocks = he.encrypt(vectors[0])
        encrypt_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        decrypted = he.decrypt(blocks, params)
        decrypt_s.append(time.perf_counter() - started)
        roundtrip_error = max(roundtrip_error, float(np.max(np.abs(decrypted - vectors[0]))))
        started = time.perf_counter()
        tenseal_bytes = _tenseal_serialized_size(he, vectors[0])
        tenseal_s.append(time.perf_counter() - started)
        task.advance()

    counts = [int(c) for c in rng.integers(100, 5000, size=nodes)]
    weights = weights_from_sample_counts(counts)
    matrices = [
        np.stack([block_from_bytes(u[i], he.modulus) for u in updates]) for i in range(n_blocks)
    ]
    sum_s = []
    for r in range(repeats):
        task.describe(f"weighted sum of {nodes} × {n_blocks} blocks {r + 1}/{repeats}")
        started = time.perf_counter()
        summed = [weighted_sum(m, weights, he.modulus) for m in matrices]
        sum_s.append(time.perf_counter() - started)
        task.advance()
    mean = he.decrypt([s.astype(">u8").tobytes() for s in summed], params) / sum(weights)
    expected = sum(w * v for w, v in zip(weights, vectors, strict=True)) / sum(weights)

    wire_bytes = n_blocks * BLOCK_BYTES
    return {
        "benchmark": "he",
        **machine(),
        "cpu_model": _cpu_model(),
        "params": params,
        "nodes": nodes,
        "repeats": repeats,
        "blocks": n_blocks,
        "poly_modulus_degree": POLY_MODULUS_DEGREE,
        "coeff_mod_bit_sizes": list(COEFF_MOD_BIT_SIZES),
        "scale_bits": int(np.log2(GLOBAL_SCALE)),
        "bytes_per_param": wire_bytes / params,
        "bytes_per_param_full_block": BLOCK_BYTES / SLOTS_PER_BLOCK,
        "tenseal_bytes_per_param": tenseal_bytes / params,
        "encrypt_params_per_s": params / median(encrypt_s),
        "decrypt_params_per_s": params / median(decrypt_s),
        "tenseal_encrypt_serialize_params_per_s": params / median(tenseal_s),
        "weighted_sum_coeffs_per_s": nodes * n_blocks * COEFFS_PER_BLOCK / median(sum_s),
        "roundtrip_max_error": roundtrip_error,
        "weighted_mean_max_error": float(np.max(np.abs(mean - expected))),
        "targets": {
            "bytes_per_param": TARGET_BYTES_PER_PARAM,
            "weighted_sum_coeffs_per_s": TARGET_WEIGHTED_SUM_COEFFS_PER_S,
        },
    }


def format_he_table(result: dict[str, Any]) -> str:
    targets = result["targets"]
    rows = [
        ("encrypt (params/s)", result["encrypt_params_per_s"], ""),
        ("decrypt (params/s)", result["decrypt_params_per_s"], ""),
        ("TenSEAL encrypt+serialize (params/s)", result["tenseal_encrypt_serialize_params_per_s"],
         ""),
        ("weighted sum (input coeffs/s)", result["weighted_sum_coeffs_per_s"],
         f">= {targets['weighted_sum_coeffs_per_s']:,.0f}"),
        ("wire bytes/param", result["bytes_per_param"], f"<= {targets['bytes_per_param']:g}"),
        ("wire bytes/param, full blocks", result["bytes_per_param_full_block"], ""),
        ("TenSEAL serialized bytes/param", result["tenseal_bytes_per_param"], ""),
        ("round-trip max error", f"{result['roundtrip_max_error']:.1e}", ""),
        ("weighted-mean max error", f"{result['weighted_mean_max_error']:.1e}", ""),
    ]  # fmt: skip
    cpu = result.get("cpu_model") or result["processor"]
    return table(("metric", "value", "target"), rows) + (
        f"\n({result['params']:,} params in {result['blocks']} blocks, {result['nodes']} nodes, "
        f"medians of {result['repeats']}; machine: {cpu}, {result['machine']}, "
        f"{result['cpus']} CPUs)"
    )


def _tenseal_serialized_size(he: HEContext, vector: np.ndarray) -> int:
    """Bytes of TenSEAL's own serialisation of the same blocks, for reference."""
    padded = np.zeros(block_count(vector.size) * SLOTS_PER_BLOCK)
    padded[: vector.size] = vector
    return sum(
        len(ts.ckks_vector(he.tenseal_context, chunk.tolist()).serialize())
        for chunk in padded.reshape(-1, SLOTS_PER_BLOCK)
    )


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
