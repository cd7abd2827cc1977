"""Regenerate the committed stubs from this folder's protos: ``python -m apiary.wire.generate``.

``apiary.proto`` is Apiary's gRPC service; ``tenseal.proto`` is TenSEAL's CKKS vector
container (messages only, so no gRPC module). protoc runs with the import root (the folder
holding the ``apiary`` package) as include path, so the import names are
``apiary/wire/<name>.proto`` and the generated service module imports
``from apiary.wire import apiary_pb2`` with no patching. The stubs are committed; a test
regenerates them into a temporary directory and compares, so they cannot drift from the
protos.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
IMPORT_ROOT = Path(__file__).absolute().parents[2]
"""The folder that holds the ``apiary`` package, whose ``wire`` package is this folder."""
IMPORT_DIR = Path("apiary", "wire")
OUTPUTS = {
    "apiary.proto": ("apiary_pb2.py", "apiary_pb2.pyi", "apiary_pb2_grpc.py"),
    "tenseal.proto": ("tenseal_pb2.py", "tenseal_pb2.pyi"),
}
"""Each proto and the generated files committed for it."""
GENERATED = tuple(name for names in OUTPUTS.values() for name in names)

_STUB_PREAMBLE = "# ruff: noqa\n"
"""protoc's type stubs use Optional/Union and unsorted imports; the `.py` files are
excluded from ruff in pyproject, the `.pyi` carries its own exemption."""


def generate(out_dir: Path | str) -> list[Path]:
    """Write the `GENERATED` files into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{IMPORT_ROOT}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *(str(IMPORT_DIR / proto) for proto in OUTPUTS),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status} on {', '.join(OUTPUTS)}")
        written = []
        for name in GENERATED:
            target = out / name
            shutil.copyfile(Path(tmp) / IMPORT_DIR / name, target)
            if name.endswith(".pyi"):
                target.write_text(_STUB_PREAMBLE + target.read_text())
            written.append(target)
    return written


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR
    for path in generate(out_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
