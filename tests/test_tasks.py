"""Tasks: loading from an entry point, the built-in tasks, the swarm-wide configuration."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from apiary.core.data.heart import load_heart_shards
from apiary.core.data.shards import Shard
from apiary.core.errors import ConfigError
from apiary.core.flat import flatten, weights_digest
from apiary.core.models import build_model
from apiary.core.settings import NodeSettings
from apiary.core.tasks import (
    ConfigMismatch,
    ModelBuildFailed,
    NotATask,
    ShardTask,
    SwarmConfig,
    TaskBase,
    TaskLoadError,
    TaskNotFound,
    load_task,
)
from apiary.core.training import DEFAULT_TRAINING, TrainingConfig
from apiary.node.trainer import LocalTrainer, task_entry, training_config

TINY = Path(__file__).parent / "tasks" / "tiny_task.py"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "heart_task.py"


@pytest.fixture(scope="module")
def cleveland() -> Shard:
    return load_heart_shards(seed=0)["cleveland"]


def trainer(shard: Shard, **changes: object) -> LocalTrainer:
    config = dataclasses.replace(DEFAULT_TRAINING, **changes)  # type: ignore[arg-type]
    return LocalTrainer.for_shard("cleveland", shard, config)


# ---------------------------------------------------------------------- loading


@pytest.mark.parametrize("entry, name, model", [
    ("heart", "heart", "mlp"), ("fashion", "fashion", "cnn"), ("mlp", "heart", "mlp"),
    ("cnn", "fashion", "cnn"), ("apiary.core.tasks.builtin:heart", "heart", "mlp"),
])
def test_built_in_tasks_and_their_model_aliases(entry: str, name: str, model: str) -> None:
    task = load_task(entry)
    assert isinstance(task, ShardTask) and (task.name, task.model) == (name, model)


def test_a_task_file_loads_by_path_with_the_default_or_a_named_attribute() -> None:
    default = load_task(str(TINY))
    assert default.name == "tiny" and isinstance(default, TaskBase)
    assert load_task(f"{TINY}:wide").width == 12  # type: ignore[attr-defined]
    assert load_task(str(TINY)) is default, "a file is imported once"


def test_a_class_is_made_without_arguments() -> None:
    assert load_task(f"{TINY}:TinyTask").name == "tiny"


@pytest.mark.parametrize("entry, error, says", [
    ("", TaskNotFound, "no task given"),
    ("no/such/task.py", TaskNotFound, "no task file no/such/task.py"),
    ("examples/task.txt", TaskNotFound, "is not a .py file"),
    ("no_such_package.tasks:task", TaskNotFound, "no module named 'no_such_package'"),
    ("not a module", TaskNotFound, "is none of"),
    (f"{TINY}:missing", TaskNotFound, "has no attribute 'missing'"),
    (f"{TINY}:not_a_task", NotATask, "is a dict, not a task"),
    (f"{TINY}:math", NotATask, "not a task"),
    ("apiary.core.training:Metrics", NotATask, "cannot be made without arguments"),
])
def test_entry_points_that_name_no_task_are_refused_saying_what_to_do(
        entry: str, error: type[TaskLoadError], says: str) -> None:
    with pytest.raises(error) as raised:
        load_task(entry)
    assert says in str(raised.value)
    assert isinstance(raised.value, ConfigError), "the CLI shows it as one line"


def test_a_task_file_that_fails_to_import_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(TaskLoadError, match=r"running .*broken.py failed .*no GPU here"):
        load_task(str(broken))


def test_a_task_needs_a_name(tmp_path: Path) -> None:
    nameless = tmp_path / "nameless.py"
    nameless.write_text("from apiary.core.tasks import TaskBase\n"
                        "class T(TaskBase):\n    pass\ntask = T()\n")
    with pytest.raises(NotATask, match="its name is ''"):
        load_task(str(nameless))


def test_a_model_that_does_not_build_or_is_not_deterministic_is_refused(cleveland) -> None:
    with pytest.raises(ModelBuildFailed, match=r"build_model failed .*no such layer"):
        trainer(cleveland, model=f"{TINY}:broken")
    with pytest.raises(ModelBuildFailed, match="other weights each time"):
        trainer(cleveland, model=f"{TINY}:unseeded")


def test_node_settings_name_the_task_by_task_or_model() -> None:
    assert task_entry(NodeSettings()) == "mlp"
    assert task_entry(NodeSettings(model="cnn")) == "cnn"
    assert task_entry(NodeSettings(task=str(TINY))) == str(TINY)
    with pytest.raises(ConfigError, match=r"both --task .* and --model"):
        task_entry(NodeSettings(task="heart", model="mlp"))
    config = training_config(NodeSettings(lr=0.01, seed=4, epochs=3))
    assert (config.lr, config.seed, config.epochs, config.model) == (0.01, 4, 3, "mlp")


# ---------------------------------------------------------------------- training


def test_the_built_in_heart_task_is_the_registry_mlp_as_before(cleveland) -> None:
    built = trainer(cleveland)
    registry = build_model("mlp", cleveland.input_shape, cleveland.num_classes, seed=0)
    assert weights_digest(built.initial_weights()) == weights_digest(flatten(registry))
    assert built.param_count == 1074 and built.sample_count == cleveland.num_train
    weights, loss = built.train(built.initial_weights(), 1)
    own, held = built.evaluate(weights)
    assert math.isfinite(loss) and 0 <= own.accuracy <= 1 and held is None


def test_a_user_task_trains_and_evaluates_through_the_defaults(cleveland) -> None:
    tiny = trainer(cleveland, model=str(TINY))
    assert tiny.param_count == 15 * 6 + 6 + 6 * 2 + 2
    start = tiny.initial_weights()
    weights, _ = tiny.train(start, 1)
    again, _ = trainer(cleveland, model=str(TINY)).train(start, 1)
    assert not np.array_equal(weights, start) and np.array_equal(weights, again)
    assert tiny.evaluate(weights)[0].samples == cleveland.num_test


def test_the_readme_example_task_trains(cleveland) -> None:
    example = trainer(cleveland, model=str(EXAMPLE))
    weights, loss = example.train(example.initial_weights(), 1)
    assert math.isfinite(loss) and example.evaluate(weights)[0].accuracy > 0.5


# ---------------------------------------------------------------------- swarm-wide configuration


def test_the_configuration_covers_the_task_and_every_training_field_but_rounds(cleveland):
    config = trainer(cleveland).swarm_config.as_json()
    assert set(config["task"]) == {"name", "version", "architecture", "initial_weights",
                                   "parameters"}
    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    assert set(config["training"]) == fields - {"rounds", "model"}
    same = trainer(cleveland, rounds=99, model="heart").swarm_config
    assert same.digest() == trainer(cleveland).swarm_config.digest(), \
        "rounds and the entry point's spelling are a site's own"
    assert len(same.digest()) == 32
    assert SwarmConfig.from_json(same.as_json()).digest() == same.digest()


@pytest.mark.parametrize("changes, named", [
    ({"lr": 0.01}, ["lr: this node 0.01, the swarm 0.003"]),
    ({"seed": 5}, ["task initial weights: this node", "seed: this node 5, the swarm 0"]),
    ({"epochs": 3}, ["epochs: this node 3, the swarm 2"]),
    ({"model": str(TINY)}, ["task: this node tiny, the swarm heart", "task architecture",
                            "task initial weights",
                            "task parameters: this node 110, the swarm 1074"]),
    ({"model": "cnn"}, None),
])
def test_a_differing_setting_is_named(cleveland, changes, named) -> None:
    swarm = trainer(cleveland).swarm_config
    if named is None:  # a CNN needs images: the model does not build on tabular data
        with pytest.raises(ConfigError, match="cnn needs"):
            trainer(cleveland, **changes)
        return
    mine = trainer(cleveland, **changes).swarm_config
    assert mine.digest() != swarm.digest()
    with pytest.raises(ConfigMismatch) as raised:
        mine.check_matches(swarm, "on chain")
    message = str(raised.value)
    for part in named:
        assert part in message
    assert len(mine.differences(swarm)) == len(named)


def test_a_configuration_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a swarm training configuration"):
        SwarmConfig.from_json({"task": {"name": "x"}, "training": {}})
