"""encode / decode / eval through the CLI, the README's Python API snippet, and error reporting."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqtoolkit.api import Stage1Model
from vqtoolkit.cli import cli
from vqtoolkit.recipes import ModelConfig, QuantizerConfig

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = Stage1Model.build(
        ModelConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=32),
        QuantizerConfig(embed_dim=8, options={"n_codes": 32}))
    path = tmp_path_factory.mktemp("model") / "vqgan.safetensors"
    model.save(path)
    return path


def image(path, mode="RGB", size=(32, 24)):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode).save(path)
    return str(path)


def test_encode_decode_round_trip_through_files(bundle, tmp_path):
    inputs = [image(tmp_path / "a.png"), image(tmp_path / "gray.png", "L"), image(tmp_path / "rgba.png", "RGBA"),
              image(tmp_path / "deep.png", "I;16")]
    codes_dir = tmp_path / "codes"
    result = CliRunner().invoke(cli, ["encode", *inputs, "--model", str(bundle), "-o", str(codes_dir)])
    assert result.exit_code == 0, result.output
    for name in ("a", "gray", "rgba", "deep"):
        assert np.load(codes_dir / f"{name}.npy").shape == (6, 8)  # 24x32 px at f = 4
    out = tmp_path / "decoded"
    result = CliRunner().invoke(cli, ["decode", *sorted(map(str, codes_dir.iterdir())), "--model", str(bundle),
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out / "a.png").size == (32, 24)
    # decode(encode(x)) equals the library's own reconstruction of x
    model = Stage1Model.load(bundle)
    from vqtoolkit.images import load_image, to_tensor, to_uint8

    x = to_tensor(load_image(inputs[0]))[None]
    expected = to_uint8(model.decode(model.encode(x))[0])
    assert np.array_equal(np.asarray(Image.open(out / "a.png")), expected)


def test_odd_sizes_need_crop_or_pad(bundle, tmp_path):
    odd = image(tmp_path / "odd.png", size=(30, 21))
    result = CliRunner().invoke(cli, ["encode", odd, "--model", str(bundle), "-o", str(tmp_path / "c.npy")])
    assert result.exit_code == 1
    assert "30x21" in result.output and "multiples of 4: use 28x20 or 32x24, or pass --crop or --pad" in result.output
    for flag, shape in (("--crop", (5, 7)), ("--pad", (6, 8))):
        out = tmp_path / f"c{flag}.npy"
        result = CliRunner().invoke(cli, ["encode", odd, "--model", str(bundle), "-o", str(out), flag])
        assert result.exit_code == 0, result.output
        assert np.load(out).shape == shape


def test_decode_rejects_codes_outside_codebook(bundle, tmp_path):
    np.save(tmp_path / "bad.npy", np.full((4, 4), 99))
    result = CliRunner().invoke(cli, ["decode", str(tmp_path / "bad.npy"), "--model", str(bundle),
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "99" in result.output and "Traceback" not in result.output


def test_eval_json_and_grid(bundle, tmp_path):
    grid = tmp_path / "grid.png"
    result = CliRunner().invoke(cli, ["eval", "synthetic", "--model", str(bundle), "--n", "6", "--size", "32",
                                      "--json", "--grid", str(grid)])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{"):])
    assert set(figures) >= {"psnr", "ssim", "lpips", "codebook_usage", "perplexity"}
    assert figures["lpips"] is None  # no VGG weights on this machine
    assert 0 < figures["codebook_usage"] <= 1 and grid.is_file()


def test_eval_recipe_on_crops_of_graded_scenes(bundle, tmp_path):
    """`vqt eval RECIPE` scores on the recipe's held-out set, with its data.scene_size and data.world
    (the old `vqt eval synthetic --scene-size --world` options are the recipe's keys now)."""
    from vqtoolkit.data.recipe import HELD_OUT_SEED_OFFSET
    from vqtoolkit.evaluation import evaluate
    from vqtoolkit_plugins.synthetic.dataset import SyntheticScenes

    recipe = tmp_path / "crops.toml"
    recipe.write_text('[data]\nsource = "synthetic"\nsize = 32\nval_n = 4\nscene_size = [128, 72]\n'
                      'world = "graded"\n[train]\nseed = 3\n')
    result = CliRunner().invoke(cli, ["eval", str(recipe), "--model", str(bundle), "--size", "32", "--json",
                                      "--grid", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{"):])
    crops = SyntheticScenes(4, 32, seed=3 + HELD_OUT_SEED_OFFSET, train=False, scene_size=(72, 128), world="graded")
    assert figures["psnr"] == pytest.approx(evaluate(Stage1Model.load(bundle), crops, 8)["psnr"])


def test_eval_n_counts_generated_items_only(bundle, tmp_path):
    """--n sets a source's val_n: a recipe of files has none, and says so instead of ignoring it."""
    folder = tmp_path / "held"
    folder.mkdir()
    for k in range(2):
        image(folder / f"{k}.png", size=(32, 32))
    recipe = tmp_path / "files.toml"
    recipe.write_text(f'[data]\nsource = "folder"\nval_root = "{folder}"\n')
    result = CliRunner().invoke(cli, ["eval", str(recipe), "--model", str(bundle), "--n", "3", "--size", "32",
                                      "--grid", str(tmp_path / "g.png")])
    assert result.exit_code == 1
    assert f"--n 3: data source 'folder' of {recipe} has no data.val_n" in result.output, result.output
    result = CliRunner().invoke(cli, ["eval", str(recipe), "--model", str(bundle), "--size", "32", "--json",
                                      "--grid", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path):
    missing = str(tmp_path / "missing.safetensors")
    result = CliRunner().invoke(cli, ["eval", "synthetic", "--model", missing])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: model bundle {missing} does not exist"
    debug = CliRunner().invoke(cli, ["--debug", "eval", "synthetic", "--model", missing])
    assert debug.exit_code == 1 and debug.exception is not None  # raised, so the traceback is shown


def test_readme_python_api_snippet_runs(tmp_path, monkeypatch):
    from vqtoolkit.stage2 import Stage2Model
    from vqtoolkit.models.transformer import GPT, GPTConfig

    torch.manual_seed(0)
    first = Stage1Model.build(  # f = 8 (the demo has 4), so the README's 1024x576 sample is a quick 128x72 codes
        ModelConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
                    resolution=64), QuantizerConfig(embed_dim=8, options={"n_codes": 32}))
    first.save(tmp_path / "runs" / "quickstart" / "last.safetensors")
    Stage2Model(first, GPT(GPTConfig(32, 1 + 64, 1, 2, 16)), 8, None).save(
        tmp_path / "runs" / "quickstart-stage2-local" / "last.safetensors")
    monkeypatch.chdir(tmp_path)
    snippet = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["codes"].shape == (2, 8, 8) and namespace["recon"].shape == (2, 3, 64, 64)
    assert namespace["samples"].shape == (1, 3, 576, 1024) and namespace["grid"].shape == (1, 72, 128)
