"""Compile SwarmLearning.sol with the pinned npm release of solc, driven by py-solc-x.

The artifact under ``contracts/build/`` is committed so nodes need no compiler; a test
recompiles the source and compares the bytecode, so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import solcx
import solcx.wrapper

from apiary.core.errors import ApiaryError
from apiary.core.files import write_json
from apiary.core.paths import NODE_MODULES

CONTRACTS_DIR = Path(__file__).resolve().parent
SOLC_VERSION = "0.8.37"
CONTRACT_NAME = "SwarmLearning"
SOURCE_PATH = CONTRACTS_DIR / f"{CONTRACT_NAME}.sol"
ARTIFACT_PATH = CONTRACTS_DIR / "build" / f"{CONTRACT_NAME}.json"
SOLC_WRAPPER = CONTRACTS_DIR / "solcjs"
OPTIMIZER = {"enabled": True, "runs": 200}


class CompilerUnavailable(ApiaryError, RuntimeError):
    """solc.js or node is missing."""


def _check_toolchain() -> None:
    if shutil.which("node") is None:
        raise CompilerUnavailable("node is not on PATH; install Node.js (Debian: nodejs)")
    if not (NODE_MODULES / "solc" / "solc.js").exists():
        raise CompilerUnavailable(
            f"solc {SOLC_VERSION} is not installed under {NODE_MODULES}; run `make deps`"
        )


def compile_contract(source_path: Path = SOURCE_PATH) -> dict[str, Any]:
    """Compile the contract and return the artifact (ABI, bytecode, compiler facts)."""
    _check_toolchain()
    source = source_path.read_text()
    standard_input = {
        "language": "Solidity",
        "sources": {source_path.name: {"content": source}},
        "settings": {
            "optimizer": OPTIMIZER,
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    output = solcx.compile_standard(standard_input, solc_binary=SOLC_WRAPPER)
    compiled = output["contracts"][source_path.name][CONTRACT_NAME]
    version = str(solcx.wrapper.get_solc_version(SOLC_WRAPPER, with_commit_hash=True))
    if not version.startswith(SOLC_VERSION):
        raise CompilerUnavailable(f"solc.js is {version}, expected {SOLC_VERSION}; run `make deps`")
    return {
        "contractName": CONTRACT_NAME,
        "compiler": f"solc {version}",
        "optimizer": OPTIMIZER,
        "sourceSha256": hashlib.sha256(source.encode()).hexdigest(),
        "abi": compiled["abi"],
        "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
    }


def write_artifact(path: Path = ARTIFACT_PATH) -> dict[str, Any]:
    artifact = compile_contract()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, artifact)
    return artifact


def load_artifact(path: Path = ARTIFACT_PATH) -> dict[str, Any]:
    """The committed artifact; run `apiary compile` after editing the source."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `apiary compile`")
    artifact: dict[str, Any] = json.loads(path.read_text())
    return artifact
