"""Quantizers as plugins: the documented third-party example trains, registrations are checked, and
bundles and training states from before per-kind options still load."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vqtoolkit import Stage1Model
from vqtoolkit.checkpoint import save_bundle
from vqtoolkit.cli import cli
from vqtoolkit.errors import VqtError
from vqtoolkit.quantizer_options import complete_recipe_quantizer
from vqtoolkit.recipes import ModelConfig, QuantizerConfig, recipe_from_dict, recipe_to_dict
from vqtoolkit.train.state import same_architecture

from .test_train_stage1 import TINY as TINY_STAGE1

pytestmark = pytest.mark.usefixtures("one_thread")
HOOKS_DOC = (Path(__file__).resolve().parents[1] / "docs" / "plugin_hooks.md").read_text()
TINY_QUANTIZER = "[quantizer]\nn_codes = 16\nembed_dim = 8\n"
ARCH = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=16, norm_groups=8)


def example_plugin() -> str:
    section = HOOKS_DOC.split("### vqt_register_quantizers(registry)", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_quantizer_plugin_trains_and_loads(install_plugin, tmp_path):
    install_plugin("sign", example_plugin())
    listing = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    assert listing["quantizers"]["sign"]["plugin"] == "sign"
    assert {"vq", "gumbel", "fsq"} <= set(listing["quantizers"])
    recipe = tmp_path / "sign.toml"
    assert TINY_QUANTIZER in TINY_STAGE1
    recipe.write_text(TINY_STAGE1.replace(TINY_QUANTIZER, '[quantizer]\nkind = "sign"\nbits = 4\nembed_dim = 8\n'))
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "usage" in result.output
    model = Stage1Model.load(tmp_path / "run" / "last.safetensors")
    assert model.n_codes == 16 and model.quantizer_config.options == {"bits": 4}
    codes = model.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert codes.shape == (2, 8, 8) and int(codes.max()) < 16
    assert model.decode(codes).shape == (2, 3, 16, 16)

    recipe.write_text(TINY_STAGE1.replace(TINY_QUANTIZER, '[quantizer]\nkind = "sign"\nbit = 4\n'))
    result = CliRunner().invoke(cli, ["train-stage1", str(recipe), "--out", str(tmp_path / "typo")])
    assert result.exit_code == 1 and "unknown key 'quantizer.bit'" in result.output and "'bits'" in result.output


@pytest.mark.parametrize("body, reason", [
    ("class Q(Quantizer):\n    name = 'q'\nregistry.register(Q)", "registered the class Q, not an instance"),
    ("@dataclass(frozen=True)\nclass O:\n    embed_dim: int = 4\nclass Q(Quantizer):\n    name = 'q'\n"
     "    Options = O\nregistry.register(Q())", "option 'embed_dim' of O is a key every quantizer shares"),
    ("class Q(Quantizer):\n    name = 'vq'\nregistry.register(Q())", "quantizer 'vq' is already registered by plugin quantizers"),
])
def test_bad_registrations_are_skipped_with_a_reason(install_plugin, body, reason):
    indented = "\n".join("    " + line for line in body.splitlines())
    install_plugin("badq", "from dataclasses import dataclass\nfrom vqtoolkit import Quantizer, hookimpl\n\n"
                           f"@hookimpl\ndef vqt_register_quantizers(registry):\n{indented}\n")
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    listing = json.loads(result.stdout)  # (the "Error: ... failed" line goes to stderr)
    row = next(p for p in listing["plugins"] if p["name"] == "badq")
    assert listing["failed"] == ["badq"] and reason in row["error"]
    assert listing["quantizers"]["vq"]["plugin"] == "quantizers"  # the built-ins stay


def test_a_module_that_breaks_the_contract_is_refused(install_plugin):
    install_plugin("plain", "from vqtoolkit import Quantizer, hookimpl\nimport torch\n\n"
                            "class Q(Quantizer):\n    name = 'plain'\n"
                            "    def build(self, options, embed_dim):\n        return torch.nn.Identity()\n\n"
                            "@hookimpl\ndef vqt_register_quantizers(registry):\n    registry.register(Q())\n")
    with pytest.raises(VqtError, match="quantizer 'plain' of plugin plain built Identity; expected a "
                                       "vqtoolkit.models.quantize.QuantizerModule"):
        Stage1Model.build(ModelConfig(**ARCH), QuantizerConfig(kind="plain", embed_dim=8))


# What bundles held before each quantizer declared its options: every key of every kind.
OLD_VQ = {"kind": "vq", "n_codes": 16, "embed_dim": 8, "beta": 0.25, "legacy_beta": False, "codebook_dim": 8,
          "l2_normalize": True, "ema": False, "ema_decay": 0.99, "restart_dead": True, "usage_window": 100,
          "temperature_start": 1.0, "temperature_end": 0.0625, "temperature_anneal_steps": 150000,
          "kl_weight": 0.0005}
OLD_GUMBEL = {**OLD_VQ, "kind": "gumbel", "kl_weight": 1e-8}


@pytest.mark.parametrize("old", [OLD_VQ, OLD_GUMBEL], ids=["vq", "gumbel"])
def test_bundles_from_before_per_kind_options_load(old, tmp_path):
    torch.manual_seed(0)
    new = {k: v for k, v in old.items() if k != "kind"}
    own = {"vq": ("n_codes", "beta", "legacy_beta", "codebook_dim", "l2_normalize", "ema", "ema_decay",
                  "restart_dead", "usage_window"),
           "gumbel": ("n_codes", "kl_weight", "temperature_start", "temperature_end", "temperature_anneal_steps",
                      "usage_window")}[old["kind"]]
    model = Stage1Model.build(ModelConfig(**ARCH), QuantizerConfig(kind=old["kind"], embed_dim=8,
                                                                   options={k: new[k] for k in own}))
    path = tmp_path / "old.safetensors"
    save_bundle(path, model.tensors(), kind="stage1",
                config={"model": dataclasses.asdict(model.model_config), "quantizer": old})
    loaded = Stage1Model.load(path)
    assert loaded.quantizer_config.options == {k: new[k] for k in own}  # the other kind's keys are dropped
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    model.vqgan.eval()
    assert torch.equal(loaded.encode(images), model.encode(images))


def test_a_run_from_before_per_kind_options_resumes():
    tables = {"quantizer": {"n_codes": 16, "embed_dim": 8}}
    recipe = complete_recipe_quantizer(recipe_from_dict(tables))
    run = types.SimpleNamespace(path="runs/old", recipe="runs/old/recipe.toml")
    same_architecture({"recipe": {"quantizer": dict(OLD_VQ)}}, recipe, run, ("quantizer",))
    assert recipe_to_dict(recipe)["quantizer"]["n_codes"] == 16
    changed = complete_recipe_quantizer(recipe_from_dict({"quantizer": {"n_codes": 32, "embed_dim": 8}}))
    with pytest.raises(VqtError, match=r"the recipe's \[quantizer\] differs from the run in runs/old"):
        same_architecture({"recipe": {"quantizer": dict(OLD_VQ)}}, changed, run, ("quantizer",))
