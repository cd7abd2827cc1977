"""`apiary admin …`: operate a running node over its admin API, one thin command per call
of :class:`apiary.node.client.AdminClient`.

The node's URL and token come from flags, the environment (``APIARY_NODE_URL``,
``APIARY_ADMIN_TOKEN``) or a file (``APIARY_ADMIN_TOKEN_FILE``), as
:class:`~apiary.core.settings.AdminClientSettings` reads them. ``--format json`` prints the
API's own answer, for scripts; ``table`` (the default) is for people.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import click
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from apiary.core.errors import ApiaryError
from apiary.core.settings import AdminClientSettings

if TYPE_CHECKING:
    from apiary.node.client import AdminClient

CONFIRM_REMOVAL = ("remove {address} from the swarm? It loses its certificate's trust at once "
                   "and the swarm moves to a fresh HE key")


PIPE_WIDTH = 160
"""Columns of a table written to a pipe or file (a terminal's own width otherwise)."""


NO_WRAP = frozenset({"round", "status", "address", "endpoint", "weights"})


class JoinDidNotFinish(ApiaryError):
    """The join failed, or `--timeout` passed before it finished."""


class NotReady(ApiaryError):
    """The node answered that it is not ready (its reasons are in the message)."""


class Output:
    """Where a command's answer goes: a JSON document, or tables and lines."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"
        console = Console(highlight=False)
        if not console.is_terminal:  # a pipe or a log: wide enough for an address per line
            console = Console(highlight=False, width=max(console.width, PIPE_WIDTH))
        self.console = console

    def answer(self, answer: BaseModel | Sequence[BaseModel],
               render: Callable[[], None]) -> None:
        if self.json:
            data = ([item.model_dump(mode="json") for item in answer]
                    if isinstance(answer, Sequence) else answer.model_dump(mode="json"))
            click.echo(json.dumps(data, indent=2))
        else:
            render()

    def fields(self, title: str, rows: Iterable[tuple[str, Any]]) -> None:
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for name, value in rows:
            table.add_row(name, _cell(value))
        self.console.print(table)

    def table(self, title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        table = Table(title=title, title_justify="left")
        for name in header:
            table.add_column(name, no_wrap=name in NO_WRAP)
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        self.console.print(table)

    def line(self, text: str) -> None:
        self.console.print(text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Session:
    """The command's settings, client and output, made once per invocation."""

    def __init__(self, url: str | None, token: str | None, timeout_s: float | None,
                 fmt: str) -> None:
        self.settings = AdminClientSettings.load(node_url=url, admin_token=token,
                                                 request_timeout_s=timeout_s)
        self.out = Output(fmt)

    def client(self) -> AdminClient:
        from apiary.node.client import AdminClient

        settings = self.settings
        return AdminClient(settings.node_url, settings.admin_token,
                           timeout_s=settings.request_timeout_s)


pass_session = click.make_pass_decorator(Session)


@click.group()
@click.option("--url", default=None, metavar="URL",
              help="the node's admin API [env APIARY_NODE_URL; default http://127.0.0.1:8000]")
@click.option("--token", default=None, metavar="TOKEN",
              help="the node's admin token; better APIARY_ADMIN_TOKEN or "
                   "APIARY_ADMIN_TOKEN_FILE, which stay off the process list")
@click.option("--timeout-s", type=float, default=None,
              help="seconds to wait for each answer [env APIARY_REQUEST_TIMEOUT_S; default 30]")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="tables for people, the API's JSON for scripts")
@click.pass_context
def admin(ctx: click.Context, url: str | None, token: str | None, timeout_s: float | None,
          fmt: str) -> None:
    """Operate a running node through its admin API: status, rounds, model, members,
    invites, joining, approving and removing members."""
    ctx.obj = Session(url, token, timeout_s, fmt)


@admin.command()
@pass_session
def status(session: Session) -> None:
    """The node's mode, round, phase, account, contract and members."""
    with session.client() as client:
        answer = client.status()
    out = session.out

    def render() -> None:
        last = answer.last_metrics
        out.fields(f"node {answer.node}", [
            ("mode", answer.mode), ("phase", answer.phase), ("round", answer.round),
            ("address", answer.address), ("contract", answer.contract),
            ("parameters", answer.params), ("training samples", answer.samples),
            ("last accuracy", last.accuracy if last else None),
            ("last held-out accuracy", last.heldout_accuracy if last else None),
            ("rejected rounds", answer.rejected_rounds),
        ])
        out.table("members", ["address", "endpoint"],
                  [(m.address, m.endpoint) for m in answer.members])

    out.answer(answer, render)


@admin.command()
@pass_session
def ready(session: Session) -> None:
    """Whether the node takes part in rounds (exit 1 and the reasons when it does not)."""
    with session.client() as client:
        answer = client.ready()
    session.out.answer(answer, lambda: session.out.line(
        f"{answer.node}: {answer.status}"
        + "".join(f"\n  - {reason}" for reason in answer.reasons)))
    if answer.reasons and not session.out.json:
        raise NotReady(f"node {answer.node} is not ready: {'; '.join(answer.reasons)}")


@admin.command()
@click.option("--last", type=int, default=None, help="only the last N rounds")
@pass_session
def rounds(session: Session, last: int | None) -> None:
    """Every round the node took part in or caught up with: status, accuracy, timing."""
    with session.client() as client:
        answer = client.rounds()
    if last is not None:
        answer = answer.model_copy(update={"rounds": answer.rounds[-last:] if last > 0 else []})

    def render() -> None:
        session.out.table(f"rounds of {answer.node}", [
            "round", "status", "accuracy", "held-out", "contributors", "samples", "relay",
            "seconds", "weights"], [
            (r.round, r.status if r.status == "adopted" else f"rejected: {r.reason}",
             r.accuracy, r.heldout_accuracy, len(r.contributors), r.weight_sum,
             "yes" if r.relay else "", round(sum(r.seconds.values()), 1),
             r.weights_digest[:12]) for r in answer.rounds])

    session.out.answer(answer, render)


@admin.command()
@pass_session
def model(session: Session) -> None:
    """The global model the node holds: round, size, digest and evaluation."""
    with session.client() as client:
        answer = client.model()
    evaluation = answer.evaluation
    session.out.answer(answer, lambda: session.out.fields(f"model of {answer.node}", [
        ("round", answer.round), ("parameters", answer.params),
        ("weights digest", answer.weights_digest),
        ("accuracy", evaluation.accuracy if evaluation else None),
        ("AUC", evaluation.auc if evaluation else None),
        ("held-out accuracy", evaluation.heldout_accuracy if evaluation else None),
    ]))


@admin.command()
@pass_session
def members(session: Session) -> None:
    """The swarm's active members as the chain lists them."""
    with session.client() as client:
        answer = client.members()
    session.out.answer(answer, lambda: session.out.table(
        "members", ["address", "endpoint"], [(m.address, m.endpoint) for m in answer]))


@admin.group()
def invite() -> None:
    """Invites for new hospitals."""


@invite.command("create")
@click.option("--ttl-s", type=float, default=3600.0, show_default=True,
              help="seconds the invite stays valid (at most 30 days)")
@pass_session
def invite_create(session: Session, ttl_s: float) -> None:
    """A single-use invite; its token is shown once, here."""
    with session.client() as client:
        answer = client.create_invite(ttl_s)
    session.out.answer(answer, lambda: session.out.fields("invite (shown only now)", [
        ("invite", answer.invite), ("sponsor", answer.sponsor),
        ("expires", _when(answer.expires_at)),
        ("next", "hand it to the new hospital's admin over a channel you trust; they run "
                 "`apiary admin join start <this node's URL>` with it"),
    ]))


@admin.group()
def join() -> None:
    """This node's own join through a sponsor member."""


def _invite_from(flag: str | None, session: Session) -> str:
    """The invite from the flag, APIARY_INVITE(_FILE), or a hidden prompt."""
    invite_token = flag or session.settings.invite
    if invite_token:
        return invite_token
    if not sys.stdin.isatty():
        raise click.UsageError("give the invite with --invite, APIARY_INVITE or "
                               "APIARY_INVITE_FILE")
    return str(click.prompt("invite", hide_input=True))


def _follow(session: Session, client: AdminClient, timeout_s: float) -> None:
    out = session.out

    def changed(progress: Any) -> None:
        if not out.json:
            extra = (f" ({progress.approvals}/{progress.needed} approvals)"
                     if progress.needed else "")
            out.line(f"join: {progress.state}{extra}")

    final = client.follow_join(timeout_s, on_change=changed)
    if out.json:
        click.echo(json.dumps(final.model_dump(mode="json"), indent=2))
    if final.state == "failed":
        raise JoinDidNotFinish(f"the join failed: {final.error}")
    if not out.json:
        held = f", holding the round-{final.round} model" if final.round is not None else ""
        out.line(f"member {final.address} of the swarm, through {final.sponsor}, after "
                 f"{final.seconds:.1f} s{held}")


@join.command("start")
@click.argument("sponsor_url")
@click.option("--invite", "invite_token", default=None,
              help="the sponsor's invite (better APIARY_INVITE or APIARY_INVITE_FILE; asked "
                   "for when none is given)")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="wait until the node is a member (or the join failed)")
@click.option("--timeout-s", "follow_timeout_s", type=float, default=300.0, show_default=True,
              help="how long to follow the join")
@pass_session
def join_start(session: Session, sponsor_url: str, invite_token: str | None, follow: bool,
               follow_timeout_s: float) -> None:
    """Join the swarm through the member whose admin API is SPONSOR_URL."""
    token = _invite_from(invite_token, session)
    with session.client() as client:
        started = client.start_join(sponsor_url, token)
        if not follow:
            session.out.answer(started, lambda: session.out.line(
                f"join started through {started.sponsor}: {started.state}; follow it with "
                "`apiary admin join follow`"))
            return
        _follow(session, client, follow_timeout_s)


@join.command("follow")
@click.option("--timeout-s", "follow_timeout_s", type=float, default=300.0, show_default=True,
              help="how long to follow the join")
@pass_session
def join_follow(session: Session, follow_timeout_s: float) -> None:
    """Wait for the running join to finish, printing each step."""
    with session.client() as client:
        _follow(session, client, follow_timeout_s)


@join.command("status")
@pass_session
def join_status(session: Session) -> None:
    """Where this node's join stands."""
    with session.client() as client:
        answer = client.join_progress()
    session.out.answer(answer, lambda: session.out.fields("join", [
        ("state", answer.state), ("sponsor", answer.sponsor), ("address", answer.address),
        ("approvals", f"{answer.approvals}/{answer.needed}" if answer.needed else None),
        ("seconds", answer.seconds), ("error", answer.error)]))


@admin.command()
@click.argument("address")
@pass_session
def approve(session: Session, address: str) -> None:
    """Approve the proposed newcomer ADDRESS (swarms admitting by majority)."""
    with session.client() as client:
        answer = client.approve(address)
    session.out.answer(answer, lambda: session.out.line(
        f"{answer.address}: {answer.approvals} approval(s); "
        + ("now a member" if answer.member else "not a member yet")))


@admin.command()
@click.argument("address")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@pass_session
def remove(session: Session, address: str, yes: bool) -> None:
    """Remove the member ADDRESS and move the swarm to a fresh HE key."""
    if not yes:
        click.confirm(CONFIRM_REMOVAL.format(address=address), abort=True, err=True)
    with session.client() as client:
        answer = client.remove(address)
    session.out.answer(answer, lambda: session.out.line(
        f"removed {answer.removed}; key epoch {answer.key_epoch} from round "
        f"{answer.from_round}, delivered to {len(answer.delivered)} member(s)"
        + (f", NOT to {', '.join(answer.failed)}: retry with POST /v1/keys/rotation"
           if answer.failed else "")))
