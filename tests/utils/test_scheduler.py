"""Learning-rate schedules: values at chosen steps, no restarted warm-up, no rise after the end."""

import math

import pytest
import torch

from utils.scheduler import SCHEDULES, build_scheduler, lr_multiplier


def test_warmup_is_linear_and_reaches_the_peak_at_warmup_steps():
    for kind in ("warmup_cosine", "warmup_linear", "constant_with_warmup"):
        assert lr_multiplier(0, kind, 10, 100) == pytest.approx(0.1)
        assert lr_multiplier(4, kind, 10, 100) == pytest.approx(0.5)
        assert lr_multiplier(9, kind, 10, 100) == pytest.approx(1.0)


def test_cosine_and_linear_values_after_warmup():
    # Halfway through the decay phase (steps 10..110): cosine 0.5 of the range above the floor.
    assert lr_multiplier(59, "warmup_cosine", 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(59, "warmup_linear", 10, 110, 0.0) == pytest.approx(0.5)
    assert lr_multiplier(109, "warmup_cosine", 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(50, "constant_with_warmup", 10, 110) == 1.0


def test_noam_peaks_at_warmup_then_decays_as_inverse_sqrt():
    assert lr_multiplier(99, "noam", 100, 0) == pytest.approx(1.0)
    assert lr_multiplier(399, "noam", 100, 0) == pytest.approx(0.5)
    assert lr_multiplier(49, "noam", 100, 0) == pytest.approx(0.5)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_never_rises_after_the_peak_and_stays_at_the_end_value(kind):
    values = [lr_multiplier(s, kind, 10, 100, 0.05) for s in range(10, 400)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    assert min(values) >= 0.05 - 1e-12
    if kind != "constant_with_warmup" and kind != "noam":
        assert values[-1] == values[150] == pytest.approx(0.05)


def test_resumed_scheduler_continues_without_restarting_warmup():
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        return opt, build_scheduler(opt, "warmup_cosine", 5, 20)

    opt, sch = make()
    for _ in range(7):
        opt.step(), sch.step()
    state = sch.state_dict()
    opt2, sch2 = make()
    sch2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # restored with the optimizer state
    assert opt2.param_groups[0]["lr"] == pytest.approx(2.0 * lr_multiplier(7, "warmup_cosine", 5, 20))
    opt2.step(), sch2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(2.0 * lr_multiplier(8, "warmup_cosine", 5, 20))
    assert opt2.param_groups[0]["lr"] > 2.0 * lr_multiplier(0, "warmup_cosine", 5, 20)


def test_unknown_schedule_names_the_allowed_values():
    with pytest.raises(ValueError, match="warmup_cosine, warmup_linear"):
        lr_multiplier(0, "step", 1, 2)
    assert not math.isnan(lr_multiplier(0, "warmup_cosine", 0, 0))
