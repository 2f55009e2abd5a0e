"""Stage-2 training: a GPT over stage-1 codes, p(s_i | s_<i, c), on windows of the latent grid.

Training sees random `transformer.window`² crops of each image's code grid (and the same crop of a
spatial condition's grid), so the model can later slide that window over larger images.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import Dataset

from ..condition_options import check_same_options, complete_recipe, read_stored
from ..data.recipe import WithCondition, held_out_dataset, training_dataset
from ..data.tokens import TokenShards, fingerprint
from ..errors import RecipeError
from ..evaluation_stage2 import likelihood_figures
from ..images import image_grid, to_uint8
from ..models.local_transformer import LocalGPT, build_transformer
from ..models.transformer import GPT, GPTConfig, corrupt_tokens, image_loss
from ..recipes import Recipe
from ..stage1 import Stage1Model
from ..condition_spec import ConditionSpec, check_condition_grid, prefix_length
from ..stage2 import Stage2Model
from ..windows import Sequences
from .loop import Job, ModelEMA, Progress, check_finite, fit, start_run
from .run_dir import RunDir
from .runtime import Runtime, lr_factor, no_sync, scaled_lr

log = logging.getLogger(__name__)


def stage2_data(recipe: Recipe, first: Stage1Model, spec: ConditionSpec | None) -> tuple[Dataset, Dataset | None]:
    """Training data (token shards checked against the models, or images with their raw conditions)
    and the held-out images (with conditions) that sample grids and bits per token use."""
    channels = first.model_config.in_channels
    train: Dataset
    if recipe.data.tokens:  # shards already hold the condition's tokens
        train = _checked_shards(recipe, first, spec)
    else:
        train = training_dataset(recipe, channels)
        if spec is not None:
            train = WithCondition(train, spec)
    val = held_out_dataset(recipe, channels)
    if spec is not None and val is not None:
        val = WithCondition(val, spec)
    return train, val


def _checked_shards(recipe: Recipe, first: Stage1Model, spec: ConditionSpec | None) -> TokenShards:
    shards = TokenShards(recipe.data.tokens, condition=spec is not None)
    want = fingerprint(first.tensors())
    have = shards.manifest.get("first_stage", {}).get("fingerprint")
    if have != want:
        raise RecipeError(f"token shards in {recipe.data.tokens} were made by another stage-1 model "
                          f"({shards.manifest.get('first_stage', {}).get('path', '?')}, fingerprint "
                          f"{have}) than transformer.first_stage = {recipe.transformer.first_stage} "
                          f"({want}); re-run 'vqt tokenize' with this model")
    _check_shard_condition(shards.manifest.get("condition") or {}, spec, recipe)
    grid = min(shards.manifest.get("grid", [0, 0]))
    if grid < recipe.transformer.window:
        raise RecipeError(f"transformer.window = {recipe.transformer.window} is larger than the {grid}x{grid} "
                          f"code grids in {recipe.data.tokens}; tokenize larger images or lower the window")
    if spec is not None and spec.stage is not None:
        if shards.manifest.get("cond_stage", {}).get("fingerprint") != fingerprint(spec.stage.tensors()):
            raise RecipeError(f"token shards in {recipe.data.tokens} were made by another condition "
                              f"stage than condition.stage = {recipe.condition.stage}")
    return shards


def _check_shard_condition(have: dict[str, Any], spec: ConditionSpec | None, recipe: Recipe) -> None:
    """The shards' condition must be the recipe's, option by option with defaults filled in: a
    default spelled out in one of them is no difference, any other value is. An unconditional
    recipe reads any shards' codes."""
    where, fix = f"token shards in {recipe.data.tokens}", "re-run 'vqt tokenize' with this recipe"
    name, want = have.get("name", ""), spec.name if spec else ""
    if name != want and spec is not None:
        raise RecipeError(f"{where} carry condition '{name or 'none'}' but the recipe's is "
                          f"'{want or 'none'}'; {fix}")
    if spec is not None:
        _, options = read_stored(have, where)
        check_same_options(spec.condition, options, spec.options, where, recipe.path or "the recipe", fix)


def load_first_stage(recipe: Recipe, device: torch.device) -> Stage1Model:
    if not recipe.transformer.first_stage:
        raise RecipeError(f"{recipe.path}: transformer.first_stage is not set; name the stage-1 bundle, e.g. "
                          "first_stage = \"runs/quickstart/last.safetensors\"")
    first = Stage1Model.load(recipe.transformer.first_stage, device)
    first.vqgan.requires_grad_(False)
    return first


def build_gpt(recipe: Recipe, first: Stage1Model, spec: ConditionSpec | None,
              global_tokens: int = 1) -> GPT | LocalGPT:
    """The transformer for this recipe; `global_tokens`: how many tokens a global condition gives."""
    t = recipe.transformer
    vocab = max(first.n_codes, spec.vocab_size() if spec else 1)
    block = prefix_length(spec, t.window, global_tokens) + t.window * t.window  # one spare, as the reference
    local = dict(attention="local", neighbourhood=tuple(t.neighbourhood)) if t.attention == "local" else {}
    config = GPTConfig(vocab, block, t.n_layer, t.n_head, t.n_embd, t.embd_pdrop, t.resid_pdrop, t.attn_pdrop,
                       **local)
    return build_transformer(config, t.window, spec is not None and spec.grid_like)


def _schedule(recipe: Recipe) -> Any:
    """train.warmup_steps / train.lr_schedule; transformer.warmup_steps / cosine_schedule are their
    older stage-2 names and still count (Recipe refuses two warm-ups)."""
    t, cfg = recipe.transformer, recipe.train
    warmup = cfg.warmup_steps or t.warmup_steps
    schedule = "cosine" if t.cosine_schedule else cfg.lr_schedule
    return functools.partial(lr_factor, max_steps=cfg.max_steps, warmup_steps=warmup, schedule=schedule)


# What a resume must not change: the keys that shape the GPT or the tokens it reads. [transformer]'s
# other keys (pkeep, weight_decay, warmup_steps, cosine_schedule, dropouts) only steer training; a
# resumed optimizer keeps its saved weight_decay, though (torch restores param-group settings).
ARCHITECTURE = ("transformer.first_stage", "transformer.n_layer", "transformer.n_head", "transformer.n_embd",
                "transformer.window", "transformer.attention", "transformer.neighbourhood", "condition")


def train_stage2(recipe: Recipe, out: str | Path, *, resume: bool = False, force: bool = False,
                 device: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Train the transformer as the recipe says; returns a summary (final step, held-out bits/token)."""
    recipe = complete_recipe(recipe)  # the run folder and the bundle store every condition option
    cfg, t = recipe.train, recipe.transformer
    rt, run, state = start_run(recipe, out, resume=resume, force=force, device=device,
                               architecture=ARCHITECTURE)

    first = load_first_stage(recipe, rt.device)
    spec = ConditionSpec.from_config(recipe.condition, recipe.path or "recipe", rt.device)
    grid = recipe.data.size // first.factor
    if not recipe.data.tokens and grid < t.window:
        raise RecipeError(f"transformer.window = {t.window} is larger than the latent grid {grid}x{grid} "
                          f"(data.size {recipe.data.size} at f = {first.factor}); lower the window or raise "
                          f"data.size to at least {t.window * first.factor}")
    train_set, val_set = stage2_data(recipe, first, spec)
    if not recipe.data.tokens and spec is not None:  # shards were checked when they were made
        check_condition_grid(spec, train_set[0]["cond_raw"].to(rt.device), (grid, grid), recipe.path or "recipe")
    global_tokens = 1
    if spec is not None and not spec.grid_like:  # measured, so a plugin may give several tokens
        item = train_set[0]
        tokens = item["cond"] if "cond" in item else spec.tokens(item["cond_raw"][None].to(rt.device))[0]
        global_tokens = tokens.numel()
    gpt = build_gpt(recipe, first, spec, global_tokens).to(rt.device)
    model = Stage2Model(first, gpt, t.window, spec)
    lr = scaled_lr(cfg, rt.world_size)
    opt = gpt.configure_optimizer(lr, t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(recipe))
    ema = ModelEMA(gpt, cfg.ema_decay) if cfg.ema_decay > 0 else None
    net = DDP(gpt) if rt.distributed else gpt
    if cfg.compile:
        net = torch.compile(net)
    crop_gen = torch.Generator()
    sequences = Sequences(model, crop_gen)
    noise_gen = torch.Generator(device=rt.device)

    def step_fn(step: int, next_batch: Any) -> dict[str, float]:
        # Crops, pkeep noise and label dropout are drawn from (seed, rank, step): a resumed run repeats them.
        crop_gen.manual_seed(hash((cfg.seed, rt.rank, step, 1)) % 2**63)  # int tuples hash stably
        noise_gen.manual_seed(hash((cfg.seed, rt.rank, step, 2)) % 2**63)
        opt.zero_grad(set_to_none=True)
        gpt.train()
        total = 0.0
        for micro in range(cfg.accumulate):
            prefix, image = sequences(next_batch(), rt.device)
            inputs = corrupt_tokens(image, t.pkeep, first.n_codes, noise_gen)
            seq = torch.cat([prefix, inputs], dim=1)[:, :-1]  # (B, P + N - 1)
            with no_sync(net, rt.distributed and micro < cfg.accumulate - 1):
                with rt.autocast():
                    loss = image_loss(net(seq).float(), image, prefix.shape[1])
                check_finite(loss, rt)
                (loss / cfg.accumulate).backward()
            total += float(loss.detach()) / cfg.accumulate
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        return {"loss": total, "bits_per_token": total / math.log(2), "lr": sched.get_last_lr()[0]}

    def export(path: Path) -> None:
        model.save(path, force=True, gpt=ema.shadow if ema else gpt)

    # Grids show held-out conditions; without held-out data, training items' (token shards have none).
    grid_set = val_set if val_set is not None or recipe.data.tokens else train_set

    def samples(step: int) -> None:
        _write_samples(run, model, ema.shadow if ema else gpt, grid_set, recipe, step)

    def summary() -> dict[str, Any]:
        if val_set is None:
            return {}
        return likelihood_figures(model, val_set, ema.shadow if ema else gpt)

    job = Job(modules={"transformer": gpt}, optimizers={"transformer": opt}, schedulers={"lr": sched},
              step=step_fn, export=export, samples=samples, summary=summary, ema=ema, ema_of=gpt, lr=lr)
    return fit(job, recipe, rt, run, state, train_set, progress)


@torch.no_grad()
def _write_samples(run: RunDir, model: Stage2Model, gpt: GPT, val_set: Dataset | None, recipe: Recipe,
                   step: int) -> None:
    """A grid of samples at the training window size: [condition | sample] rows, or a row of samples.
    A conditional model without items to take conditions from writes none."""
    if model.condition is not None and val_set is None:
        log.info("step %d: no sample grid (token shards carry no raw conditions; set data.val_root)", step)
        return
    was = model.gpt
    model.gpt = gpt
    try:
        size = (model.window * model.factor, model.window * model.factor)
        s = recipe.sample
        rows = []
        if model.condition is None:
            images, _ = model.sample(s.n, size, seed=step, temperature=s.temperature, top_k=s.top_k or None,
                                     top_p=s.top_p if s.top_p < 1 else None)
            rows.append([to_uint8(x) for x in images])
        else:
            for i in range(min(s.n, len(val_set))):
                raw = _crop_raw(val_set[i]["cond_raw"], size)
                images, _ = model.sample(1, size, cond=raw, seed=step + i, temperature=s.temperature,
                                         top_k=s.top_k or None, top_p=s.top_p if s.top_p < 1 else None)
                rows.append([model.condition.render(raw), to_uint8(images[0])])
        run.save_grid("samples", step, image_grid(rows))
    finally:
        model.gpt = was


def _crop_raw(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Top-left crop of a spatial raw condition to the sample size (global ones pass unchanged)."""
    return raw[..., :size[0], :size[1]] if raw.ndim == 3 else raw
