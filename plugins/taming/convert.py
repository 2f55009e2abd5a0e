"""Map a taming-transformers checkpoint onto our VQGAN / GPT and write a vqtoolkit bundle.

Our models follow the reference's parameter names, so conversion is inference, not translation: the
architecture comes from tensor shapes, and what shapes cannot tell (resolution, attention heads, the
condition stage's settings) from the published `project.yaml` (see `project`). Which vqtoolkit condition
each taming condition stage becomes (VQSegmentationModel, Labelator, CoordStage, ...) is taming's
vocabulary, so it is written down here in the plugin: the core never names a modality.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vqtoolkit.stage1 import build_vqgan
from vqtoolkit.checkpoint import load_state, save_bundle
from vqtoolkit.condition_options import complete_meta
from vqtoolkit.errors import CheckpointError, RecipeError
from vqtoolkit.fileio import check_new
from vqtoolkit.quantizer_options import build_quantizer, complete_quantizer, quantizer_table
from vqtoolkit.models.transformer import GPT, GPTConfig
from vqtoolkit.recipes import ModelConfig, QuantizerConfig

from .project import Project, option, plain_data, project_from, read_yaml, section
from .safe_pickle import Checkpoint, TensorRecord

# ---- report and architecture inference ---------------------------------------------------------------

@dataclass
class ConvertReport:
    """What `convert_checkpoint` did: the bundle kind, the reference model class it read, the tensors
    and checkpoint entries it left out, the bundle config it wrote, and assumptions worth a look."""

    kind: str  # "stage1" or "stage2"
    source: str  # reference class: VQModel, VQSegmentationModel, GumbelVQ, Net2NetTransformer
    dropped: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the CLI: the kind, dropped tensors grouped by pattern, warnings."""
        groups: dict[str, int] = {}
        for name in self.dropped:
            pattern = re.sub(r"(^|\.)loss\..*", r"\1loss.*", re.sub(r"\.\d+\.", ".*.", name))
            groups[pattern] = groups.get(pattern, 0) + 1
        lines = [f"converted a {self.source} to a {self.kind} bundle"]
        if groups:
            lines.append("dropped: " + ", ".join(f"{p} ({n})" if n > 1 else p for p, n in groups.items()))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _indices(sd: dict[str, Tensor], prefix: str) -> list[int]:
    """Sorted integers i of the keys `prefix{i}.…`."""
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def _shape(sd: dict[str, Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{where}: tensor {key} is missing; expected the parameter layout of a "
                              "taming-transformers model")
    return tuple(sd[key].shape)


def _sub(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _check_layout(module: nn.Module, tensors: dict[str, Tensor], what: str) -> None:
    # `module` lives on the meta device: only the key and shape check of load_state matters, the copy
    # into meta tensors is a no-op that torch warns about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        load_state(module, tensors, what)


def _infer_model(sd: dict[str, Tensor], where: str, ddconfig: dict[str, Any], config_where: str,
                 notes: list[str]) -> ModelConfig:
    ch, in_channels = _shape(sd, "encoder.conv_in.weight", where)[:2]
    levels = _indices(sd, "encoder.down.")
    if levels != list(range(len(levels))) or not levels:
        raise CheckpointError(f"{where}: encoder levels encoder.down.* are missing or not numbered 0..n-1")
    widths = [_shape(sd, f"encoder.down.{i}.block.0.conv1.weight", where)[0] for i in levels]
    if any(w % ch for w in widths):
        raise CheckpointError(f"{where}: level widths {widths} are not multiples of ch = {ch}")
    z_channels = _shape(sd, "encoder.conv_out.weight", where)[0]
    if _shape(sd, "decoder.conv_in.weight", where)[1] != z_channels:
        raise CheckpointError(f"{where}: encoder.conv_out gives {z_channels} channels but decoder.conv_in "
                              "reads a different number (double_z models are not VQGANs)")
    resolution = option(ddconfig, "resolution", config_where, int)
    if resolution is None:
        resolution = 256
        notes.append(f"{where}: the nominal resolution is not stored in the weights; assumed 256 and "
                     "placed attention to match the weights (pass --config project.yaml to record it)")
    if resolution >> (len(levels) - 1) < 1:
        raise CheckpointError(f"{config_where}: resolution = {resolution} is too small for "
                              f"{len(levels)} levels")
    attn_levels = [i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in sd]
    try:
        return ModelConfig(
            ch=ch, ch_mult=tuple(w // ch for w in widths),
            num_res_blocks=len(_indices(sd, "encoder.down.0.block.")),
            attn_resolutions=tuple(resolution >> i for i in attn_levels), z_channels=z_channels,
            in_channels=in_channels, out_channels=_shape(sd, "decoder.conv_out.weight", where)[0],
            dropout=option(ddconfig, "dropout", config_where, float, 0.0), resolution=resolution)
    except RecipeError as e:
        raise CheckpointError(f"{where}: the model cannot be represented: {e}") from None


def _infer_quantizer(sd: dict[str, Tensor], where: str, params: dict[str, Any],
                     config_where: str) -> QuantizerConfig:
    if "quantize.used" in sd:
        raise CheckpointError(f"{where}: the quantizer remaps code indices (quantize.used); such models "
                              "are not supported")
    if "quantize.embedding.weight" in sd:
        n_codes, embed_dim = _shape(sd, "quantize.embedding.weight", where)
        # The reference VectorQuantizer2: beta 0.25 on the codebook term, plain nearest-neighbour lookup.
        return complete_quantizer(QuantizerConfig(kind="vq", embed_dim=embed_dim, options=dict(
            n_codes=n_codes, beta=0.25, legacy_beta=True, codebook_dim=0, l2_normalize=False, ema=False,
            restart_dead=False)), where)
    if "quantize.embed.weight" in sd:
        n_codes, embed_dim = _shape(sd, "quantize.embed.weight", where)
        proj = _shape(sd, "quantize.proj.weight", where)
        if proj[:2] != (n_codes, embed_dim):
            raise CheckpointError(f"{where}: quantize.proj.weight has shape {proj}, expected "
                                  f"({n_codes}, {embed_dim}, 1, 1) (Gumbel models need embed_dim == "
                                  "z_channels)")
        # GumbelVQ's default kl_weight is 1e-8.
        kl_weight = option(params, "kl_weight", config_where, float, 1e-8)
        return complete_quantizer(QuantizerConfig(kind="gumbel", embed_dim=embed_dim,
                                                  options={"n_codes": n_codes, "kl_weight": kl_weight}), where)
    raise CheckpointError(f"{where}: no codebook (quantize.embedding.weight or quantize.embed.weight); "
                          "expected a taming-transformers VQModel or GumbelVQ")


@dataclass
class _Stage1:
    model: ModelConfig
    quantizer: QuantizerConfig
    tensors: dict[str, Tensor]  # our VQGAN's state-dict names
    n_labels: int | None  # segmentation models: the `colorize` buffer's label count

    def config(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.model), "quantizer": quantizer_table(self.quantizer)}


def _convert_vqgan(sd: dict[str, Tensor], prefix: str, params: dict[str, Any], config_where: str,
                   where: str, report: ConvertReport) -> _Stage1:
    """One VQGAN under `prefix` (e.g. "first_stage_model."): infer, drop loss/colorize, check layout."""
    kept: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith("loss.") or key == "colorize":
            report.dropped.append(prefix + key)
        else:
            kept[key] = value
    ddconfig = params.get("ddconfig") if isinstance(params.get("ddconfig"), dict) else {}
    model = _infer_model(kept, where, ddconfig, config_where, report.warnings)
    quantizer = _infer_quantizer(kept, where, params, config_where)
    # Our quantizers keep usage bookkeeping the reference lacks: start it fresh.
    for name, buffer in build_quantizer(quantizer).named_buffers():
        kept.setdefault(f"quantize.{name}", buffer)
    with torch.device("meta"):
        vqgan = build_vqgan(model, quantizer)
    _check_layout(vqgan, kept, f"{where} (a taming-transformers VQGAN)")
    n_labels = int(sd["colorize"].shape[1]) if "colorize" in sd else None
    return _Stage1(model, quantizer, kept, n_labels)


# The reference reads every 183-label map with COCO-Stuff's convention: stored 0..181 and 255 =
# unlabeled, shifted up by one in uint8 (taming/data/coco.py, its shift_segmentation), so 255 is label 0.
COCO_STUFF = {"n_labels": 183, "label_shift": 1, "unlabeled": 255, "unlabeled_label": 0}


def _stage1_condition(stage: _Stage1, name: str | None) -> dict[str, Any]:
    """The condition a VQGAN encodes, with every option (as vqtoolkit's own bundles store it)."""
    if not name:
        return {}
    options: dict[str, Any] = {}
    if name == "segmentation":
        n_labels = stage.n_labels or stage.model.in_channels
        options = dict(COCO_STUFF) if n_labels == COCO_STUFF["n_labels"] else {"n_labels": n_labels}
    return complete_meta(name, options, f"--condition {name}")


# ---- conversion -----------------------------------------------------------------------------------

def convert_checkpoint(src: str | Path, dst: str | Path, *, config: str | Path | None = None,
                       force: bool = False, condition: str | None = None, n_head: int | None = None,
                       window: int | None = None) -> ConvertReport:
    """Convert a taming-transformers checkpoint `src` (.ckpt) into a vqtoolkit bundle at `dst`.

    `config`: the project.yaml published with the checkpoint; it supplies what weights cannot tell
    (nominal resolution, attention heads, the condition stage's settings). Without it, Lightning
    `hyper_parameters` stored in the checkpoint are used when present. `condition` names the modality of a
    VQGAN condition stage (e.g. "depth"); `n_head` overrides the transformer's head count; `window`
    the window (codes per side) that is otherwise inferred from the transformer's block_size.
    """
    src, dst = Path(src), Path(dst)
    check_new(dst, force)  # before reading a multi-gigabyte file
    with Checkpoint(src) as checkpoint:
        root = checkpoint.root
        if not isinstance(root, dict):
            raise CheckpointError(f"{src} holds a {type(root).__name__}, not a checkpoint dict")
        records = root.get("state_dict", root)
        if not isinstance(records, dict) or not records or \
                not all(isinstance(k, str) and isinstance(v, TensorRecord) for k, v in records.items()):
            found = ", ".join(map(repr, list(root)[:6]))
            raise CheckpointError(f"{src} has no state_dict of named tensors (top-level entries: {found})")
        state_dict = {k: checkpoint.tensor(v) for k, v in records.items()}  # nothing else is read
    extra = [str(k) for k in root if k != "state_dict"] if records is not root else []

    project = read_yaml(Path(config)) if config is not None else \
        project_from(plain_data(root.get("hyper_parameters")), f"{src} (hyper_parameters)")
    is_stage2 = any(k.startswith("transformer.") for k in state_dict)
    if project is not None and project.target and project.target.endswith("Net2NetTransformer") != is_stage2:
        held = "a Net2NetTransformer" if is_stage2 else "a VQGAN"
        raise CheckpointError(f"{project.where} describes a {project.target}, but {src} holds {held}; "
                              "pass the config that belongs to this checkpoint")
    if is_stage2:
        report = ConvertReport("stage2", "Net2NetTransformer", dropped=extra)
        tensors, bundle_config = _convert_net2net(state_dict, src, project, condition, n_head, window, report)
        cond_meta = bundle_config["condition"]
    else:
        if window is not None:
            raise CheckpointError(f"--window is for transformers (Net2NetTransformer), but {src} holds a VQGAN")
        report = ConvertReport("stage1", "VQModel", dropped=extra)
        tensors, bundle_config, cond_meta = _convert_stage1(state_dict, src, project, condition, report)
    report.config = bundle_config
    save_bundle(dst, tensors, kind=report.kind, config=bundle_config, condition=cond_meta, force=force)
    return report


def _convert_stage1(sd: dict[str, Tensor], src: Path, project: Project | None, condition: str | None,
                    report: ConvertReport) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    params, where = (project.params, project.where) if project else ({}, str(src))
    target = (project.target if project else None) or ""
    stage = _convert_vqgan(sd, "", params, where, str(src), report)
    segmentation = target.endswith("VQSegmentationModel") or (not target and stage.n_labels is not None)
    if stage.quantizer.kind == "gumbel":
        report.source = "GumbelVQ"
    elif segmentation:
        report.source = "VQSegmentationModel"
    cond = _stage1_condition(stage, condition or ("segmentation" if segmentation else None))
    config = stage.config()
    if cond:  # as Stage1Model.config() records a condition stage
        config["condition"] = cond
    return {f"vqgan.{k}": v for k, v in stage.tensors.items()}, config, cond


_UNCONDITIONAL = ("__is_unconditional__", "taming.modules.util.SOSProvider")


def _convert_net2net(sd: dict[str, Tensor], src: Path, project: Project | None, condition: str | None,
                     n_head: int | None, window: int | None,
                     report: ConvertReport) -> tuple[dict[str, Tensor], dict[str, Any]]:
    params, where = (project.params, project.where) if project else ({}, str(src))
    permuter, _ = section(params.get("permuter_config"))
    if any(k.startswith("permuter.") for k in sd) or (permuter and not permuter.endswith(".Identity")):
        raise CheckpointError(
            f"{src} uses the permuter {permuter or 'that stores permuter.* tensors (not Identity)'}, which "
            "orders tokens other than row by row; vqtoolkit generates in raster order, so only "
            "taming.modules.transformer.permuter.Identity converts")
    unknown = [k for k in sd if not k.startswith(("first_stage_model.", "cond_stage_model.", "transformer."))]
    if unknown:
        raise CheckpointError(f"{src}: unexpected tensors {', '.join(unknown[:5])} in a Net2NetTransformer")

    first_params = section(params.get("first_stage_config"))[1]
    first = _convert_vqgan(_sub(sd, "first_stage_model."), "first_stage_model.", first_params,
                           f"{where} first_stage_config", f"{src} (first_stage_model.*)", report)
    tensors = {f"vqgan.{k}": v for k, v in first.tensors.items()}
    config: dict[str, Any] = {"first_stage": first.config()}

    cond_target, cond_params = section(params.get("cond_stage_config"))
    cond_sd = _sub(sd, "cond_stage_model.")
    if cond_sd:
        cond = _convert_vqgan(cond_sd, "cond_stage_model.", cond_params, f"{where} cond_stage_config",
                              f"{src} (cond_stage_model.*)", report)
        segmentation = cond.n_labels is not None or (cond_target or "").endswith("VQSegmentationModel")
        key = params.get("cond_stage_key") if isinstance(params.get("cond_stage_key"), str) else None
        name = condition or ("segmentation" if segmentation else key)
        if not name:
            raise CheckpointError(
                f"{src}: the condition stage is a VQGAN (cond_stage_model.*), but what it encodes is not "
                "recorded; pass --condition NAME (e.g. depth; see 'vqt plugins')")
        tensors.update({f"cond.{k}": v for k, v in cond.tensors.items()})
        config["cond_stage"] = cond.config()
        config["condition"] = _stage1_condition(cond, name)
    else:
        config["condition"], sos = _parameterless_condition(src, project, cond_target, cond_params, condition)
        if sos is not None:
            config["sos_token"] = sos

    gpt_sd = _sub(sd, "transformer.")
    for key in [k for k in gpt_sd if re.fullmatch(r"blocks\.\d+\.attn\.mask", k)]:
        report.dropped.append("transformer." + key)
        del gpt_sd[key]
    transformer_params = section(params.get("transformer_config"))[1]
    heads = n_head or option(transformer_params, "n_head", f"{where} transformer_config", int)
    if heads is None:
        raise CheckpointError(
            f"{src}: the number of attention heads cannot be read from the weights; pass --config with the "
            "project.yaml published next to the checkpoint (transformer_config.params.n_head)")
    gpt_where = f"{src} (transformer.*)"
    vocab_size, n_embd = _shape(gpt_sd, "tok_emb.weight", gpt_where)
    gpt_config = {"vocab_size": vocab_size, "block_size": _shape(gpt_sd, "pos_emb", gpt_where)[1],
                  "n_layer": len(_indices(gpt_sd, "blocks.")), "n_head": heads, "n_embd": n_embd}
    if heads < 1 or n_embd % heads:
        raise CheckpointError(f"{where}: n_head = {heads} does not divide the transformer width {n_embd}")
    with torch.device("meta"):
        gpt = GPT(GPTConfig(**gpt_config))
    _check_layout(gpt, gpt_sd, f"{gpt_where} (a taming-transformers minGPT)")
    tensors.update({f"transformer.{k}": v for k, v in gpt_sd.items()})
    factor = first.model.factor
    if cond_sd:  # a VQGAN condition: its grid beside the image's, per code of the image grid
        per_side = factor / cond.model.factor
    elif config["condition"]["name"] == "coordinates":
        per_side = factor / config["condition"]["options"]["down_factor"]
    else:  # one token: a class label or the start token
        per_side = 0.0
    config["transformer"] = {**gpt_config, "window": _window(gpt_config["block_size"], per_side, window, src, report)}
    return tensors, config


def _window(block_size: int, per_side: float, window: int | None, src: Path, report: ConvertReport) -> int:
    """The window (codes per side) the transformer was trained on: the largest w whose sequence fits
    `block_size`, i.e. the condition's tokens plus w·w codes, less the last code, which is never an
    input. The published models give 16 (e.g. D-RIN: 256 + 256 - 1 <= 512). `window` overrides it."""
    def length(w: int) -> int:
        return (round(w * per_side) ** 2 if per_side else 1) + w * w - 1

    if window is not None:
        if length(window) > block_size:
            raise CheckpointError(f"--window {window} needs {length(window)} positions, but {src}'s transformer has "
                                  f"block_size {block_size}; pass a smaller --window")
        return window
    w = 0
    while length(w + 1) <= block_size:
        w += 1
    if w == 0:
        raise CheckpointError(f"{src}: block_size {block_size} holds no window of codes beside the condition")
    if block_size - length(w) > 1:
        report.warnings.append(f"block_size {block_size} leaves {block_size - length(w)} positions unused with the "
                               f"inferred window of {w}x{w} codes; pass --window if the model trained on other crops")
    return w


def _parameterless_condition(src: Path, project: Project | None, target: str | None, params: dict[str, Any],
                             condition: str | None) -> tuple[dict[str, Any], int | None]:
    """The condition of a checkpoint whose condition stage has no weights: from the config only."""
    if project is None:
        raise CheckpointError(
            f"{src}: the condition stage has no weights (unconditional, class label or coordinates), so "
            "its kind and settings are only in the model's config; pass --config project.yaml")
    where = f"{project.where} cond_stage_config"
    sos = None
    if project.params.get("unconditional") is True or target in _UNCONDITIONAL:
        found: dict[str, Any] = {"name": "", "options": {}}
        sos = option(project.params, "sos_token", project.where, int, 0)
    elif target and target.endswith(".Labelator"):
        found = {"name": "class", "options": {"n_classes": _required(params, "n_classes", where)}}
    elif target and target.endswith(".CoordStage"):
        found = {"name": "coordinates", "options": {"n_codes": _required(params, "n_embed", where),
                                                    "down_factor": _required(params, "down_factor", where)}}
    else:
        raise CheckpointError(
            f"{where}: condition stage {target!r} is not supported (supported: VQModel, "
            "VQSegmentationModel, SOSProvider / unconditional, Labelator, CoordStage)")
    if condition is not None and condition != found["name"]:
        raise CheckpointError(f"--condition {condition!r} does not match the checkpoint's condition stage "
                              f"{target} (condition {found['name']!r})")
    return complete_meta(found["name"], found["options"], where), sos


def _required(params: dict[str, Any], key: str, where: str) -> int:
    value = option(params, key, where, int)
    if value is None:
        raise RecipeError(f"{where}: params.{key} is missing")
    return value
