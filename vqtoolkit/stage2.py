"""Stage 2 as an object: first stage + condition stage + transformer, and sampling at any size.

    from vqtoolkit import Stage2Model
    model = Stage2Model.load("runs/quickstart-stage2/last.safetensors")
    images, codes = model.sample(n=2, size=(576, 1024), seed=0)   # (2, 3, 576, 1024), (2, 36, 64)
    images, codes = model.edit(image, n=1, mask=mask)              # inpaint (C, H, W) where mask (H, W)

The token sequence is condition tokens first (a start token when unconditional, a class token, or a
window of a spatial condition's index grid), then the image's codes in raster order. Sizes larger
than the training window are sampled with the sliding window of the paper (Fig. 3); a local-attention
transformer (transformer.attention = "local") samples every size with its rolling cache instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Bundle, load_bundle, load_state, module_tensors, save_bundle
from .condition_options import NO_CONDITION, read_stored
from .errors import CheckpointError, ImageError, VqtError
from .models.local_transformer import LocalGPT, build_transformer
from .models.transformer import GPT, GPTConfig
from .editing import code_mask, place, sample_masked
from .sampling import GuidedGPT, Progress, sample_raster, sample_sliding
from .sampling_local import Guidance, sample_local
from .condition_spec import ConditionSpec
from .stage1 import Stage1Model


ARCHITECTURE_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")  # bundle config -> GPTConfig
LOCAL_KEYS = ("attention", "neighbourhood")  # only local models store them: older bundles are "full"


def crop_window(grid: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    """(B, H, W) -> (B, h·w) tokens of the window at (top, left), in raster order."""
    return grid[:, top:top + h, left:left + w].reshape(grid.shape[0], -1)


class Stage2Model:
    """Everything `vqt sample` needs, as one object (what a stage-2 bundle holds)."""

    def __init__(self, first_stage: Stage1Model, gpt: GPT | LocalGPT, window: int,
                 condition: ConditionSpec | None, sos_token: int = 0) -> None:
        self.first_stage = first_stage
        self.gpt = gpt
        self.window = window
        self.condition = condition
        self.sos_token = sos_token

    # ---- files ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        architecture = {k: v for k, v in dataclasses.asdict(self.gpt.config).items() if not k.endswith("_pdrop")
                        and (self.local or k not in LOCAL_KEYS)}
        config: dict[str, Any] = {
            "first_stage": self.first_stage.config(),
            "transformer": {**architecture, "window": self.window},
            "condition": self.condition.meta() if self.condition else NO_CONDITION,
            "sos_token": self.sos_token,
        }
        if self.condition and self.condition.stage:
            config["cond_stage"] = self.condition.stage.config()
        if self.condition and self.condition.dropout:
            config["condition_dropout"] = self.condition.dropout
        return config

    def tensors(self, gpt: GPT | None = None) -> dict[str, torch.Tensor]:
        tensors = {**self.first_stage.tensors("vqgan"), **module_tensors("transformer", gpt or self.gpt)}
        if self.condition and self.condition.stage:
            tensors.update(self.condition.stage.tensors("cond"))
        return tensors

    def save(self, path: str | Path, force: bool = False, gpt: GPT | None = None) -> None:
        """Write the bundle; `gpt` substitutes other weights (e.g. the EMA copy) for the transformer."""
        save_bundle(path, self.tensors(gpt), kind="stage2", config=self.config(),
                    condition=self.config()["condition"], force=force)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str | torch.device = "cpu") -> Stage2Model:
        config = bundle.config
        missing = [k for k in ("first_stage", "transformer") if k not in config]
        if missing:
            raise CheckpointError(f"{bundle.path} is damaged: its config lacks {', '.join(missing)}")
        first = Stage1Model.from_bundle(bundle, "vqgan", "first_stage")
        spec = None
        cond = config.get("condition") or {}
        if cond.get("name"):
            condition, options = read_stored(cond, f"model bundle {bundle.path}")
            stage = Stage1Model.from_bundle(bundle, "cond", "cond_stage") if "cond_stage" in config else None
            if condition.has_stage and stage is None:
                raise CheckpointError(f"{bundle.path} is damaged: condition '{condition.name}' needs its "
                                      "VQGAN, but the bundle has no cond_stage")
            spec = ConditionSpec(condition, options, stage, float(config.get("condition_dropout", 0.0)))
        t = config["transformer"]
        local = {k: tuple(t[k]) if isinstance(t[k], list) else t[k] for k in LOCAL_KEYS if k in t}
        gpt_config = GPTConfig(**{k: t[k] for k in ARCHITECTURE_KEYS}, **local)  # dropouts off: for inference
        gpt = build_transformer(gpt_config, int(t["window"]), spec is not None and spec.grid_like)
        load_state(gpt, bundle.namespace("transformer"), f"{bundle.path} (transformer.*)")
        model = cls(first, gpt.eval(), int(t["window"]), spec, int(config.get("sos_token", 0)))
        return model.to(device)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Stage2Model:
        return cls.from_bundle(load_bundle(path, expect_kind="stage2"), device)

    def to(self, device: str | torch.device) -> Stage2Model:
        self.first_stage.vqgan.to(device)
        self.gpt.to(device)
        if self.condition and self.condition.stage:
            self.condition.stage.vqgan.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.gpt.tok_emb.weight.device

    @property
    def factor(self) -> int:
        return self.first_stage.factor

    @property
    def local(self) -> bool:
        """A local-attention transformer: rolling-cache sampling, no sliding window."""
        return self.gpt.config.attention == "local"

    # ---- sequences ---------------------------------------------------------------------------

    def prefix_fn(self, cond_tokens: torch.Tensor | None, batch: int) -> Callable[[int, int], torch.Tensor]:
        """prefix_for_window(top, left) for the sampler: the condition tokens of that window."""
        w = self.window
        if cond_tokens is None:
            start = torch.full((batch, 1), self.sos_token, dtype=torch.long, device=self.device)
            return lambda top, left: start
        if cond_tokens.ndim == 3:
            return lambda top, left: crop_window(cond_tokens, top, left, w, w)
        return lambda top, left: cond_tokens

    def check_size(self, height: int, width: int) -> tuple[int, int]:
        """The code grid (h, w) for an image of height × width pixels, or a clear error."""
        f = self.factor
        if height % f or width % f:
            def near(v: int) -> str:
                lo, hi = max(f, v // f * f), (v // f + 1) * f
                return f"{lo} or {hi}" if lo != hi and v % f else str(lo)
            raise ImageError(f"--size {width}x{height} is not a multiple of the model's factor {f}: "
                             f"use width {near(width)} and height {near(height)}")
        h, w = height // f, width // f
        if not self.local and (h < self.window or w < self.window):
            side = self.window * f
            raise ImageError(f"--size {width}x{height} is smaller than the model's window of "
                             f"{side}x{side} pixels ({self.window}x{self.window} codes at f={f})")
        return h, w

    @torch.no_grad()
    def condition_tokens(self, raw: torch.Tensor | None, grid: tuple[int, int], n: int) -> torch.Tensor | None:
        """Tokens of one raw condition, repeated for `n` samples; grids must match the image grid."""
        if self.condition is None:
            if raw is not None:
                raise VqtError("this model is unconditional; drop --cond/--class")
            return None
        if raw is None:
            raise VqtError(f"this model is conditioned on '{self.condition.name}'; pass --cond "
                           f"(or --class for class conditions)")
        tokens = self.condition.tokens(raw[None].to(self.device))  # (1, h, w) or (1, L)
        if tokens.ndim == 3 and tuple(tokens.shape[1:]) != grid:
            raise VqtError(f"the '{self.condition.name}' condition encodes a {raw.shape[-1]}x{raw.shape[-2]} "
                           f"map to a {tokens.shape[2]}x{tokens.shape[1]} grid but the image grid is "
                           f"{grid[1]}x{grid[0]} codes; its tokens must use the image VQGAN's factor "
                           f"f = {self.factor}")
        return tokens.expand(n, *tokens.shape[1:])

    @torch.no_grad()
    def sample(self, n: int, size: tuple[int, int], *, cond: torch.Tensor | None = None, seed: int = 0,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               window_stride: int | None = None, progress: Callable[[int, int], None] | None = None,
               batch_size: int = 8, cfg_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `n` images of size (height, width) pixels; returns images (n, C, H, W) in [-1, 1]
        and their codes (n, h, w). The same seed gives the same images. `window_stride` defaults to
        half the window (benchmarks/README.md: near stride 1's quality, 7.6x the reference's speed).
        `cfg_scale` != 1 applies classifier-free guidance (conditions trained with a null token).
        Local-attention models sample every size with their rolling cache and refuse `window_stride`."""
        grid = self.check_size(*size)
        stride = self._stride(window_stride)
        draws = dict(temperature=temperature, top_k=top_k, top_p=top_p, n_codes=self.first_stage.n_codes)

        def draw(cond_tokens: torch.Tensor | None, b: int, generator: torch.Generator, step: Progress,
                 guidance: Guidance) -> torch.Tensor:
            if self.local:
                return sample_local(self.gpt, self._local_condition(cond_tokens, b), grid, generator=generator,
                                    progress=step, guidance=guidance, **draws)
            gpt, prefix_fn = self._guided(guidance), self.prefix_fn(cond_tokens, b)
            if grid == (self.window, self.window):
                out = sample_raster(gpt, prefix_fn(0, 0), grid[0] * grid[1], generator=generator,
                                    progress=step, **draws)
                return out.reshape(b, *grid)  # (b, h, w)
            return sample_sliding(gpt, prefix_fn, grid, (self.window, self.window), stride=stride,
                                  generator=generator, progress=step, **draws)

        return self._draw(draw, n, grid, grid[0] * grid[1], cond, seed, cfg_scale, batch_size, progress)

    @torch.no_grad()
    def edit(self, image: torch.Tensor, n: int, *, mask: torch.Tensor | None = None,
             size: tuple[int, int] | None = None, anchor: str = "center", cond: torch.Tensor | None = None,
             seed: int = 0, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             window_stride: int | None = None, progress: Callable[[int, int], None] | None = None,
             batch_size: int = 8, cfg_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Inpaint and/or outpaint `image` (C, h, w) in [-1, 1]; returns images and codes as `sample`.

        The image is encoded to codes; the codes under `mask` (h, w) bool (True = resample, a code
        when any pixel of its cell is True) and, when `size` (H, W) is larger than the image, the
        whole area around it (the image sits at `anchor`, see `anchors.ANCHORS`) are sampled in
        raster order (`editing.sample_masked`); every other code is kept bit for bit."""
        grid = self.check_size(*(size or tuple(image.shape[-2:])))
        codes = self.first_stage.encode(image[None])[0]  # (h, w)
        keep, resample = place(codes, None if mask is None else code_mask(mask, self.factor), grid, anchor)
        stride = self._stride(window_stride)
        draws = dict(temperature=temperature, top_k=top_k, top_p=top_p, n_codes=self.first_stage.n_codes)

        def draw(cond_tokens: torch.Tensor | None, b: int, generator: torch.Generator, step: Progress,
                 guidance: Guidance) -> torch.Tensor:
            if self.local:
                return sample_local(self.gpt, self._local_condition(cond_tokens, b), grid, codes=keep.expand(b, *grid),
                                    mask=resample, generator=generator, progress=step, guidance=guidance, **draws)
            return sample_masked(self._guided(guidance), self.prefix_fn(cond_tokens, b), keep.expand(b, *grid),
                                 resample, (self.window, self.window), stride=stride, generator=generator,
                                 progress=step, **draws)

        return self._draw(draw, n, grid, int(resample.sum()), cond, seed, cfg_scale, batch_size, progress)

    def _stride(self, window_stride: int | None) -> int:
        if self.local and window_stride is not None:
            raise VqtError("--window-stride applies to full-attention transformers only; this model has "
                           "local attention and samples every size with its rolling cache")
        return window_stride if window_stride is not None else max(1, self.window // 2)

    def _guided(self, guidance: Guidance) -> Any:
        """The GPT for the full-attention samplers; a grid's one null token fills its whole window."""
        if guidance is None:
            return self.gpt
        null, scale = guidance
        if self.condition is not None and self.condition.grid_like:
            null = null.expand(self.window * self.window)
        return GuidedGPT(self.gpt, null, scale)

    def _local_condition(self, cond_tokens: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The local sampler's condition: the whole grid, the global tokens, or the start token."""
        return self.prefix_fn(None, batch)(0, 0) if cond_tokens is None else cond_tokens

    def _draw(self, draw: Callable[..., torch.Tensor], n: int, grid: tuple[int, int], per_sample: int,
              cond: torch.Tensor | None, seed: int, cfg_scale: float, batch_size: int,
              progress: Callable[[int, int], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """What `sample` and `edit` share: guidance, one generator, the condition encoded once, batches
        of `draw(cond_tokens, b, generator, step, guidance)` with progress over `per_sample` codes each, decoding."""
        if n < 1:
            raise VqtError(f"--n must be at least 1, got {n}")
        guidance = None
        if cfg_scale != 1.0:
            null = self.condition.null_tokens() if self.condition else None
            if null is None:
                raise VqtError(f"--cfg-scale needs a model trained with a null condition (condition.dropout "
                               f"for grid conditions, label_dropout for class); "
                               f"this model's is '{self.condition.name if self.condition else 'none'}'")
            guidance = (null.to(self.device), cfg_scale)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        cond_tokens_1 = self.condition_tokens(cond, grid, 1)  # encoded once, shared by every batch
        codes, done, total = [], 0, n * per_sample
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            cond_tokens = None if cond_tokens_1 is None else cond_tokens_1.expand(b, *cond_tokens_1.shape[1:])

            def step(k: int, _: int, offset: int = done) -> None:
                if progress is not None:
                    progress(offset + k * b, total)

            codes.append(draw(cond_tokens, b, generator, step, guidance))
            done += b * per_sample
        codes_t = torch.cat(codes)  # (n, h, w)
        images = torch.cat([self.first_stage.decode(codes_t[i:i + batch_size])
                            for i in range(0, n, batch_size)])
        return images, codes_t
