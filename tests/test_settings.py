"""Typed settings: every method setting and task option is checked by type, range and choices when the plan is made,
from the dataclass field types and metadata alone (so new methods and plugins get the same checks)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from unlearnbench.methods.base import MethodConfig, make_config
from unlearnbench.settings import coerce, describe_type
from unlearnbench.tasks import TASKS


@dataclass
class PluginConfig(MethodConfig):
    source: str = field(default="current", metadata={"help": "where x_t comes from", "choices": ("current", "base")})
    mix: float = field(default=0.5, metadata={"help": "a probability", "max": 1.0})
    shift: float = field(default=0.0, metadata={"help": "may be negative", "min": None})
    rounds: int | None = field(default=None, metadata={"help": "optional count"})
    use_ema: bool = field(default=False, metadata={"help": "a switch"})


@pytest.mark.parametrize("values,expected", [
    ({"lr": "1e-4"}, {"lr": 1e-4}),  # YAML 1.1 reads 1e-4 as a string
    ({"steps": "1e3", "batch_size": 64.0}, {"steps": 1000, "batch_size": 64}),  # integral values stay integers
    ({"rounds": None, "use_ema": True}, {"rounds": None, "use_ema": True}),
    ({"source": "base", "mix": 1, "shift": -2.5}, {"source": "base", "mix": 1.0, "shift": -2.5}),
])
def test_values_are_converted_to_the_declared_types(values, expected):
    cfg = make_config(PluginConfig, values, "plug")
    got = {k: getattr(cfg, k) for k in expected}
    assert got == expected and all(type(got[k]) is type(expected[k]) for k in expected)


@pytest.mark.parametrize("values,message", [
    ({"steps": 1.5}, "steps=1.5 is not an integer"),
    ({"batch_size": True}, "batch_size=True is not an integer"),
    ({"lr": "fast"}, "lr='fast' is not a number"),
    ({"lr": float("nan")}, "lr=nan is not finite"),
    ({"mix": 1.5}, "mix=1.5 is out of range; valid: a finite number >= 0 and <= 1"),
    ({"rounds": -1}, "rounds=-1 is out of range; valid: an integer >= 0"),
    ({"source": "other"}, "source='other' is not a valid choice; valid: current, base"),
    ({"source": 3}, "source=3 is not text; valid: one of: current, base"),
    ({"use_ema": "yes"}, "use_ema='yes' is not a boolean; valid: true or false"),
    ({"shift": None}, "shift=None is not allowed; valid: a finite number"),
    ({"lora_rank": 0}, "lora_rank=0 is out of range; valid: an integer > 0"),
])
def test_bad_values_name_the_setting_value_and_what_is_valid(values, message):
    with pytest.raises(ValueError, match="^method plug: ") as e:
        make_config(PluginConfig, values, "plug")
    assert message in str(e.value)


def test_optional_count_accepts_zero_and_none():
    assert make_config(PluginConfig, {"rounds": 0}, "plug").rounds == 0


def test_describe_type_reads_like_the_error_messages():
    assert describe_type(float, {}, 1e-3, "dual_lr") == "a finite number > 0"
    assert describe_type(int | None, {}, None, "steps") == "an integer >= 0 and <= 1000000 or null"
    assert describe_type(str, {"choices": ("a", "b")}) == "one of: a, b"
    assert coerce("k", "2", int) == 2


@pytest.mark.parametrize("options,message", [
    ({"eval_samples": "abc"}, "task.eval_samples='abc' is not an integer"),
    ({"eval_samples": 0}, "task.eval_samples=0 is out of range; valid: an integer > 0"),
    ({"distill_lr": float("inf")}, "task.distill_lr=inf is not finite"),
    ({"forget": "all"}, "unknown forget set 'all'; valid: pair, one"),
])
def test_task_options_are_typed_by_their_defaults(options, message):
    with pytest.raises(ValueError) as e:
        TASKS.get("gmm-concept")(options)
    assert message in str(e.value)


def test_task_options_are_converted():
    task = TASKS.get("gmm-concept")({"eval_samples": "2e3", "distill_seed": 0})
    assert task.options["eval_samples"] == 2000 and isinstance(task.options["eval_samples"], int)
    digits = TASKS.get("digits-data")({"guidance": 2, "pretrain_steps": "20"})
    assert digits.options["guidance"] == 2.0 and digits.options["pretrain_steps"] == 20
