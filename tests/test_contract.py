"""The contract's hand-written constructors agree with their dataclass fields and stay frozen."""
import dataclasses
import inspect

import pytest

from policies.contract import NO_STATE, SchedulerView, StepPlan, StepResult


@pytest.mark.parametrize("cls", [StepPlan, SchedulerView, StepResult])
def test_written_out_init_matches_the_fields(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields):
        if f.default is not dataclasses.MISSING:
            assert p.default == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert p.default is None and f.default_factory() is NO_STATE, f.name
        else:
            assert p.default is inspect.Parameter.empty, f.name


def test_frozen_equal_and_replaceable():
    plan = StepPlan(decode=(1, 2), max_steps=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.max_steps = 4
    assert plan == StepPlan((1, 2), max_steps=3) and hash(plan) == hash(StepPlan((1, 2), max_steps=3))
    assert dataclasses.replace(plan, max_steps=1) == StepPlan(decode=(1, 2))
    r = StepResult(0.0, 1.0, 1, 2, finished=(1,))
    assert r.embeddings == {} and r.texts == {} and dataclasses.replace(r, tokens=3).finished == (1,)
    assert StepResult(0.0, 1.0, 1, 2, texts={1: "a"}).texts == {1: "a"}
    assert dataclasses.asdict(SchedulerView(1.0, (), None))["more_arrivals"] is True
