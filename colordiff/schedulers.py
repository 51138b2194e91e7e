"""Named samplers: `--scheduler NAME` -> a diffusers scheduler built from a model's own scheduler config.

Building from the model's config (`from_config`) keeps what training fixed: the beta schedule, zero terminal SNR
(`rescale_betas_zero_snr`), the prediction type and the timestep spacing; the name only picks the solver. DDIM is
both papers' sampler (paper 000: 50 steps) and the default of every model folder colordiff writes.
"""

from __future__ import annotations

# name -> (diffusers class name, settings over the model's config); diffusers is imported only when one is built,
# so that the command line can list the names without loading it
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                        "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}


def make_scheduler(name: str, config):
    """The scheduler `name` (a key of SCHEDULERS) configured from `config` (e.g. `pipe.scheduler.config`)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    class_name, settings = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **settings)


def scheduler_name(scheduler) -> str:
    """The SCHEDULERS name of a scheduler object (its class name when it is none of them)."""
    for name, (class_name, settings) in SCHEDULERS.items():
        if type(scheduler).__name__ == class_name and all(scheduler.config.get(k, False) == v
                                                          for k, v in settings.items()):
            return name
    return type(scheduler).__name__


def scheduler_prediction_type(scheduler) -> str:
    """What a scheduler is set to take from the network (its config's `prediction_type`; epsilon when absent)."""
    return scheduler.config.get("prediction_type", "epsilon")


def check_prediction_type(network, scheduler) -> None:
    """Refuse a scheduler set for another prediction type than the one the network was trained for (recorded in its
    config as `prediction_type`; epsilon when absent): sampling a v-prediction model as epsilon gives garbage."""
    trained = getattr(network.config, "prediction_type", None) or "epsilon"
    used = scheduler_prediction_type(scheduler)
    if trained != used:
        raise ValueError(f"the model was trained for prediction_type {trained!r} but the scheduler "
                         f"({type(scheduler).__name__}) is set for {used!r}; build schedulers from the model's own "
                         "config: type(...).from_config(pipe.scheduler.config)")
