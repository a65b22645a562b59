"""The scheduler SPEC 3 asks for, built from a model's own scheduler config.

SPEC 3: DPM-Solver multistep with Karras sigmas. The model's saved scheduler config still
matters: it holds the training noise schedule (betas) and the ``prediction_type``, which a
v-prediction model needs or its images are grey mush. Other keys would silently change the
method, or crash: a saved ``use_exponential_sigmas: true`` beside our Karras sigmas is a
ValueError in diffusers, ``use_beta_sigmas`` needs scipy, ``sde-dpmsolver++`` is a different
(stochastic) solver. So the plan keeps the schedule and the prediction type, and sets the rest.

Pure: reads a dict, imports nothing heavy, so ``doctor`` shows the very scheduler ``run`` builds.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEDULER_CLASS", "describe_scheduler", "scheduler_label", "scheduler_overrides"]

SCHEDULER_CLASS = "DPMSolverMultistepScheduler"

# What SPEC 3 fixes, whatever the model's config says.
_METHOD = {
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "use_karras_sigmas": True,
    # Only one sigma schedule may be on; the others are switched off explicitly, because
    # `from_config` would otherwise inherit them from the saved config.
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "use_lu_lambdas": False,
    "use_dynamic_shifting": False,
    "thresholding": False,
    "lower_order_final": True,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
}
# Keys of the saved config the plan keeps: the training schedule and what the UNet predicts.
_KEPT = ("prediction_type", "timestep_spacing", "num_train_timesteps", "beta_schedule")


def scheduler_overrides(saved: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides for ``DPMSolverMultistepScheduler.from_config(saved, **overrides)``."""
    overrides = dict(_METHOD)
    prediction = saved.get("prediction_type") or "epsilon"
    if prediction not in ("epsilon", "v_prediction", "sample"):
        # flow-matching models are not SDXL / SD 1.x; say so rather than guess.
        raise ValueError(
            f"the model's scheduler predicts {prediction!r}; DPM-Solver here supports epsilon, v_prediction and sample"
        )
    overrides["prediction_type"] = prediction
    return overrides


def describe_scheduler(saved: dict[str, Any]) -> dict[str, Any]:
    """What will run, for the manifest, ``doctor`` and the app (class, algorithm, sigmas, ...)."""
    overrides = scheduler_overrides(saved)
    kept = {key: saved.get(key) for key in _KEPT if saved.get(key) is not None}
    dropped = sorted(
        key
        for key in ("use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas", "use_lu_lambdas")
        if saved.get(key)
    )
    if saved.get("algorithm_type") not in (None, overrides["algorithm_type"]):
        dropped.append(f"algorithm_type={saved['algorithm_type']}")
    return {
        "class": SCHEDULER_CLASS,
        "algorithm": overrides["algorithm_type"],
        "sigmas": "karras",
        "timestep_spacing": kept.get("timestep_spacing", "linspace"),
        "prediction_type": overrides["prediction_type"],
        "from": saved.get("_class_name", "unknown"),
        "ignored": dropped,
    }


def scheduler_label(summary: dict[str, Any]) -> str:
    """One line for a person: ``DPM-Solver++ (Karras sigmas), epsilon, leading spacing``."""
    return (
        f"DPM-Solver++ multistep (Karras sigmas), {summary['prediction_type']}, {summary['timestep_spacing']} spacing"
    )
