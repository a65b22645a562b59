"""SPEC 3's scheduler from a model's saved scheduler config: pure rules."""

from __future__ import annotations

import pytest

from critifusion_tui.engine.scheduler_plan import describe_scheduler, scheduler_label, scheduler_overrides

EULER = {"_class_name": "EulerDiscreteScheduler", "prediction_type": "epsilon", "timestep_spacing": "leading"}


def test_conflicting_sigma_options_are_switched_off_and_recorded():
    saved = {**EULER, "use_exponential_sigmas": True, "use_beta_sigmas": True}
    overrides = scheduler_overrides(saved)
    assert overrides["use_karras_sigmas"] is True
    assert overrides["use_exponential_sigmas"] is False and overrides["use_beta_sigmas"] is False
    assert describe_scheduler(saved)["ignored"] == ["use_beta_sigmas", "use_exponential_sigmas"]


def test_prediction_type_is_kept_and_the_solver_is_spec_3():
    saved = {
        "_class_name": "DPMSolverMultistepScheduler",
        "algorithm_type": "sde-dpmsolver++",
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
    }
    summary = describe_scheduler(saved)
    assert summary["algorithm"] == "dpmsolver++" and summary["prediction_type"] == "v_prediction"
    assert summary["timestep_spacing"] == "trailing" and "algorithm_type=sde-dpmsolver++" in summary["ignored"]
    assert scheduler_label(summary) == "DPM-Solver++ multistep (Karras sigmas), v_prediction, trailing spacing"


def test_a_flow_matching_scheduler_is_refused():
    with pytest.raises(ValueError, match="flow_prediction"):
        scheduler_overrides({"prediction_type": "flow_prediction"})
