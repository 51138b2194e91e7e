"""The attributes diffusers pipelines expose, shared by ColorDiffPipeline and SeAdaPipeline.

`vae_scale_factor`, `image_processor`, `guidance_scale`, `do_classifier_free_guidance`, `num_timesteps`,
`interrupt`, `_callback_tensor_inputs` and the VAE switches `enable_vae_slicing` / `enable_vae_tiling`, as
StableDiffusionPipeline has them; diffusers' StableDiffusionMixin (enable_freeu / fuse_qkv_projections) is mixed in
beside this.
"""

from __future__ import annotations

from diffusers.image_processor import VaeImageProcessor


class DiffusersConventionsMixin:
    """Mixed in before DiffusionPipeline. Call-time values (`guidance_scale`, `num_timesteps`, `interrupt`) are those
    of the running or last call, as in diffusers. `denoiser_model` is the network the pipeline denoises with (its
    config tells a distilled model and the prediction type)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "condition_latents"]
    _guidance_scale: float = 7.5
    _num_timesteps: int | None = None
    _interrupt: bool = False

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent cell along a side (8 for SD1.5's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Model sides must be multiples of this: the VAE's downsampling times the U-Net's."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def image_processor(self) -> VaeImageProcessor:
        """diffusers' VaeImageProcessor for this VAE (e.g. `postprocess` of decoded tensors). The pipelines' own
        pre- and post-processing is Lab-based (colordiff.images): gray from the exact L, L kept on output."""
        processor = self.__dict__.get("_image_processor")
        if processor is None or processor.config.vae_scale_factor != self.vae_scale_factor:
            processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
            self.__dict__["_image_processor"] = processor
        return processor

    # the VAE memory switches diffusers pipelines used to carry (diffusers now points to pipe.vae.enable_*)
    def enable_vae_slicing(self) -> None:
        """Decode (and encode) a batch image by image: peak memory of one image."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Decode in overlapping tiles blended at the seams (the luminance-aware decoder tiles its skips too)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs for scales above 1 (diffusers' rule), unless the U-Net takes the scale as an input (LCM)."""
        distilled = getattr(self.denoiser_model.config, "time_cond_proj_dim", None) is not None
        return self._guidance_scale > 1 and not distilled

    @property
    def denoiser_model(self):
        """The network that predicts the noise: the U-Net (SeAda: its control model, which runs the U-Net)."""
        return self.unet

    @property
    def num_timesteps(self) -> int | None:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt
