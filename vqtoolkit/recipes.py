"""Recipes: TOML files parsed into frozen, typed dataclasses.

A recipe lists only what differs from the defaults below; the defaults are the paper's settings (the
f16 FFHQ VQGAN and a minGPT transformer) except where a comment says why we differ. Every key is
type-checked, unknown keys get a "did you mean", and the resolved recipe is written into the run
directory so a run can always be reproduced.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import RecipeError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class DataConfig:
    source: str = "folder"  # a registered data source (`vqt plugins`): folder, paired (images/ + a folder per condition), synthetic
    root: str = ""  # folder of training images (recursive) for source = "folder"
    list_file: str = ""  # alternative to `root`: a text file with one image path per line
    val_root: str = ""  # held-out images for sample grids and eval; empty: none (folder source)
    size: int = 256  # training crop size in pixels
    n: int = 2000  # number of synthetic scenes (source = "synthetic")
    val_n: int = 64  # held-out synthetic scenes, drawn from a disjoint seed range
    num_workers: int = 2  # DataLoader worker processes
    strict: bool = False  # fail on the first unreadable image instead of skipping and counting it
    tokens: str = ""  # stage 2: folder of token shards from `vqt tokenize` (empty: tokenize on the fly)

    def __post_init__(self) -> None:
        _check(self.size >= 8, "data.size", self.size, "an integer >= 8")
        _check(self.n >= 1, "data.n", self.n, "an integer >= 1")
        _check(self.val_n >= 0, "data.val_n", self.val_n, "an integer >= 0")
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

    def __post_init__(self) -> None:
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
    kind: Literal["vq", "gumbel"] = "vq"
    n_codes: int = 1024
    embed_dim: int = 256
    beta: float = 0.25  # commitment weight
    legacy_beta: bool = False  # the reference code's placement of beta; set by `vqt convert`
    codebook_dim: int = 8  # factorized low-dimensional lookup (0: look up in embed_dim, as the paper)
    l2_normalize: bool = True  # cosine-similarity lookup; with codebook_dim keeps codebooks alive
    ema: bool = False  # EMA codebook updates instead of the codebook loss term
    ema_decay: float = 0.99
    restart_dead: bool = True  # re-seed codes unused for `usage_window` batches from encoder outputs
    usage_window: int = 100  # batches over which codebook usage is counted
    temperature_start: float = 1.0  # gumbel only
    temperature_end: float = 0.0625  # gumbel only
    temperature_anneal_steps: int = 150000  # gumbel only
    kl_weight: float = 5e-4  # gumbel only

    def __post_init__(self) -> None:
        _check(self.n_codes >= 2, "quantizer.n_codes", self.n_codes, "an integer >= 2")
        _check(self.embed_dim >= 1, "quantizer.embed_dim", self.embed_dim, "an integer >= 1")
        _check(self.beta >= 0, "quantizer.beta", self.beta, "a number >= 0")
        _check(self.codebook_dim >= 0, "quantizer.codebook_dim", self.codebook_dim, "an integer >= 0")
        _check(0.0 < self.ema_decay < 1.0, "quantizer.ema_decay", self.ema_decay, "a number in (0, 1)")
        _check(self.usage_window >= 1, "quantizer.usage_window", self.usage_window, "an integer >= 1")


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

    def __post_init__(self) -> None:
        for key in ("pixel_weight", "perceptual_weight", "codebook_weight", "disc_weight", "disc_factor"):
            _check(getattr(self, key) >= 0, f"loss.{key}", getattr(self, key), "a number >= 0")
        _check(self.disc_start >= 0, "loss.disc_start", self.disc_start, "an integer >= 0")
        _check(self.disc_layers >= 1, "loss.disc_layers", self.disc_layers, "an integer >= 1")


@dataclass(frozen=True)
class ConditionConfig:
    """Which condition plugin to use; its own keys are checked by the plugin (see `vqt plugins`)."""

    name: str = ""  # empty: unconditional
    stage: str = ""  # path of the condition stage's VQGAN bundle, for conditions that need one
    options: dict[str, Any] = field(default_factory=dict)


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
    warmup_steps: int = 0
    cosine_schedule: bool = False

    def __post_init__(self) -> None:
        _check(self.n_layer >= 1, "transformer.n_layer", self.n_layer, "an integer >= 1")
        _check(self.n_head >= 1, "transformer.n_head", self.n_head, "an integer >= 1")
        _check(self.n_embd % self.n_head == 0, "transformer.n_embd", self.n_embd,
               f"a multiple of transformer.n_head ({self.n_head})")
        _check(self.window >= 1, "transformer.window", self.window, "an integer >= 1")
        _check(0.0 < self.pkeep <= 1.0, "transformer.pkeep", self.pkeep, "a number in (0, 1]")
        _check(self.weight_decay >= 0, "transformer.weight_decay", self.weight_decay, "a number >= 0")


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

    @property
    def stem(self) -> str:
        return Path(self.path).stem if self.path else "recipe"


_SECTIONS = [f.name for f in dataclasses.fields(Recipe) if f.name != "path"]


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise RecipeError(f"{key} = {value!r} is invalid: expected {expected}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against a dataclass field type; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise RecipeError(f"{key} = {value!r} is invalid: expected one of {listed}"
                              f"{did_you_mean(str(value), map(str, choices))}")
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected a list of {item.__name__}")
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected a table")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected a number")
        if not math.isfinite(value):
            raise RecipeError(f"{key} = {value!r} is invalid: expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{key} = {value!r} has the wrong type: expected a string")
        return value
    raise TypeError(f"unsupported recipe field type {hint!r}")  # a bug in this module, not user input


def build_section(name: str, cls: type, table: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a TOML table, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names or key == "options":
            if cls is ConditionConfig:  # condition plugins own their keys; checked against the plugin
                extra[key] = value
                continue
            raise RecipeError(f"{where}: unknown key '{name}.{key}'{did_you_mean(key, names)}")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    if extra:
        kwargs["options"] = extra
    return cls(**kwargs)


def recipe_from_dict(tables: dict[str, Any], where: str = "recipe", path: str = "") -> Recipe:
    """Build a Recipe from parsed TOML tables; `where` names the source in error messages."""
    sections = {}
    hints = typing.get_type_hints(Recipe)
    for name, table in tables.items():
        if name not in _SECTIONS:
            raise RecipeError(f"{where}: unknown section [{name}]{did_you_mean(name, _SECTIONS)}")
        if not isinstance(table, dict):
            raise RecipeError(f"{where}: '{name}' must be a section [{name}], got {table!r}")
        sections[name] = build_section(name, hints[name], table, where)
    return Recipe(**sections, path=path)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value`; the value is read as TOML, or taken as a plain string."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise RecipeError(f"--set {text!r}: expected section.key=value (e.g. train.batch_size=8)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts[0], parts[1], value


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a TOML recipe and apply `--set section.key=value` overrides."""
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path} is not valid TOML: {e}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        tables.setdefault(section, {})
        if not isinstance(tables[section], dict):
            raise RecipeError(f"--set {text!r}: '{section}' is not a section")
        tables[section][key] = value
    return recipe_from_dict(tables, where=str(path), path=str(path))


def recipe_to_dict(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """All sections with every value (defaults included), as plain TOML-able data."""
    out: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        section = dataclasses.asdict(getattr(recipe, name))
        options = section.pop("options", None)
        out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        if options:
            out[name].update(options)
    return out


def section_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Rebuild one config dataclass (e.g. ModelConfig) from a bundle's stored JSON config."""
    name = cls.__name__.removesuffix("Config").lower()
    return build_section(name, cls, values, where)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def recipe_to_toml(recipe: Recipe) -> str:
    """The fully resolved recipe as TOML, written into each run directory."""
    lines = [f"# resolved recipe (from {recipe.path or 'defaults'}); every value is listed"]
    for name, section in recipe_to_dict(recipe).items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in section.items())
    return "\n".join(lines) + "\n"
