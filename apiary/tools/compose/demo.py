"""`apiary demo --compose FILE`: the compose file's own services, run here, for N rounds.

The nodes start first and make their own keys; the one-shot founder then runs the founding
ceremony over their admin APIs, and the demo waits for it to finish. With a profile that
adds a node which is not a founding member (``--profile join``), the demo onboards it after
round 1 exactly as the README tells a hospital's IT: an invite from the sponsor (the
founding member the founder hands the admin role to, ``APIARY_ADMIN``), then
``POST /v1/join`` on the new node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from apiary.core.settings import FoundingSettings
from apiary.tools.compose.check import project_problems
from apiary.tools.compose.runner import ComposeRun
from apiary.tools.compose.spec import ComposeError, load_project
from apiary.tools.demo import DemoOptions, NodeProcess, follow_rounds, join_through_api

ONBOARD_AFTER = 1


def run_compose_demo(compose_file: Path, rounds: int, profiles: tuple[str, ...],
                     run_dir: Path, emit: Callable[[str], None], cli: click.Group,
                     timeout_s: float = 280.0) -> dict[str, Any]:
    """Run the file's services; ``cli`` is the command line their commands must exist in."""
    started_at = time.monotonic()
    project = load_project(compose_file)
    problems = project_problems(project, cli)
    if problems:
        raise ComposeError("the compose file does not match the CLI:\n  " + "\n  ".join(problems))
    result: dict[str, Any] = {"compose_file": str(compose_file), "run_dir": str(run_dir)}
    with ComposeRun(project, profiles, run_dir, emit) as run:
        emit(f"{compose_file}: {', '.join(run.order)} as local processes; volumes and logs "
             f"in {run_dir}")
        run.up()
        nodes = run.nodes()
        if not nodes:
            raise ComposeError("no `apiary node` service is enabled")
        for name in run.order:
            if run.project.services[name].subcommand == "found":
                run.wait_completed(name)
                emit(f"{name} finished the founding ceremony")
        founders, sponsor = founding_members(run)
        members = [n for n in nodes if n.name in founders]
        newcomers = [n for n in nodes if n.name not in founders]
        token = run.admin_token(nodes)
        if newcomers and sponsor is None:
            raise ComposeError("no founding member holds the contract's admin role, so none "
                               "can admit a newcomer: set APIARY_ADMIN on the founder")
        if newcomers and rounds <= ONBOARD_AFTER:
            rounds = ONBOARD_AFTER + 1
            emit(f"following {rounds} rounds: newcomers are onboarded after round {ONBOARD_AFTER}")
        emit(f"{len(nodes)} nodes healthy; following {rounds} rounds"
             + (f"; {', '.join(n.name for n in newcomers)} joins after round {ONBOARD_AFTER}"
                if newcomers else ""))

        options = DemoOptions(rounds=rounds, admin_token=token, timeout_s=timeout_s,
                              out_dir=run_dir)

        def after_round(round_number: int) -> list[tuple[NodeProcess, int]]:
            """Onboard the newcomers; follow the rounds until they took part in one."""
            if round_number != ONBOARD_AFTER or sponsor is None:
                return []
            joined = []
            for node in newcomers:
                first, seconds = join_through_api(node, sponsor, token, emit)
                result.setdefault("onboarding_seconds", {})[node.name] = round(seconds, 2)
                joined.append((node, first))
                if first > options.rounds:
                    emit(f"{node.name} takes part from round {first}: following until then")
                    options.rounds = first
            return joined

        rows = follow_rounds(members, options, emit, columns=[n.name for n in nodes],
                             after_round=after_round if newcomers else None)
        emit("stopping every service")
    return {**result, "services": run.order, "nodes": [n.name for n in nodes],
            "newcomers": [n.name for n in newcomers], "rounds": rows,
            "seconds_total": round(time.monotonic() - started_at, 1)}


def founding_members(run: ComposeRun) -> tuple[list[str], str | None]:
    """The node services the founder founds the swarm with, and the sponsor's admin API URL
    here: the founding member it hands the admin role to (None if it hands it to none)."""
    founder = next((n for n in run.order if run.project.services[n].subcommand == "found"),
                   None)
    if founder is None:
        return [n.name for n in run.nodes()], None
    listed = run.project.services[founder].environment.get("APIARY_FOUNDING_MEMBERS", "")
    local = run.layout.environment(founder).get("APIARY_FOUNDING_MEMBERS", "")
    urls = FoundingSettings.model_construct(founding_members=listed).member_urls
    local_urls = FoundingSettings.model_construct(founding_members=local).member_urls
    services = {name: urlsplit(url).hostname or "" for name, url in urls.items()}
    admin = run.project.services[founder].environment.get("APIARY_ADMIN")
    sponsor = local_urls.get(admin) if admin else None
    return list(services.values()), sponsor


def compose_summary(result: dict[str, Any]) -> list[str]:
    rounds = result["rounds"]
    identical = all(r["identical_weights"] for r in rounds)
    lines = [
        f"compose run: {len(result['services'])} services, {len(result['nodes'])} nodes "
        f"({', '.join(result['nodes'])}), {len(rounds)} rounds in {result['seconds_total']} s",
        "all nodes held bitwise identical weights after every round: "
        + ("yes" if identical else "NO"),
    ]
    for name, seconds in result.get("onboarding_seconds", {}).items():
        lines.append(f"{name} joined through the admin API in {seconds} s; round "
                     f"{rounds[-1]['round']} had {rounds[-1]['contributors']} contributors")
    return lines
