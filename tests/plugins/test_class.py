"""The class plugin: one global token per image, a null token for "no class", label dropout, every error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqtoolkit.errors import DataError, RecipeError, VqtError
from vqtoolkit_plugins.synthetic.render import N_CLASSES

from .conftest import cond


def test_class_tokens_vocab_and_reading(item):
    c, o = cond("class")
    assert (c.kind, c.has_stage) == ("global", False)
    raw = c.from_item(item, o)
    assert raw.dtype == torch.int64 and raw.tolist() == [int(item["label"])]
    assert c.read("2", (32, 32), o).tolist() == [2]
    assert c.tokens(torch.tensor([[0], [2], [3]]), o, None).tolist() == [[0], [2], [3]]  # 3: the null token
    assert c.vocab_size(o, None) == N_CLASSES + 1
    assert c.null_tokens(o).tolist() == [N_CLASSES]
    picture = c.render(raw, o)
    assert picture.shape == (16, 64, 3) and (picture < 128).any()
    assert not np.array_equal(c.render(c.null_tokens(o), o), picture)  # "no class"


def test_class_label_dropout_uses_the_generator():
    c, o = cond("class", n_classes=10, label_dropout=0.25)
    labels = torch.randint(0, 10, (4000, 1), generator=torch.Generator().manual_seed(1))
    a = c.train_tokens(labels, o, torch.Generator().manual_seed(7))
    b = c.train_tokens(labels, o, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    dropped = a == 10
    assert 0.22 < dropped.float().mean() < 0.28
    assert torch.equal(a[~dropped], labels[~dropped])
    c0, o0 = cond("class", label_dropout=0.0)
    assert torch.equal(c0.train_tokens(labels % 3, o0, torch.Generator()), labels % 3)


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda c, o: c.read("cat", (8, 8), o),
                 VqtError, r"'cat' is not a class number; pass --class N with N in 0..2", id="read-not-a-number"),
    pytest.param(lambda c, o: c.read("3", (8, 8), o),
                 VqtError, r"class 3 is out of range: this model knows classes 0..2", id="read-out-of-range"),
    pytest.param(lambda c, o: c.tokens(torch.tensor([[-1], [1]]), o, None),
                 VqtError, r"class labels -1..1 are outside 0..3", id="tokens-out-of-range"),
    pytest.param(lambda c, o: c.tokens(torch.zeros(2, 1), o, None),
                 VqtError, r"integer labels of shape \(B, 1\)", id="tokens-not-integers"),
    pytest.param(lambda c, o: c.from_item({"name": "a/b"}, o),
                 DataError, r"item 'a/b' has no class label: .*labels.csv", id="item-without-label"),
    pytest.param(lambda c, o: c.from_item({"name": "a/b", "label": torch.tensor(5)}, o),
                 DataError, r"item 'a/b' has class 5, outside 0..2", id="item-out-of-range"),
    pytest.param(lambda c, o: cond("class", label_dropout=1.0),
                 RecipeError, r"condition.label_dropout = 1.0 is invalid", id="option-label_dropout"),
    pytest.param(lambda c, o: cond("class", n_classes=0),
                 RecipeError, r"condition.n_classes = 0 is invalid", id="option-n_classes"),
])
def test_class_errors(call, error, message):
    c, o = cond("class")
    with pytest.raises(error, match=message):
        call(c, o)
