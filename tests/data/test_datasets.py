import pytest
import torch
from PIL import Image

from dfq.data import build_eval_loader, eval_transform, stratified_indices
from dfq.models.spec import InputSpec

SPEC = InputSpec(image_size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=3)


def _make_folder(root, classes, per_class=2, size=32):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), color=(10 * i, 128, 255)).save(root / c / f"{i}.png")
    return root


def test_stratified_indices_are_class_balanced_and_ordered():
    targets = [0] * 5 + [1] * 5 + [2] * 5
    assert stratified_indices(targets, 6) == [0, 1, 5, 6, 10, 11]
    assert stratified_indices(targets, 4) == [0, 1, 5, 10]
    assert stratified_indices(targets, 100) == list(range(15))
    with pytest.raises(ValueError, match="positive"):
        stratified_indices(targets, 0)


def test_eval_transform_normalizes_with_the_spec():
    img = Image.new("RGB", (32, 32), color=(255, 0, 128))
    x = eval_transform(SPEC)(img)
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25]))


def test_loader_reads_an_image_folder_with_limit(tmp_path):
    _make_folder(tmp_path / "d", ["a", "b", "c"], per_class=4)
    loader = build_eval_loader(tmp_path / "d", SPEC, batch_size=4, limit=6, num_workers=0)
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*ImageFolder"):
        build_eval_loader(tmp_path / "nope", SPEC)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: it has no class subfolders"):
        build_eval_loader(tmp_path / "empty", SPEC)
    for c in "abc":
        (tmp_path / "noimg" / c).mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        build_eval_loader(tmp_path / "noimg", SPEC)


def test_class_count_mismatch_is_a_clear_error(tmp_path):
    _make_folder(tmp_path / "d", ["a", "b"])
    with pytest.raises(ValueError, match="has 2 classes but the model has 3 outputs"):
        build_eval_loader(tmp_path / "d", SPEC)


def test_a_file_is_not_a_data_folder(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        build_eval_loader(tmp_path / "f.txt", SPEC)
