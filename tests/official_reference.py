"""A test-only transcription of the official IC-Light demos' `process()` (gradio_demo.py, gradio_demo_bg.py).

It drives diffusers' own StableDiffusionPipeline / StableDiffusionImg2ImgPipeline with the demos' hooked UNet
forward, so our engine can be compared against the official recipe on the same tiny weights and seed.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image


def _scheduler():
    # Exactly the official configuration (beta_schedule left at its default).
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        algorithm_type="sde-dpmsolver++",
        use_karras_sigmas=True,
        steps_offset=1,
    )


class OfficialDemo:
    """The official demo's module-level state, built from our loaded (already merged) models."""

    def __init__(self, models) -> None:
        self.tokenizer = models.tokenizer
        self.text_encoder = models.text_encoder
        self.vae = models.vae
        unet = copy.deepcopy(models.unet.unet)
        # The official demos swap conv_in without touching the config, so the pipelines still see 4 channels.
        unet.register_to_config(in_channels=4)
        original_forward = unet.forward

        def hooked_unet_forward(sample, timestep, encoder_hidden_states, **kwargs):
            c_concat = kwargs["cross_attention_kwargs"]["concat_conds"].to(sample)
            c_concat = torch.cat([c_concat] * (sample.shape[0] // c_concat.shape[0]), dim=0)
            new_sample = torch.cat([sample, c_concat], dim=1)
            kwargs["cross_attention_kwargs"] = {}
            return original_forward(new_sample, timestep, encoder_hidden_states, **kwargs)

        unet.forward = hooked_unet_forward
        self.unet = unet
        self.device = torch.device("cpu")
        parts = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet)
        extra = dict(safety_checker=None, requires_safety_checker=False, feature_extractor=None, image_encoder=None)
        scheduler = _scheduler()
        self.t2i = StableDiffusionPipeline(scheduler=scheduler, **parts, **extra)
        self.i2i = StableDiffusionImg2ImgPipeline(scheduler=scheduler, **parts, **extra)

    @torch.inference_mode()
    def encode_prompt_inner(self, txt):
        tok = self.tokenizer
        max_length = tok.model_max_length
        chunk_length = tok.model_max_length - 2
        id_start, id_end = tok.bos_token_id, tok.eos_token_id
        tokens = tok(txt, truncation=False, add_special_tokens=False)["input_ids"]
        chunks = [[id_start] + tokens[i : i + chunk_length] + [id_end] for i in range(0, len(tokens), chunk_length)]
        chunks = [
            ck[:max_length] if len(ck) >= max_length else ck + [id_end] * (max_length - len(ck)) for ck in chunks
        ]
        token_ids = torch.tensor(chunks).to(device=self.device, dtype=torch.int64)
        return self.text_encoder(token_ids).last_hidden_state

    @torch.inference_mode()
    def encode_prompt_pair(self, positive_prompt, negative_prompt):
        c = self.encode_prompt_inner(positive_prompt)
        uc = self.encode_prompt_inner(negative_prompt)
        max_count = max(float(len(c)), float(len(uc)))
        c_repeat = int(math.ceil(max_count / len(c)))
        uc_repeat = int(math.ceil(max_count / len(uc)))
        max_chunk = max(len(c), len(uc))
        c = torch.cat([c] * c_repeat, dim=0)[:max_chunk]
        uc = torch.cat([uc] * uc_repeat, dim=0)[:max_chunk]
        c = torch.cat([p[None, ...] for p in c], dim=1)
        uc = torch.cat([p[None, ...] for p in uc], dim=1)
        return c, uc

    @staticmethod
    def numpy2pytorch(imgs):
        return (torch.from_numpy(np.stack(imgs, axis=0)).float() / 127.0 - 1.0).movedim(-1, 1)

    @staticmethod
    def pytorch2numpy(imgs, quant=True):
        out = []
        for x in imgs:
            y = x.movedim(0, -1)
            if quant:
                out.append((y * 127.5 + 127.5).detach().float().cpu().numpy().clip(0, 255).astype(np.uint8))
            else:
                out.append((y * 0.5 + 0.5).detach().float().cpu().numpy().clip(0, 1).astype(np.float32))
        return out

    @staticmethod
    def resize_and_center_crop(image, target_width, target_height):
        pil_image = Image.fromarray(image)
        ow, oh = pil_image.size
        k = max(target_width / ow, target_height / oh)
        rw, rh = int(round(ow * k)), int(round(oh * k))
        pil_image = pil_image.resize((rw, rh), Image.LANCZOS)
        box = ((rw - target_width) / 2, (rh - target_height) / 2, (rw + target_width) / 2, (rh + target_height) / 2)
        return np.array(pil_image.crop(box))

    @staticmethod
    def resize_without_crop(image, target_width, target_height):
        return np.array(Image.fromarray(image).resize((target_width, target_height), Image.LANCZOS))

    def _encode(self, imgs):
        x = self.numpy2pytorch(imgs).to(device=self.vae.device, dtype=self.vae.dtype)
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.inference_mode()
    def process_fc(self, input_fg, prompt, w, h, num_samples, seed, steps, a_prompt, n_prompt, cfg,
                   highres_scale, highres_denoise, lowres_denoise, bg_source):  # fmt: skip
        input_bg = None
        if bg_source == "Left Light":
            input_bg = np.stack((np.tile(np.linspace(255, 0, w), (h, 1)),) * 3, axis=-1).astype(np.uint8)
        elif bg_source == "Right Light":
            input_bg = np.stack((np.tile(np.linspace(0, 255, w), (h, 1)),) * 3, axis=-1).astype(np.uint8)
        elif bg_source == "Top Light":
            input_bg = np.stack((np.tile(np.linspace(255, 0, h)[:, None], (1, w)),) * 3, axis=-1).astype(np.uint8)
        elif bg_source == "Bottom Light":
            input_bg = np.stack((np.tile(np.linspace(0, 255, h)[:, None], (1, w)),) * 3, axis=-1).astype(np.uint8)
        rng = torch.Generator(device=self.device).manual_seed(int(seed))
        fg = self.resize_and_center_crop(input_fg, w, h)
        concat_conds = self._encode([fg])
        conds, unconds = self.encode_prompt_pair(prompt + ", " + a_prompt, n_prompt)
        common = dict(prompt_embeds=conds, negative_prompt_embeds=unconds, width=w, height=h,
                      num_images_per_prompt=num_samples, generator=rng, output_type="latent", guidance_scale=cfg,
                      cross_attention_kwargs={"concat_conds": concat_conds})  # fmt: skip
        if input_bg is None:
            latents = self.t2i(num_inference_steps=steps, **common).images
        else:
            bg_latent = self._encode([self.resize_and_center_crop(input_bg, w, h)])
            latents = self.i2i(image=bg_latent, strength=lowres_denoise,
                               num_inference_steps=int(round(steps / lowres_denoise)), **common).images  # fmt: skip
        return self._highres(latents, [input_fg], w, h, num_samples, rng, steps, conds, unconds, cfg,
                             highres_scale, highres_denoise, quant=True)  # fmt: skip

    def process_fbc(self, *args):
        """gradio_demo_bg.py's process_relight after the matting: process(), then * 255 to uint8."""
        return [(x * 255.0).clip(0, 255).astype(np.uint8) for x in self.process_fbc_floats(*args)]

    @torch.inference_mode()
    def process_fbc_floats(self, input_fg, input_bg, prompt, w, h, num_samples, seed, steps, a_prompt, n_prompt,
                           cfg, highres_scale, highres_denoise, bg_source):  # fmt: skip
        """gradio_demo_bg.py's process(): float32 images in [0, 1]."""
        if bg_source == "Use Flipped Background Image":
            input_bg = np.fliplr(input_bg)
        elif bg_source == "Ambient":
            input_bg = np.zeros(shape=(h, w, 3), dtype=np.uint8) + 64
        elif bg_source == "Left Light":
            input_bg = np.stack((np.tile(np.linspace(224, 32, w), (h, 1)),) * 3, axis=-1).astype(np.uint8)
        elif bg_source == "Right Light":
            input_bg = np.stack((np.tile(np.linspace(32, 224, w), (h, 1)),) * 3, axis=-1).astype(np.uint8)
        elif bg_source == "Top Light":
            input_bg = np.stack((np.tile(np.linspace(224, 32, h)[:, None], (1, w)),) * 3, axis=-1).astype(np.uint8)
        elif bg_source == "Bottom Light":
            input_bg = np.stack((np.tile(np.linspace(32, 224, h)[:, None], (1, w)),) * 3, axis=-1).astype(np.uint8)
        rng = torch.Generator(device=self.device).manual_seed(seed)
        concat_conds = self._fbc_conds(input_fg, input_bg, w, h)
        conds, unconds = self.encode_prompt_pair(prompt + ", " + a_prompt, n_prompt)
        latents = self.t2i(prompt_embeds=conds, negative_prompt_embeds=unconds, width=w, height=h,
                           num_inference_steps=steps, num_images_per_prompt=num_samples, generator=rng,
                           output_type="latent", guidance_scale=cfg,
                           cross_attention_kwargs={"concat_conds": concat_conds}).images  # fmt: skip
        return self._highres(latents, [input_fg, input_bg], w, h, num_samples, rng, steps, conds, unconds, cfg,
                             highres_scale, highres_denoise, quant=False)  # fmt: skip

    def process_normal(self, input_fg, matting, input_bg, prompt, w, h, seed, steps, a_prompt, n_prompt, cfg,
                       highres_scale, highres_denoise):  # fmt: skip
        """gradio_demo_bg.py's process_normal after run_rmbg (input_fg matted onto grey, matting HxWx1)."""
        args = (input_fg, input_bg, prompt, w, h, 1, seed, steps, a_prompt, n_prompt, cfg, highres_scale,
                highres_denoise)  # fmt: skip
        sources = ("Left Light", "Right Light", "Bottom Light", "Top Light")
        left, right, bottom, top = (self.process_fbc_floats(*args, source)[0] for source in sources)
        return normal_gallery(left, right, bottom, top, matting)

    def _fbc_conds(self, input_fg, input_bg, w, h):
        fg = self.resize_and_center_crop(input_fg, w, h)
        bg = self.resize_and_center_crop(input_bg, w, h)
        cc = self._encode([fg, bg])
        return torch.cat([c[None, ...] for c in cc], dim=1)

    def _highres(self, latents, cond_inputs, w, h, num_samples, rng, steps, conds, unconds, cfg, highres_scale,
                 highres_denoise, quant):  # fmt: skip
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        pixels = self.pytorch2numpy(self.vae.decode(latents).sample)
        tw, th = int(round(w * highres_scale / 64.0) * 64), int(round(h * highres_scale / 64.0) * 64)
        pixels = [self.resize_without_crop(p, tw, th) for p in pixels]
        latents = self._encode(pixels).to(device=self.device, dtype=self.unet.dtype)
        h, w = latents.shape[2] * 8, latents.shape[3] * 8
        if len(cond_inputs) == 1:
            concat_conds = self._encode([self.resize_and_center_crop(cond_inputs[0], w, h)])
        else:
            concat_conds = self._fbc_conds(cond_inputs[0], cond_inputs[1], w, h)
        latents = self.i2i(image=latents, strength=highres_denoise, prompt_embeds=conds,
                           negative_prompt_embeds=unconds, width=w, height=h,
                           num_inference_steps=int(round(steps / highres_denoise)),
                           num_images_per_prompt=num_samples, generator=rng, output_type="latent",
                           guidance_scale=cfg,
                           cross_attention_kwargs={"concat_conds": concat_conds}).images  # fmt: skip
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return self.pytorch2numpy(self.vae.decode(latents).sample, quant=quant)


def normal_gallery(left, right, bottom, top, matting, sigma=6.0):
    """The rest of the official process_normal, expression for expression (the official hard-codes sigma = 6)."""
    inner_results = [left * 2.0 - 1.0, right * 2.0 - 1.0, bottom * 2.0 - 1.0, top * 2.0 - 1.0]
    ambient = (left + right + bottom + top) / 4.0
    h, w, _ = ambient.shape
    matting = (OfficialDemo.resize_and_center_crop((matting[..., 0] * 255.0).clip(0, 255).astype(np.uint8), w, h)
               .astype(np.float32)[..., None] / 255.0)  # fmt: skip

    def safa_divide(a, b):
        e = 1e-5
        return ((a + e) / (b + e)) - 1.0

    left, right, bottom, top = (safa_divide(x, ambient) for x in (left, right, bottom, top))
    u = np.mean((right - left) * 0.5, axis=2)
    v = np.mean((top - bottom) * 0.5, axis=2)
    h = (1.0 - u**2.0 - v**2.0).clip(0, 1e5) ** (0.5 * sigma)
    z = np.zeros_like(h)
    normal = np.stack([u, v, h], axis=2)
    normal /= np.sum(normal**2.0, axis=2, keepdims=True) ** 0.5
    normal = normal * matting + np.stack([z, z, 1 - z], axis=2) * (1 - matting)
    results = [normal, left, right, bottom, top] + inner_results
    return [(x * 127.5 + 127.5).clip(0, 255).astype(np.uint8) for x in results]
