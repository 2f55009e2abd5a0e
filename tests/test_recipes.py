import pytest
from hypothesis import given
from hypothesis import strategies as st

from vqtoolkit.errors import RecipeError
from vqtoolkit.recipes import (Recipe, TrainConfig, load_recipe, parse_override, recipe_from_dict,
                               recipe_to_toml, tomllib)

from .conftest import write


def test_defaults_are_the_paper_ffhq_model():
    r = Recipe()
    assert r.model.ch == 128 and r.model.ch_mult == (1, 1, 2, 2, 4) and r.model.factor == 16
    assert r.quantizer.kind == "vq" and r.quantizer.options == {} and r.loss.disc_start == 30001


def test_load_with_overrides(tmp_path):
    path = write(tmp_path / "r.toml", """
        [train]
        batch_size = 4
        [model]
        ch_mult = [1, 2]
    """)
    r = load_recipe(path, ["train.batch_size=8", "data.root=/some/where", "model.dropout=0.1"])
    assert r.train.batch_size == 8
    assert r.data.options.root == "/some/where"
    assert r.model.ch_mult == (1, 2) and r.model.dropout == 0.1
    assert r.stem == "r"


@pytest.mark.parametrize("text, message", [
    ("[trian]\nmax_steps = 1\n", r"unknown section \[trian\]; did you mean 'train'\?"),
    ("[train]\nbach_size = 1\n", r"unknown key 'train.bach_size'; did you mean 'batch_size'\?"),
    ("[train]\nbatch_size = 'big'\n", r"train.batch_size = 'big' has the wrong type: expected an integer"),
    ("[train]\nbatch_size = 2.5\n", r"expected an integer"),
    ("[train]\nbase_learning_rate = -1.0\n", r"train.base_learning_rate = -1.0 is invalid: expected a positive"),
    ("[model]\nch = 100\n", r"model.ch = 100 is invalid: expected a positive multiple of 32"),
    ("[loss]\ndisc_loss = 'hingе'\n", r"loss.disc_loss = 'hingе' is invalid: expected one of 'hinge', 'vanilla'"),
    ("[train]\nchannels_last = 1\n", r"expected true or false"),
    ("[model]\nch_mult = 3\n", r"expected a list of int"),
    ("train = 3\n", r"'train' must be a section"),
])
def test_bad_recipes_name_the_key(tmp_path, text, message):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(write(tmp_path / "x.toml", "[train\n"))


@pytest.mark.parametrize("text", ["batch_size=3", "train.=3", "a.b.c.d=1", "train"])
def test_bad_overrides(text):
    with pytest.raises(RecipeError, match="--set"):
        parse_override(text)


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(write(tmp_path / "r.toml", "[condition]\nname = 'depth'\nn_labels = 3\n"))
    assert r.condition.options == {"n_labels": 3}
    again = recipe_from_dict(tomllib.loads(recipe_to_toml(r)))
    assert again.model == r.model and again.train == r.train and again.condition == r.condition


@given(st.integers(min_value=-10, max_value=10**6))
def test_batch_size_override_property(value):
    tables = {"train": {"batch_size": value}}
    if value >= 1:
        assert recipe_from_dict(tables).train.batch_size == value
    else:
        with pytest.raises(RecipeError, match="train.batch_size"):
            recipe_from_dict(tables)


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.integers(), max_size=3))
def test_unknown_keys_always_named(table):
    known = {f.name for f in TrainConfig.__dataclass_fields__.values()}
    try:
        recipe_from_dict({"train": table})
    except RecipeError as e:
        bad = [k for k in table if k not in known]
        assert bad or "is invalid" in str(e), "only unknown keys or invalid values may fail"
        assert "train." in str(e)


@pytest.mark.parametrize("table, message", [
    ({"train": {"warmup_steps": -1}}, r"train.warmup_steps = -1 is invalid: expected an integer >= 0"),
    ({"train": {"lr_schedule": "linear"}}, r"train.lr_schedule = 'linear' is invalid: expected one of 'constant', 'cosine'"),
    ({"loss": {"l2_weight": -1.0}}, r"loss.l2_weight = -1.0 is invalid: expected a number >= 0"),
    ({"loss": {"l2_weight": 1.0, "pixel_loss": "bce"}}, r"loss.l2_weight = 1.0 is invalid: expected 0 with pixel_loss = 'bce'"),
    ({"loss": {"lecam_weight": -0.1}}, r"loss.lecam_weight = -0.1 is invalid"),
    ({"loss": {"lecam_decay": 1.0}}, r"loss.lecam_decay = 1.0 is invalid: expected a number in \(0, 1\)"),
    ({"transformer": {"warmup_steps": -5}}, r"transformer.warmup_steps = -5 is invalid"),
    ({"model": {"norm_groups": 3}}, r"model.norm_groups = 3 is invalid: expected a divisor of 32"),
    ({"model": {"norm_groups": 0}}, r"model.norm_groups = 0 is invalid"),
    ({"train": {"warmup_steps": 10}, "transformer": {"warmup_steps": 50}},
     r"train.warmup_steps = 10 and transformer.warmup_steps = 50 are both set"),
])
def test_schedule_and_loss_keys_are_checked(table, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(table)


def test_schedule_and_loss_keys_default_off():
    r = Recipe()
    assert r.train.warmup_steps == 0 and r.train.lr_schedule == "constant"
    assert r.loss.l2_weight == 0 and r.loss.lecam_weight == 0 and r.model.norm_groups == 32
    r = recipe_from_dict({"train": {"warmup_steps": 20, "lr_schedule": "cosine"},
                          "loss": {"l2_weight": 1, "lecam_weight": 0.1, "lecam_decay": 0.9}})
    assert (r.train.warmup_steps, r.train.lr_schedule, r.loss.l2_weight, r.loss.lecam_weight) == (20, "cosine", 1.0, 0.1)


def test_native_crop_options():
    r = recipe_from_dict({"data": {"source": "synthetic", "size": 64, "scene_size": [1024, 576]}})
    assert r.data.options.scene_hw == (576, 1024)
    r = recipe_from_dict({"data": {"source": "paired", "crop": "native", "scale": 0.5}})
    assert r.data.options.crop_scale == 0.5
    assert recipe_from_dict({}).data.options.crop_scale is None
    for data, message in [
        ({"scale": 0.5}, r'data.scale = 0.5 is invalid: expected 1 unless data.crop = "native"'),
        ({"crop": "native", "scale": 0.0}, r"data.scale = 0.0 is invalid: expected a positive number"),
        ({"source": "synthetic", "crop": "native"}, r'data.crop is a key of data source folder and paired and webdataset, not of '
                                                    r"'synthetic'"),
        ({"source": "folder", "scene_size": [512, 512]}, r'data.scene_size is a key of data source synthetic, not '
                                                         r"of 'folder' \(data.source = \"folder\"\)"),
        ({"source": "synthetic", "size": 64, "scene_size": [1024]}, r"expected \[width, height\]"),
        ({"source": "synthetic", "size": 64, "scene_scale": [0.5, 1]}, r"with data.scene_size set"),
        ({"source": "synthetic", "size": 64, "object_crops": 0.5}, r"above 0 only with data.scene_size set"),
        ({"source": "synthetic", "size": 64, "scene_size": [1024, 576], "object_crops": 1.5},
         r"data.object_crops = 1.5 is invalid: expected a fraction in \[0, 1\]"),
        ({"source": "synthetic", "size": 64, "scene_size": [1024, 576], "scene_scale": [0.5, 2]},
         r"data.scene_scale = \[0.5, 2.0\] is invalid: expected \[lo, hi\] with 0 < lo <= hi <= 1"),
        ({"source": "folder", "images": "x"}, r"data.images is a key of data source paired"),
        ({"source": "paired", "val_root": "v", "val_images": "w"}, r"data.val_images = 'w' is invalid"),
    ]:
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict({"data": data})


def test_a_scene_smaller_than_the_crops_is_refused_when_the_data_is_built():
    from vqtoolkit.data.recipe import training_dataset

    recipe = recipe_from_dict({"data": {"source": "synthetic", "size": 64, "scene_size": [1024, 32]}})
    with pytest.raises(RecipeError, match=r"data.scene_size = \[1024, 32\] is invalid: .*each >= data.size \(64\)"):
        training_dataset(recipe, 3)


def test_each_source_checks_its_own_keys(tmp_path):
    with pytest.raises(RecipeError, match=r"r.toml: unknown key 'data.nn' for data source 'synthetic'; did you mean "
                                          r"'n'\? \(its keys: n, val_n, scene_size, scene_scale, world, object_crops; every "
                                          r"source's: source, size, num_workers, strict, tokens\)"):
        load_recipe(write(tmp_path / "r.toml", "[data]\nsource = 'synthetic'\nnn = 3\n"))
    with pytest.raises(RecipeError, match=r"data.n = 'many' has the wrong type: expected an integer"):
        recipe_from_dict({"data": {"source": "synthetic", "n": "many"}})
    with pytest.raises(RecipeError, match=r"data.source = 'synthetc': unknown data source 'synthetc'; did you mean "
                                          r"'synthetic'\?"):
        recipe_from_dict({"data": {"source": "synthetc"}})


def test_options_are_stored_in_full_and_set_from_the_command_line(tmp_path):
    path = write(tmp_path / "r.toml", "[data]\nsource = 'paired'\nimages = 'img'\n[data.paired]\ndepth = 'd'\n")
    r = load_recipe(path, ["data.paired.edge=e", "data.crop=native"])
    assert r.data.options.paired == {"depth": "d", "edge": "e"} and r.data.options.crop == "native"
    text = recipe_to_toml(r)
    assert 'val_images = ""' in text and "val_paired = {}" in text and "scene_size" not in text
    assert recipe_from_dict(tomllib.loads(text)).data == r.data


def test_a_run_folder_from_before_sources_declared_their_keys_still_reads(tmp_path):
    """Run folders list the single old [data] schema in full: every source's keys at their defaults."""
    old = {"source": "synthetic", "root": "", "images": "", "paired": {}, "list_file": "", "val_root": "",
           "val_images": "", "val_paired": {}, "size": 64, "crop": "resize", "scale": 1.0, "scene_size": [],
           "scene_scale": [], "world": "graded", "n": 30, "val_n": 4, "num_workers": 0, "strict": False, "tokens": ""}
    r = recipe_from_dict({"data": old})
    assert (r.data.size, r.data.options.n, r.data.options.world) == (64, 30, "graded")
    defaults = {**old, "world": "random", "n": 2000, "val_n": 64}
    folder = recipe_from_dict({"data": {**defaults, "source": "folder", "root": "imgs"}})
    assert folder.data.options.root == "imgs"
    with pytest.raises(RecipeError, match=r"data.n is a key of data source synthetic"):  # not its old default
        recipe_from_dict({"data": {**defaults, "source": "folder", "n": 30}})


def test_set_data_source_drops_the_files_keys_of_its_source(tmp_path, caplog):
    """--set data.source=folder on a synthetic recipe: its n and world meant the file's source, and the
    command line cannot unset them, so they are dropped with a warning; keys given with --set are checked."""
    path = write(tmp_path / "r.toml", "[data]\nsource = 'synthetic'\nn = 24\nworld = 'graded'\nsize = 16\n")
    r = load_recipe(path, ["data.source='folder'", "data.root=imgs"])
    assert (r.data.source, r.data.size, r.data.options.root) == ("folder", 16, "imgs")
    assert "data.source = 'folder' (--set) has no key data.n, data.world; the recipe's values are ignored" in caplog.text
    with pytest.raises(RecipeError, match=r"data.n is a key of data source synthetic, not of 'folder'"):
        load_recipe(path, ["data.source='folder'", "data.n=3"])
