"""Tests for memvir.evaluation.embedding_diagnostics: seen (train) and unseen (test) classes side by side, on a tiny
glyph set (10 + 10 classes of 10 images at 16 px) and a tiny image folder, with untrained networks. The metric
functions themselves are checked against oracles in tests/test_metrics.py; here, that the right images reach them."""
import math

import pytest
import torch

from memvir import metrics
from memvir.evaluation import embed, embedding_diagnostics, evaluate
from memvir.experiment import build
from memvir.train import resolve_config

from images import photo

TINY = dict(data_name="glyphs", num_classes=20, instances_per_class=10, input_size=16, dim=16, progress=False)
CPU = torch.device("cpu")
KS = (1, 2, 4)


def retrieval_keys(ks):
    return [f"recall@{k}" for k in ks] + ["r_precision", "map_at_r"]


def expected_keys(ks, pca_k):
    per_side = retrieval_keys(ks) + ["uniformity", "alignment", f"pca_share@{pca_k}", "effective_rank", "items",
                                     "classes"]
    return {f"{side}_{key}" for side in ("train", "test") for key in per_side} | {
        f"gap_{key}" for key in retrieval_keys(ks)}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build(resolve_config(TINY), CPU, pretrained=False)


def test_keys_values_and_the_test_side_equal_evaluate(tiny):
    got = embedding_diagnostics(tiny.net, tiny.splits, CPU, KS)
    assert set(got) == expected_keys(KS, 10)
    assert all(math.isfinite(v) for v in got.values())
    assert (got["train_items"], got["train_classes"]) == (len(tiny.splits.train), 10)
    assert (got["test_items"], got["test_classes"]) == (len(tiny.splits.test), 10)
    ev = evaluate(tiny.net, tiny.splits.test, KS, CPU, splits=tiny.splits)
    for key in retrieval_keys(KS):
        assert got[f"test_{key}"] == ev[key], key
        assert got[f"gap_{key}"] == pytest.approx(got[f"train_{key}"] - ev[key], abs=1e-15), key
    # The geometry is that of the test split's embeddings.
    test_emb = embed(tiny.net, tiny.splits.test, CPU)
    assert got["test_uniformity"] == metrics.uniformity(test_emb)
    assert got["test_effective_rank"] == metrics.effective_rank(test_emb)
    assert -4 * 2 <= got["train_uniformity"] <= 0 and 0 <= got["train_alignment"] <= 4
    assert 0 < got["train_pca_share@10"] <= 1 and 1 <= got["train_effective_rank"] <= 16


def test_train_split_is_embedded_without_augmentation(tiny):
    """The glyph train split shifts each image at random when served: two calls would then disagree."""
    assert tiny.splits.train.augment  # what training sees
    first = embedding_diagnostics(tiny.net, tiny.splits, CPU, (1,), pca_k=4)
    torch.manual_seed(123)  # another draw of the shifts, were they on
    assert embedding_diagnostics(tiny.net, tiny.splits, CPU, (1,), pca_k=4) == first
    assert tiny.splits.train.augment  # the split itself is left as it was
    # The same numbers as an embedding of the stored train images, unshifted.
    from memvir.data.glyphs import GlyphDataset
    train = tiny.splits.train
    plain = embed(tiny.net, GlyphDataset(train.images, train.labels, train=False), CPU)
    assert first["train_uniformity"] == metrics.uniformity(plain)
    assert first["train_recall@1"] == metrics.retrieval_metrics(plain, train.labels, ks=(1,))["recall@1"]


def test_max_items_takes_whole_classes_deterministically(tiny):
    got = embedding_diagnostics(tiny.net, tiny.splits, CPU, (1,), max_items=35, pca_k=4)
    assert (got["train_items"], got["train_classes"]) == (30, 3)  # 10 images a class: 3 whole classes fit in 35
    assert embedding_diagnostics(tiny.net, tiny.splits, CPU, (1,), max_items=35, pca_k=4) == got
    assert got["test_items"] == len(tiny.splits.test)  # the test side is never subsampled
    everything = embedding_diagnostics(tiny.net, tiny.splits, CPU, (1,), max_items=10**6, pca_k=4)
    assert everything == embedding_diagnostics(tiny.net, tiny.splits, CPU, (1,), pca_k=4)


@pytest.mark.parametrize("max_items, match", [(5, r"max_items=5: expected room for at least 2 items"),
                                              (1, r"max_items: expected None or an integer >= 2"),
                                              (20.0, r"max_items: expected None or an integer >= 2")])
def test_bad_max_items(tiny, max_items, match):
    with pytest.raises(ValueError, match=match):
        embedding_diagnostics(tiny.net, tiny.splits, CPU, (1,), max_items=max_items, pca_k=4)


def test_image_folder_train_split_gets_the_evaluation_transform(tmp_path):
    from memvir.data import build_datasets
    from memvir.models import build_model

    for split in ("train", "test"):
        for c in range(3):
            for k in range(3):
                photo(tmp_path / split / f"c{c}" / f"{k}.jpg", (40, 30), seed=10 * c + k)
    splits = build_datasets("custom", data=tmp_path, backbone="resnet18", input_size=32)
    torch.manual_seed(0)
    net = build_model("resnet18", 8, pretrained="none")
    train_transform = splits.train.transform
    first = embedding_diagnostics(net, splits, CPU, (1,), pca_k=4)
    torch.manual_seed(1)  # the training transform's random crops and flips would differ now
    assert embedding_diagnostics(net, splits, CPU, (1,), pca_k=4) == first
    assert splits.train.transform is train_transform
    assert (first["train_items"], first["test_items"]) == (9, 9)
    # The train folder served with the test split's transform is exactly what was measured.
    from memvir.data import ImageListDataset
    plain = ImageListDataset(splits.train.paths, splits.train.labels, transform=splits.test.transform)
    assert first["train_uniformity"] == metrics.uniformity(embed(net, plain, CPU))
