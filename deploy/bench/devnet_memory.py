"""The devnet's memory and state file over a long compose run (a benchmark, not a test).

Brings docker-compose.yml up under its own project name, lets the swarm run rounds for
--minutes, and every --every seconds records the devnet container's memory
(`docker stats --no-stream`), the size of its state file, the chain's height and the rounds
cleveland finished; then tears everything down and writes the samples as JSON.

    .venv/bin/python deploy/bench/devnet_memory.py --minutes 30 --round-interval 2
Needs the image (`make image`) and a running Docker engine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from apiary.chain.devnet import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "devnet-memory-bench-token-0123456789"


def compose(project: str, env: dict[str, str], *args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
    result = subprocess.run(["docker-compose", "-p", project, "-f",
                             str(REPO / "docker-compose.yml"), *args],
                            env={**clean, **env}, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"docker-compose {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout.strip()


def sample(project: str, env: dict[str, str], started: float) -> dict[str, object]:
    devnet = compose(project, env, "ps", "-q", "devnet")
    memory = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}",
                             devnet], capture_output=True, text=True).stdout.split(" / ")[0]
    state = subprocess.run(["docker", "exec", devnet, "sh", "-c",
                            "stat -c %s /var/lib/apiary/devnet/state.json"],
                           capture_output=True, text=True).stdout.strip()
    rpc = f"http://127.0.0.1:{env['DEVNET_PORT']}"
    height = int(httpx.post(rpc, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber",
                                       "params": []}, timeout=10).json()["result"], 16)
    try:
        rounds = httpx.get(f"http://127.0.0.1:{env['CLEVELAND_PORT']}/v1/rounds",
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
        finished = max((r["round"] for r in rounds["rounds"]), default=0)
    except httpx.HTTPError:
        finished = -1
    return {"minute": round((time.monotonic() - started) / 60, 2), "devnet_memory": memory,
            "state_file_bytes": int(state or 0), "chain_height": height, "rounds": finished,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--round-interval", default="2", help="ROUND_INTERVAL_S of the stack")
    parser.add_argument("--keep-blocks", default="300", help="DEVNET_KEEP_BLOCKS")
    parser.add_argument("--out", type=Path, default=REPO / "runs/devnet-memory.json")
    args = parser.parse_args()
    project = f"apiary-devnet-bench-{os.getpid()}"
    env = {"APIARY_ADMIN_TOKEN": TOKEN, "DEVNET_PORT": str(free_port()),
           "CLEVELAND_PORT": str(free_port()), "HUNGARY_PORT": str(free_port()),
           "SWITZERLAND_PORT": str(free_port()), "VA_PORT": str(free_port()),
           "CONSORTIUM_NETWORK": f"{project}-net", "ROUND_INTERVAL_S": args.round_interval,
           "ENROL_WINDOW_S": "20", "DEVNET_KEEP_BLOCKS": args.keep_blocks}
    samples: list[dict[str, object]] = []
    compose(project, env, "up", "-d", "--no-build")
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.every)
            try:
                samples.append(sample(project, env, started))
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                print(f"sample failed: {exc}", file=sys.stderr)
                continue
            print(json.dumps(samples[-1]), flush=True)
    finally:
        compose(project, env, "down", "--volumes", "--remove-orphans", "--timeout", "10")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"round_interval_s": args.round_interval,
                                    "keep_blocks": args.keep_blocks, "samples": samples},
                                   indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
