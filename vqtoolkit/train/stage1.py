"""Stage-1 training: the VQGAN with L1/L2 + LPIPS + codebook + PatchGAN (adaptive weight).

One autoencoder forward per batch serves both the generator and the discriminator step (the
reference code runs it twice); the discriminator is frozen during the generator step and switches
on after `loss.disc_start` batches.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..condition_options import complete_recipe, condition_meta
from ..quantizer_options import complete_recipe_quantizer
from ..data.recipe import WithCondition, held_out_dataset, training_dataset
from ..errors import RecipeError
from ..evaluation import evaluate
from ..images import image_grid, to_uint8
from ..losses import VQLoss
from ..plugins import get_condition
from ..recipes import Recipe
from ..stage1 import Stage1Model
from ..condition_spec import ConditionSpec
from .loop import Job, ModelEMA, Progress, check_finite, fit, start_run
from .run_dir import RunDir
from .runtime import Runtime, lr_factor, no_sync, scaled_lr


def stage1_datasets(recipe: Recipe, channels: int) -> tuple[Any, Any]:
    return training_dataset(recipe, channels), held_out_dataset(recipe, channels)


def condition_stage_datasets(recipe: Recipe) -> tuple[Any, Any, Any]:
    """For a recipe with a [condition]: datasets of raw conditions, to train that condition's VQGAN."""
    condition = get_condition(recipe.condition.name)
    where = recipe.path or "recipe"
    if not condition.has_stage:
        raise RecipeError(f"{where}: condition '{condition.name}' has no VQGAN stage to train; "
                          "use it directly in a stage-2 recipe")
    options = condition.parse_options(recipe.condition.options, where)
    channels = condition.stage_channels(options)
    if recipe.model.in_channels != channels or recipe.model.out_channels != channels:
        raise RecipeError(f"{where}: condition '{condition.name}' gives {channels}-channel inputs; set "
                          f"model.in_channels = model.out_channels = {channels} (and loss.disc_in_channels = "
                          f"{channels} when the discriminator switches on)")
    spec = ConditionSpec(condition, options, None)
    train, val = stage1_datasets(recipe, 3)
    train = WithCondition(train, spec, as_image=True)
    val = WithCondition(val, spec, as_image=True) if val is not None else None
    return train, val, (condition, options)


def train_stage1(recipe: Recipe, out: str | Path, *, resume: bool = False, force: bool = False,
                 device: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Train a VQGAN as the recipe says; returns a summary (final step, held-out PSNR, usage)."""
    # The run folder and the bundle store every condition and quantizer option.
    recipe = complete_recipe_quantizer(complete_recipe(recipe))
    cfg = recipe.train
    if recipe.data.size % recipe.model.factor:
        raise RecipeError(f"{recipe.path or 'recipe'}: data.size = {recipe.data.size} is not a multiple of the "
                          f"model's factor f = {recipe.model.factor}")
    gan_on = recipe.loss.disc_start < cfg.max_steps
    if gan_on and recipe.loss.disc_in_channels != recipe.model.out_channels:
        raise RecipeError(f"{recipe.path or 'recipe'}: loss.disc_in_channels = {recipe.loss.disc_in_channels} but "
                          f"model.out_channels = {recipe.model.out_channels}; the discriminator reads the "
                          f"reconstructions from step loss.disc_start = {recipe.loss.disc_start}, so set them equal")
    rt, run, state = start_run(recipe, out, resume=resume, force=force, device=device,
                               architecture=("model", "quantizer"))

    render = to_uint8
    if recipe.condition.name:  # train the condition's own VQGAN (depth, segmentation, ...)
        train_set, val_set, (condition, options) = condition_stage_datasets(recipe)
        render = functools.partial(condition.render, options=options)
    else:
        train_set, val_set = stage1_datasets(recipe, recipe.model.in_channels)
    model = Stage1Model.build(recipe.model, recipe.quantizer)
    loss_format, ae_format = _memory_formats(cfg.channels_last, rt.device)
    vqgan = model.vqgan.to(rt.device, memory_format=ae_format)
    loss_fn = VQLoss(recipe.loss).to(rt.device, memory_format=loss_format)
    disc = loss_fn.discriminator
    disc_params = list(disc.parameters())
    lr = scaled_lr(cfg, rt.world_size)
    trainable = [p for p in vqgan.parameters() if p.requires_grad]  # EMA codebooks are not optimised
    # fused: one kernel for all parameters (CPU and GPU); the default loops over ~350 tensors.
    opt_ae = torch.optim.Adam(trainable, lr=lr, betas=(0.5, 0.9), fused=True)
    opt_disc = torch.optim.Adam(disc_params, lr=lr, betas=(0.5, 0.9), fused=True)
    ema = ModelEMA(vqgan, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if cfg.compile:
        vqgan.compile()
    ae = DDP(vqgan) if rt.distributed else vqgan
    disc_ddp = DDP(disc) if rt.distributed else disc

    def step_fn(step: int, next_batch: Any) -> dict[str, float]:
        # The schedule is a function of the step, so a resumed run follows it without saved state. The
        # discriminator keeps the constant lr: it starts late (disc_start), when a decayed lr would leave
        # it too slow to follow the autoencoder.
        ae_lr = lr * lr_factor(step, cfg.max_steps, cfg.warmup_steps, cfg.lr_schedule)
        for group in opt_ae.param_groups:
            group["lr"] = ae_lr
        opt_ae.zero_grad(set_to_none=True)
        opt_disc.zero_grad(set_to_none=True)
        vqgan.quantize.set_step(step)
        vqgan.train()
        loss_fn.train()
        disc_on = loss_fn.discriminator_active(step)
        logs: dict[str, float] = {"lr": ae_lr}
        for micro in range(cfg.accumulate):
            image = next_batch()["image"].to(rt.device, non_blocking=True)
            x = image.contiguous(memory_format=loss_format)
            defer_sync = rt.distributed and micro < cfg.accumulate - 1  # accumulate locally first
            with no_sync(ae, defer_sync), no_sync(disc_ddp, defer_sync):
                with rt.autocast():
                    recon, qloss, _, qstats = ae(image.contiguous(memory_format=ae_format))
                    recon = recon.contiguous(memory_format=loss_format)  # as LPIPS and the discriminator run
                    # one discriminator forward on the reconstruction serves both steps
                    fake = disc_ddp(recon) if disc_on else None
                    g_loss, g_logs = loss_fn.generator_loss(x, recon, qloss, vqgan.last_layer, step, fake)
                check_finite(g_loss, rt)
                (g_loss / cfg.accumulate).backward()
                if disc_on:
                    with rt.autocast():
                        d_loss, d_logs = loss_fn.discriminator_loss(x, recon.detach(), step, disc_ddp, fake)
                    check_finite(d_loss, rt)
                    (d_loss / cfg.accumulate).backward(inputs=disc_params)
                    g_logs = {**g_logs, **d_logs}
            for k, v in {**g_logs, **qstats}.items():
                logs[k] = logs.get(k, 0.0) + float(v) / cfg.accumulate
        _step(opt_ae, vqgan, cfg.grad_clip)
        if disc_on:
            _step(opt_disc, disc, cfg.grad_clip)
        return logs

    stored = condition_meta(condition, options) if recipe.condition.name else None

    def trained() -> Stage1Model:
        return Stage1Model(ema.shadow if ema else vqgan, model.model_config, model.quantizer_config, stored)

    def export(path: Path) -> None:
        trained().save(path, force=True)

    val_batch = _val_batch(val_set, rt)

    def samples(step: int) -> None:
        if val_batch is not None:
            _write_reconstructions(run, ema.shadow if ema else vqgan, val_batch, step, render)

    def summary() -> dict[str, Any]:
        if val_set is None:
            return {}
        figures = evaluate(trained(), val_set, cfg.batch_size)
        return {k: figures[k] for k in ("psnr", "ssim", "codebook_usage", "perplexity")}

    modules = {"vqgan": vqgan, "discriminator": disc}
    if loss_fn.lecam is not None:  # LeCAM's logit EMAs resume with the discriminator
        modules["lecam"] = loss_fn.lecam
    job = Job(modules=modules, optimizers={"ae": opt_ae, "disc": opt_disc},
              step=step_fn, export=export, samples=samples, summary=summary, ema=ema, ema_of=vqgan, lr=lr)
    return fit(job, recipe, rt, run, state, train_set, progress)


def _memory_formats(channels_last: bool, device: torch.device) -> tuple[torch.memory_format, torch.memory_format]:
    """(layout of LPIPS and the discriminator, layout of the VQGAN) for training.

    channels_last speeds up convolutions, most of all those with 3 input or output channels, but on
    CPU PyTorch's GroupNorm backward is about 4x slower in it, which costs the GroupNorm-heavy VQGAN
    more than its convolutions gain; so on CPU only LPIPS and the discriminator use it.
    """
    if not channels_last:
        return torch.contiguous_format, torch.contiguous_format
    return torch.channels_last, torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _step(opt: torch.optim.Optimizer, module: torch.nn.Module, clip: float) -> None:
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    opt.step()


def _val_batch(val_set: Any, rt: Runtime, n: int = 8) -> torch.Tensor | None:
    if val_set is None or len(val_set) == 0:
        return None
    items = [val_set[i]["image"] for i in range(min(n, len(val_set)))]
    return torch.stack(items).to(rt.device)


@torch.no_grad()
def _write_reconstructions(run: RunDir, vqgan: torch.nn.Module, batch: torch.Tensor, step: int,
                           render: Any) -> None:
    was_training = vqgan.training
    vqgan.eval()
    recon = vqgan(batch)[0]
    vqgan.train(was_training)
    rows = [[render(a), render(b)] for a, b in zip(batch, recon)]
    run.save_grid("reconstructions", step, image_grid(rows))
