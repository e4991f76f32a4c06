"""The registries are the only lists of names: flags take their choices from them, and every hyperparameter
a registered builder declares is a Config field (so it has a flag, a preset value and --print-config)."""

import dataclasses

import pytest

from imgcls.config import Config
from imgcls.data.samplers import SAMPLERS
from imgcls.errors import UserError
from imgcls.losses import LOSSES
from imgcls.registry import Registry
from imgcls.schedules import SCHEDULES
from train import build_parser

FIELDS = {f.name: f for f in dataclasses.fields(Config)}


@pytest.mark.parametrize("field,registry", [("loss", LOSSES), ("sampler", SAMPLERS), ("scheduler", SCHEDULES)])
def test_flag_choices_come_from_the_registry(field, registry):
    assert FIELDS[field].metadata["choices"] == tuple(registry)
    action = next(a for a in build_parser()._actions if a.dest == field)
    assert tuple(action.choices) == tuple(registry)


@pytest.mark.parametrize("registry", [LOSSES, SAMPLERS, SCHEDULES])
def test_every_declared_hyperparameter_is_a_config_field(registry):
    for name in registry:
        for key in registry.hyperparameters(name):
            assert key in FIELDS or key == "plateau_mode", (name, key)


def test_build_passes_only_the_declared_hyperparameters():
    reg = Registry("--thing")

    @reg.register("scaled")
    def scaled(x, *, factor, offset=0.0):
        return x * factor + offset

    assert reg.build("scaled", 2.0, settings={"factor": 3.0, "unrelated": 1}) == 6.0
    assert reg.build("scaled", 2.0, settings={"factor": 3.0, "offset": 1.0}) == 7.0
    with pytest.raises(UserError, match="--thing scaled: needs a value for factor"):
        reg.build("scaled", 2.0, settings={})
    with pytest.raises(UserError, match="--thing 'other': unknown; choose one of scaled"):
        reg.build("other", 2.0)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("scaled")(scaled)
