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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Bundle, load_bundle, load_state, module_tensors, save_bundle
from .condition_options import NO_CONDITION, check_same_options, condition_meta, read_stored
from .conditions import Condition
from .errors import CheckpointError, ImageError, RecipeError, VqtError
from .images import pixel_size
from .models.local_transformer import LocalGPT, build_transformer
from .models.transformer import GPT, GPTConfig
from .recipes import ConditionConfig
from .plugins import get_condition
from .editing import code_mask, place, sample_masked
from .sampling import GuidedGPT, Progress, sample_raster, sample_sliding
from .sampling_local import Guidance, sample_local
from .stage1 import Stage1Model


ARCHITECTURE_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")  # bundle config -> GPTConfig
LOCAL_KEYS = ("attention", "neighbourhood")  # only local models store them: older bundles are "full"


@dataclass
class ConditionSpec:
    """A condition plugin with its parsed options and, when it has one, its loaded VQGAN stage.

    `dropout` (condition.dropout) > 0 gives a grid condition classifier-free guidance whatever its
    plugin: one more token id, the null token, stands for "no condition", and training replaces a
    whole grid by it with that probability."""

    condition: Condition
    options: Any
    stage: Stage1Model | None
    dropout: float = 0.0

    @classmethod
    def from_config(cls, cfg: ConditionConfig, where: str, device: str | torch.device = "cpu") -> ConditionSpec | None:
        if not cfg.name:
            return None
        condition = get_condition(cfg.name)
        options = condition.parse_options(cfg.options, where)
        stage = None
        if condition.has_stage:
            if not cfg.stage:
                channels = condition.stage_channels(options)
                raise RecipeError(f"{where}: condition '{cfg.name}' needs its VQGAN: set condition.stage to a "
                                  "bundle trained with 'vqt train-stage1' on a recipe with the same [condition] "
                                  f"and model.in_channels = model.out_channels = {channels}")
            stage = Stage1Model.load(cfg.stage, device)
            _check_stage(condition, options, stage, cfg.stage, where)
        if cfg.dropout and not (condition.kind == "spatial" and condition.has_stage):
            raise RecipeError(f"{where}: condition.dropout applies to spatial conditions encoded by a VQGAN, not "
                              f"'{cfg.name}' ({condition.kind}); see its own options with 'vqt plugins'")
        return cls(condition, options, stage, cfg.dropout)

    @property
    def name(self) -> str:
        return self.condition.name

    @property
    def grid_like(self) -> bool:
        """Spatial and positional conditions are index grids cropped with the image's window."""
        return self.condition.kind in ("spatial", "positional")

    def vocab_size(self) -> int:
        return self.condition.vocab_size(self.options, self.stage) + (1 if self.dropout else 0)

    @torch.no_grad()
    def tokens(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw conditions (B, ...) -> (B, h, w) grids or (B, L) tokens."""
        return self.condition.tokens(raw, self.options, self.stage)

    def from_item(self, item: dict[str, Any]) -> torch.Tensor:
        """The raw condition of a dataset item."""
        return self.condition.from_item(item, self.options)

    def read(self, spec: str, size: tuple[int, int]) -> torch.Tensor:
        """The raw condition from `vqt sample --cond SPEC` for an image of `size` (H, W).

        For spatial kinds the core checks the file's size before the plugin reads it, and the raw
        condition's size after: a map of another size would be misplaced, whatever the plugin checks."""
        want = f"--size {size[1]}x{size[0]}"
        if self.condition.kind == "spatial" and self.condition.read_size == "sample":
            found = pixel_size(spec)
            if found is not None and found != tuple(size):
                raise ImageError(f"--cond {spec} is {found[1]}x{found[0]} pixels but {want}; condition "
                                 f"'{self.name}' needs a file of exactly the sample size")
        raw = self.condition.read(spec, size, self.options)
        if self.grid_like and tuple(raw.shape[-2:]) != tuple(size):
            raise ImageError(f"--cond {spec}: condition '{self.name}' read it as a {raw.shape[-1]}x"
                             f"{raw.shape[-2]} map but {want}; its plugin's read() must return (C, H, W) "
                             "at the sample size")
        return raw

    def render(self, raw: torch.Tensor) -> Any:
        """An RGB uint8 (H, W, 3) picture of a raw condition."""
        return self.condition.render(raw, self.options)

    def train_tokens(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Tokens as the transformer sees them in training: whole grids dropped to the null token
        with probability `dropout`, or what the plugin does (e.g. class label dropout)."""
        if not self.dropout:
            return self.condition.train_tokens(tokens, self.options, generator)
        drop = torch.rand(len(tokens), generator=generator, device=generator.device) < self.dropout
        return torch.where(drop.to(tokens.device)[:, None, None], self.null_token, tokens)  # (B, h, w)

    def null_tokens(self) -> torch.Tensor | None:
        """The "no condition" tokens for classifier-free guidance, or None."""
        if self.dropout:
            return torch.tensor([self.null_token])
        return self.condition.null_tokens(self.options)

    @property
    def null_token(self) -> int:
        """With `dropout`: the id after the plugin's own tokens."""
        return self.condition.vocab_size(self.options, self.stage)

    def fidelity(self, images: torch.Tensor, raw: torch.Tensor) -> dict[str, float]:
        """How faithfully samples follow the raw condition `raw` (figures named by the plugin)."""
        return self.condition.fidelity(images, raw, self.options)

    def meta(self) -> dict[str, Any]:
        """The name, every option (defaults included) and the plugin: what bundles and manifests store."""
        return condition_meta(self.condition, self.options)


def _check_stage(condition: Condition, options: Any, stage: Stage1Model, path: str, where: str) -> None:
    trained_for = stage.condition.get("name")
    if trained_for and trained_for != condition.name:
        raise VqtError(f"condition stage {path} was trained for '{trained_for}', not '{condition.name}'")
    if trained_for:  # (the image VQGAN may serve as a stage too: it records no condition)
        _, trained_with = read_stored(stage.condition, f"condition stage {path}")
        check_same_options(condition, trained_with, options, f"condition stage {path}", where,
                           "set the recipe's options as the stage was trained, or train a condition stage "
                           "with these options")
    want = condition.stage_channels(options)
    have = stage.model_config.in_channels
    if want != have:
        raise VqtError(f"condition stage {path} reads {have} channels, but condition '{condition.name}' "
                       f"with these options gives {want}; train its VQGAN with model.in_channels = {want}")


def check_condition_grid(spec: ConditionSpec | None, raw: torch.Tensor, grid: tuple[int, int], where: str) -> None:
    """A spatial/positional condition must tokenize to the image's code grid (same factor f)."""
    if spec is None or not spec.grid_like:
        return
    tokens = spec.tokens(raw[None])  # (1, h, w)
    if tuple(tokens.shape[1:]) != tuple(grid):
        raise RecipeError(f"{where}: condition '{spec.name}' gives a {tokens.shape[2]}x{tokens.shape[1]} token "
                          f"grid but the image gives {grid[1]}x{grid[0]} codes; its tokens must use the image "
                          "VQGAN's factor f (a condition VQGAN with as many downsamplings)")


def prefix_length(spec: ConditionSpec | None, window: int, global_tokens: int = 1) -> int:
    if spec is None:
        return 1  # the start token
    return window * window if spec.grid_like else global_tokens


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
