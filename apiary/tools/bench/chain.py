"""`apiary bench chain`: gas and time of on-chain aggregation on a real anvil devnet.

The relay sends one `aggregate` per block back to back, as a node does; the time is from
the first send to the last receipt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from apiary.chain.binding import SwarmContract, TxResult
from apiary.chain.devnet import dev_private_keys, running_devnet
from apiary.core.coefficients import block_digest
from apiary.core.he import HEContext
from apiary.core.tls import create_self_signed
from apiary.tools.bench.report import machine, table
from apiary.tools.progress import as_progress

DATASET_SIZE = 1_000
"""Samples every benchmark member is admitted with (above what it enrols with)."""


def bench_chain(
    node_counts: Sequence[int] = (3, 5, 10),
    params: int = 100_000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Aggregate a real encrypted update of `params` parameters per node, per node count."""
    he = HEContext.create()
    rng = np.random.default_rng(seed)
    keys = dev_private_keys(max(node_counts) + 1)
    results = []
    task = as_progress(progress).task(len(node_counts), "starting a devnet")
    with running_devnet() as devnet:
        w3 = devnet.web3()
        for nodes in node_counts:
            task.describe(f"{nodes} nodes: encrypting {nodes} × {params:,} parameters")
            updates = [he.encrypt(rng.normal(0, 0.1, params)) for _ in range(nodes)]
            contract = SwarmContract.deploy(
                w3, keys[0], param_count=params, modulus=he.modulus, min_peers=nodes,
                context_digest=he.public_digest(),
            )
            members = [contract.as_account(k) for k in keys[1 : nodes + 1]]
            for i, member in enumerate(members):
                certificate = create_self_signed(f"node{i}", ["127.0.0.1"]).cert
                contract.add_member(member.sender, f"127.0.0.1:{50100 + i}", bytes([i + 1]) * 32,
                                    certificate, DATASET_SIZE)
            commit_gas = []
            for i, member in enumerate(members):
                commit_gas.append(member.enrol(1, 0, 100 + i).gas_used)
            for i, (member, blocks) in enumerate(zip(members, updates, strict=True)):
                tx = member.commit(1, 1, 0, [block_digest(b) for b in blocks])
                commit_gas[i] += tx.gas_used
            task.describe(f"{nodes} nodes: waiting for {len(updates[0])} aggregate transactions")
            relay = members[0]
            started = time.perf_counter()
            sent = relay.aggregate_blocks(
                1, {i: [u[i] for u in updates] for i in range(len(updates[0]))}
            )
            elapsed = time.perf_counter() - started
            failed = [r for r in sent.values() if not isinstance(r, TxResult)]
            if failed:
                raise RuntimeError(f"aggregation failed: {failed[0]}")
            gas = [r.gas_used for r in sent.values() if isinstance(r, TxResult)]
            if not contract.round_info(1).finalized:
                raise RuntimeError("the benchmark round did not finalize")
            param_nodes = params * nodes
            results.append(
                {
                    "nodes": nodes,
                    "params": params,
                    "blocks": len(gas),
                    "gas_per_param_per_node": sum(gas) / param_nodes,
                    "commit_gas_per_param_per_node": sum(commit_gas) / param_nodes,
                    "seconds_per_100k_params_per_node": elapsed * 100_000 / param_nodes,
                    "seconds_per_block": elapsed / len(gas),
                    "max_gas_per_transaction": max(gas),
                }
            )
            task.advance()
    return {"benchmark": "chain", "hardfork": "anvil default", **machine(), "results": results}


def format_chain_table(result: dict[str, Any]) -> str:
    rows = [
        (
            r["nodes"],
            r["params"],
            r["gas_per_param_per_node"],
            r["commit_gas_per_param_per_node"],
            r["seconds_per_100k_params_per_node"],
            r["max_gas_per_transaction"],
        )
        for r in result["results"]
    ]
    headers = ("nodes", "params", "gas/param/node", "commit gas/param/node",
               "s per 100k params/node", "max gas/tx")  # fmt: skip
    return table(headers, rows) + f"\n(machine: {result['processor']}, {result['cpus']} CPUs)"
