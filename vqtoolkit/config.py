"""The recipe schema: every section of a recipe as a frozen, typed dataclass, and every default.

A recipe lists only what differs from the defaults below; the defaults are the paper's settings (the
f16 FFHQ VQGAN and a minGPT transformer) except where a comment says why we differ. This module is
the one home of every default but the options plugins declare (a condition's, a data source's): models
take these dataclasses (`VQLoss(LossConfig)`, `build_quantizer(QuantizerConfig)`), and `recipes.py`
reads and writes them as TOML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import RecipeError
from .schema import check_value as _check


@dataclass(frozen=True)
class DataConfig:
    """The keys every data source shares. A source's own keys (folder: root, val_root, crop, ...;
    synthetic: n, scene_size, ...) sit beside these in [data] and are checked by its `Options`."""

    source: str = "folder"  # a registered data source (`vqt plugins`): folder, paired (images/ + a folder per condition), synthetic, webdataset (shards from `vqt shard`)
    size: int = 256  # training crop size in pixels
    num_workers: int = 2  # DataLoader worker processes
    strict: bool = False  # fail on the first unreadable image instead of skipping and counting it
    tokens: str = ""  # stage 2: folder of token shards from `vqt tokenize` (empty: tokenize on the fly)
    options: Any = None  # the source's own keys, parsed by its Options (None: its defaults; see source_options.data_source)

    def __post_init__(self) -> None:
        _check(self.size >= 8, "data.size", self.size, "an integer >= 8")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """The VQGAN encoder/decoder (names as in the reference `ddconfig`)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # f = 2 ** (len(ch_mult) - 1) = 16
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)  # feature-map sizes (at `resolution`) with attention
    z_channels: int = 256
    in_channels: int = 3
    out_channels: int = 3
    dropout: float = 0.0
    resolution: int = 256  # nominal input size; only decides where attention sits
    # GroupNorm groups in every norm layer (32: the reference). At ch = 32 that is one channel per group,
    # an instance norm that discards each image's per-channel level; fewer groups keep it.
    norm_groups: int = 32
    encode_tile: int = 0  # encode larger images in overlapping tiles of this many pixels (0: whole): the crop size of a model trained on crops

    def __post_init__(self) -> None:
        _check(self.norm_groups >= 1 and 32 % self.norm_groups == 0, "model.norm_groups", self.norm_groups,
               "a divisor of 32 (1, 2, 4, 8, 16 or 32)")
        _check(self.encode_tile == 0 or (self.encode_tile % (2 * self.factor) == 0 and self.encode_tile >= 2 * self.factor),
               "model.encode_tile", self.encode_tile, f"0 or a multiple of twice the factor f ({2 * self.factor} pixels)")
        _check(self.ch > 0 and self.ch % 32 == 0, "model.ch", self.ch,
               "a positive multiple of 32 (GroupNorm uses 32 groups)")
        _check(len(self.ch_mult) >= 1 and all(m > 0 for m in self.ch_mult), "model.ch_mult",
               list(self.ch_mult), "a non-empty list of positive integers")
        _check(self.num_res_blocks >= 1, "model.num_res_blocks", self.num_res_blocks, "an integer >= 1")
        _check(self.z_channels >= 1, "model.z_channels", self.z_channels, "an integer >= 1")
        _check(self.in_channels >= 1, "model.in_channels", self.in_channels, "an integer >= 1")
        _check(self.out_channels >= 1, "model.out_channels", self.out_channels, "an integer >= 1")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "a number in [0, 1)")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class QuantizerConfig:
    """Which quantizer plugin to use; its own keys (n_codes, beta, levels, ...) are checked by that
    quantizer's `Options` (see `vqt plugins` and docs/recipes.md) and kept in `options`."""

    kind: str = "vq"  # a registered quantizer (`vqt plugins`): vq, gumbel, fsq
    embed_dim: int = 256  # channels of the map the quantizer reads and returns (the decoder's input)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.kind), "quantizer.kind", self.kind, "the name of a registered quantizer (vq, gumbel, fsq)")
        _check(self.embed_dim >= 1, "quantizer.embed_dim", self.embed_dim, "an integer >= 1")


@dataclass(frozen=True)
class LossConfig:
    pixel_loss: Literal["l1", "l2", "bce"] = "l1"  # bce: one-hot inputs (segmentation), logits out
    pixel_weight: float = 1.0
    perceptual_weight: float = 1.0  # LPIPS (VGG); 0 trains without it and needs no VGG weights
    perceptual_backbone: Literal["vgg", "random"] = "vgg"  # "random": smoke tests only, never silent
    codebook_weight: float = 1.0
    disc_start: int = 30001  # batches before the discriminator and the GAN term switch on
    disc_weight: float = 0.8
    disc_factor: float = 1.0
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    disc_layers: int = 3
    disc_ndf: int = 64
    disc_norm: Literal["actnorm", "batchnorm"] = "actnorm"
    disc_in_channels: int = 3
    l2_weight: float = 0.0  # a mean-squared-error term beside pixel_loss (PSNR measures MSE); 0: off
    lecam_weight: float = 0.0  # LeCAM regulariser of the discriminator (Tseng et al. 2021); 0: off
    lecam_decay: float = 0.99  # EMA decay of the mean real and fake logits that LeCAM anchors to

    def __post_init__(self) -> None:
        for key in ("pixel_weight", "perceptual_weight", "codebook_weight", "disc_weight", "disc_factor",
                    "l2_weight", "lecam_weight"):
            _check(getattr(self, key) >= 0, f"loss.{key}", getattr(self, key), "a number >= 0")
        _check(self.disc_start >= 0, "loss.disc_start", self.disc_start, "an integer >= 0")
        _check(self.disc_layers >= 1, "loss.disc_layers", self.disc_layers, "an integer >= 1")
        _check(self.l2_weight == 0 or self.pixel_loss != "bce", "loss.l2_weight", self.l2_weight,
               "0 with pixel_loss = 'bce' (one-hot inputs and logits have no squared pixel error)")
        _check(0.0 < self.lecam_decay < 1.0, "loss.lecam_decay", self.lecam_decay, "a number in (0, 1)")


@dataclass(frozen=True)
class ConditionConfig:
    """Which condition plugin to use; its own keys are checked by the plugin (see `vqt plugins`)."""

    name: str = ""  # empty: unconditional
    stage: str = ""  # path of the condition stage's VQGAN bundle, for conditions that need one
    dropout: float = 0.0  # probability of training on "no condition" instead of the grid (vqt sample --cfg-scale)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(0.0 <= self.dropout < 1.0, "condition.dropout", self.dropout, "a number in [0, 1)")


@dataclass(frozen=True)
class TransformerConfig:
    first_stage: str = ""  # path of the stage-1 bundle (e.g. runs/quickstart/last.safetensors)
    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 1024
    window: int = 16  # training crop of the latent grid, and the sliding window at sampling time
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    pkeep: float = 1.0  # probability of keeping an input token (the rest become random codes)
    weight_decay: float = 0.01
    warmup_steps: int = 0  # the older, stage-2-only name of train.warmup_steps (either may be set, not both)
    cosine_schedule: bool = False  # true: as train.lr_schedule = "cosine" (its older, stage-2-only name)
    attention: Literal["full", "local"] = "full"  # full: minGPT over the window; local: causal 2-D neighbourhoods, rolling-cache sampling at any size
    neighbourhood: tuple[int, ...] = (8, 16)  # attention = "local": [rows above, column span]: a token sees h rows above and span/2 columns each side

    def __post_init__(self) -> None:
        _check(self.attention in ("full", "local"), "transformer.attention", self.attention, '"full" or "local"')
        _check(len(self.neighbourhood) == 2 and self.neighbourhood[0] >= 1 and self.neighbourhood[1] >= 2,
               "transformer.neighbourhood", list(self.neighbourhood), "[rows above >= 1, column span >= 2]")
        _check(self.n_layer >= 1, "transformer.n_layer", self.n_layer, "an integer >= 1")
        _check(self.n_head >= 1, "transformer.n_head", self.n_head, "an integer >= 1")
        _check(self.n_embd % self.n_head == 0, "transformer.n_embd", self.n_embd,
               f"a multiple of transformer.n_head ({self.n_head})")
        _check(self.window >= 1, "transformer.window", self.window, "an integer >= 1")
        _check(0.0 < self.pkeep <= 1.0, "transformer.pkeep", self.pkeep, "a number in (0, 1]")
        _check(self.weight_decay >= 0, "transformer.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.warmup_steps >= 0, "transformer.warmup_steps", self.warmup_steps, "an integer >= 0")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 100000
    batch_size: int = 12
    base_learning_rate: float = 4.5e-6  # lr = base × batch × accumulate × world size (reference)
    accumulate: int = 1
    seed: int = 23
    checkpoint_every: int = 1000
    sample_every: int = 1000  # reconstruction / sample grids
    log_every: int = 50
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU; bf16: also on CPUs with it
    channels_last: bool = True
    compile: bool = False
    ema_decay: float = 0.0  # EMA of model weights for sampling/eval (0: off)
    grad_clip: float = 0.0  # clip gradient norm (0: off)
    on_nan: Literal["stop", "skip"] = "stop"
    warmup_steps: int = 0  # linear learning-rate warm-up from lr / warmup_steps to lr (0: none)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warm-up; cosine: down to 0 at max_steps
    loggers: tuple[str, ...] = ("jsonl",)  # logger plugins that get every record and grid (`vqt plugins`)

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "train.max_steps", self.max_steps, "an integer >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(self.base_learning_rate > 0, "train.base_learning_rate", self.base_learning_rate,
               "a positive number")
        _check(self.accumulate >= 1, "train.accumulate", self.accumulate, "an integer >= 1")
        for key in ("checkpoint_every", "sample_every", "log_every"):
            _check(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "an integer >= 1")
        _check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", self.ema_decay, "a number in [0, 1)")
        _check(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a number >= 0")
        _check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "an integer >= 0")
        _check(len(set(self.loggers)) == len(self.loggers), "train.loggers", list(self.loggers),
               "a list of logger names, each once")


@dataclass(frozen=True)
class SampleConfig:
    """How the sample grids written during stage-2 training are drawn."""

    n: int = 4
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0

    def __post_init__(self) -> None:
        _check(self.n >= 1, "sample.n", self.n, "an integer >= 1")
        _check(self.temperature > 0, "sample.temperature", self.temperature, "a positive number")
        _check(self.top_k >= 0, "sample.top_k", self.top_k, "an integer >= 0")
        _check(0.0 < self.top_p <= 1.0, "sample.top_p", self.top_p, "a number in (0, 1]")


@dataclass(frozen=True)
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    path: str = ""  # where the recipe was read from (not a TOML key)

    def __post_init__(self) -> None:
        if self.train.warmup_steps and self.transformer.warmup_steps:
            raise RecipeError(f"{self.path or 'recipe'}: train.warmup_steps = {self.train.warmup_steps} and "
                              f"transformer.warmup_steps = {self.transformer.warmup_steps} are both set; set "
                              "train.warmup_steps only (transformer.warmup_steps is its older stage-2 name)")

    @property
    def stem(self) -> str:
        return Path(self.path).stem if self.path else "recipe"
