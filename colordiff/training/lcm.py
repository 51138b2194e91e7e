"""The math of latent consistency distillation (LCM: Luo et al. 2023, Algorithm 1), on the teacher's noise schedule.

A consistency function f(z_t, t) = c_skip(t) z_t + c_out(t) x0_hat(z_t, t) maps every point of a probability-flow
ODE trajectory to its origin; the boundary scalings make f(z, 0) = z exactly. Distillation pulls f_theta(z_{t_{n+k}})
towards f_target(z_hat_{t_n}), where z_hat_{t_n} is one skipping-step DDIM solve of the guided teacher from z_{t_{n+k}}
over k training timesteps. The formulas follow diffusers' consistency-distillation example
(examples/consistency_distillation/train_lcm_distill_sd_wds.py) and its LCMScheduler.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler


def _at(values: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] per example, shaped (B, 1, ..., 1) to broadcast over a (B, ...) tensor of `ndim` dims."""
    picked = values.to(timesteps.device)[timesteps]
    return picked.reshape(-1, *([1] * (ndim - 1)))


def boundary_scalings(timesteps: torch.Tensor, timestep_scaling: float = 10.0,
                      sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of LCM's parameterisation (LCMScheduler.get_scalings_for_boundary_condition_discrete):
    c_skip = s^2 / ((k t)^2 + s^2), c_out = k t / sqrt((k t)^2 + s^2), s = sigma_data, k = timestep_scaling;
    at t = 0 they are (1, 0), so f(z, 0) = z."""
    scaled = timestep_scaling * timesteps.double()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.float(), c_out.float()


class ConsistencySchedule:
    """The teacher's noise schedule (its scheduler config: betas, zero terminal SNR, prediction type) with the
    skipping-step DDIM solver over `num_ddim_timesteps` of its training timesteps.

    The solver's timesteps are t_i = (i + 1) k - 1 for i = 0..N-1, k = T // N (19, 39, ..., 999 for T = 1000, N = 50:
    the `original_inference_steps` grid LCMScheduler samples on). A solver step goes from t_i to t_i - k (0 for i = 0).
    """

    def __init__(self, scheduler_config, num_ddim_timesteps: int = 50, timestep_scaling: float = 10.0):
        self.noise_scheduler = DDPMScheduler.from_config(scheduler_config)  # forward process q(z_t | z_0)
        config = self.noise_scheduler.config
        self.prediction_type = config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} (epsilon or v_prediction)")
        total = config.num_train_timesteps
        if not 1 <= num_ddim_timesteps <= total:
            raise ValueError(f"num_ddim_timesteps must be in [1, {total}] (the teacher's training timesteps), "
                             f"got {num_ddim_timesteps}")
        alphas_cumprod = self.noise_scheduler.alphas_cumprod  # (T,) float32
        self.alphas, self.sigmas = alphas_cumprod.sqrt(), (1.0 - alphas_cumprod).sqrt()  # sqrt(abar), sqrt(1 - abar)
        self.step_size = total // num_ddim_timesteps  # k
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1) * self.step_size - 1  # (N,) long
        self.alphas_cumprod_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])  # (N,)
        if self.prediction_type == "epsilon" and (self.alphas[self.timesteps] == 0).any():
            raise ValueError("an epsilon-prediction teacher on a zero terminal SNR schedule has no x0 estimate at "
                             "its last timestep; distill a v_prediction teacher")
        self.timestep_scaling = timestep_scaling

    def to(self, device) -> ConsistencySchedule:
        """Keep the tables on `device`: every training step indexes them there (a CPU table copied to the GPU at each
        use would wait for the GPU each time)."""
        for name in ("alphas", "sigmas", "timesteps", "alphas_cumprod_prev"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def previous_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """t_n = t_{n+k} - k for solver indices (B,), clamped at 0."""
        return (self.timesteps.to(index.device)[index] - self.step_size).clamp_min(0)

    def predicted_original(self, output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x0_hat from a network output: (z - sigma eps) / alpha, or alpha z - sigma v for v-prediction."""
        alpha, sigma = _at(self.alphas, timesteps, sample.ndim), _at(self.sigmas, timesteps, sample.ndim)
        if self.prediction_type == "epsilon":
            return (sample - sigma * output) / alpha
        return alpha * sample - sigma * output

    def predicted_noise(self, output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """eps_hat from a network output: eps itself, or alpha v + sigma z for v-prediction."""
        if self.prediction_type == "epsilon":
            return output
        alpha, sigma = _at(self.alphas, timesteps, sample.ndim), _at(self.sigmas, timesteps, sample.ndim)
        return alpha * output + sigma * sample

    def ddim_step(self, pred_original: torch.Tensor, pred_noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """DDIM (eta 0) from t_index to the previous solver timestep: sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps."""
        prev = _at(self.alphas_cumprod_prev, index, pred_original.ndim)
        return prev.sqrt() * pred_original + (1.0 - prev).sqrt() * pred_noise

    def consistency(self, output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """f(z_t, t) = c_skip(t) z_t + c_out(t) x0_hat(z_t, t) (the LCM parameterisation)."""
        c_skip, c_out = boundary_scalings(timesteps, self.timestep_scaling)
        shape = (-1, *([1] * (sample.ndim - 1)))
        return c_skip.view(shape) * sample + c_out.view(shape) * self.predicted_original(output, timesteps, sample)


def consistency_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "huber",
                     huber_c: float = 0.001) -> torch.Tensor:
    """l2: mean (f - f_target)^2; huber (pseudo-Huber, as LCM): mean sqrt((f - f_target)^2 + c^2) - c."""
    prediction, target = prediction.float(), target.float()
    if loss_type == "l2":
        return F.mse_loss(prediction, target)
    if loss_type == "huber":
        return (torch.sqrt((prediction - target) ** 2 + huber_c**2) - huber_c).mean()
    raise ValueError(f"unknown loss_type {loss_type!r} (huber or l2)")
