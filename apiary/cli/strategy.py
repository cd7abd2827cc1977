"""The server optimiser and FedProx flags that `apiary demo` and `apiary compare` share.

A flag left out is None and passed on as absent, so the command's own defaults (the training
defaults, or a data set's) apply.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from apiary.core.server_optim import SERVER_OPTIMIZERS

STRATEGY_FIELDS: tuple[str, ...] = ("server_optimizer", "server_lr", "server_momentum",
                                    "server_beta1", "server_beta2", "server_tau", "fedprox_mu")

_OPTIONS = (
    click.option("--server-optimizer", type=click.Choice(SERVER_OPTIMIZERS), default=None,
                 help="step applied to each round's decrypted average [fedavg: plain "
                      "averaging]"),
    click.option("--server-lr", type=float, default=None,
                 help="server learning rate η [1 for fedavg/fedavgm, 0.01 for "
                      "fedadam/fedyogi]"),
    click.option("--server-momentum", type=float, default=None,
                 help="fedavgm: server momentum β [0.9]"),
    click.option("--server-beta1", type=float, default=None,
                 help="fedadam/fedyogi: first-moment decay β1 [0.9]"),
    click.option("--server-beta2", type=float, default=None,
                 help="fedadam/fedyogi: second-moment decay β2 [0.99]"),
    click.option("--server-tau", type=float, default=None,
                 help="fedadam/fedyogi: adaptivity τ [0.001]"),
    click.option("--fedprox-mu", type=float, default=None,
                 help="FedProx proximal weight μ in the local loss [0: none]"),
)


def strategy_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the flags; the command receives those given as one ``strategy`` dict."""

    @functools.wraps(command)
    def with_strategy(**kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in STRATEGY_FIELDS}
        return command(strategy={k: v for k, v in given.items() if v is not None}, **kwargs)

    for option in reversed(_OPTIONS):
        with_strategy = option(with_strategy)
    return with_strategy
