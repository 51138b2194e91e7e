"""Named samplers: `--scheduler NAME` -> a diffusers scheduler built from a model's own scheduler config.

Building from the model's config (`from_config`) keeps what training fixed: the beta schedule, zero terminal SNR
(`rescale_betas_zero_snr`), the prediction type and the timestep spacing; the name only picks the solver. DDIM is
both papers' sampler (paper 000: 50 steps) and the default of every model folder colordiff writes.
"""

from __future__ import annotations

# Where a sampler's steps lie on the training schedule, in every model folder colordiff writes: "trailing" spaces N
# steps down from the last training timestep (t = 999, 979, ... for 50 of 1,000), so that sampling always starts
# where training saw the most noise (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
# Sec. 3.3). SD1.5's own "leading" spacing starts 50 steps at t = 981, but one step at t = 1: the network then reads
# pure noise as an almost clean latent and returns it.
SAMPLING_SPACING = "trailing"

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


def ddim_sampler(config):
    """DDIM (both papers' sampler) on the schedule of a scheduler config, its steps spaced by SAMPLING_SPACING."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config, timestep_spacing=SAMPLING_SPACING)
