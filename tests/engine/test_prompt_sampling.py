"""Stage 1 on LVIS: the cross-entropy over a sampled class subset per iteration (TrainConfig.sampled_classes)."""

import pytest
import torch

import cora.engine.train_prompt as train_prompt_module
from cora.config import get_preset
from cora.data.coco import build_dataset
from cora.data.synthetic import write_synthetic
from cora.data.transforms import Resize
from cora.engine.train_prompt import prompt_config, sample_vocabulary, train_prompt
from cora.modeling.detector import CORA


def test_subset_holds_the_present_classes_and_remaps_labels():
    labels = torch.tensor([7, 1, 7, 4, 1])
    classes, local = sample_vocabulary(labels, 20, 6, torch.Generator().manual_seed(0))
    assert classes.dtype == local.dtype == torch.int64
    assert len(classes) == 6 and classes.tolist() == sorted(set(classes.tolist()))
    assert {1, 4, 7} <= set(classes.tolist()) and 0 <= int(classes.min()) and int(classes.max()) < 20
    assert torch.equal(classes[local], labels)
    again, _ = sample_vocabulary(labels, 20, 6, torch.Generator().manual_seed(0))
    assert torch.equal(classes, again)  # a function of the generator's state
    draws = {tuple(sample_vocabulary(labels, 20, 6, torch.Generator().manual_seed(s))[0].tolist()) for s in range(10)}
    assert len(draws) > 5
    # More present classes than asked for: all of them and nothing else; a size beyond K: the whole vocabulary.
    classes, local = sample_vocabulary(labels, 20, 2, torch.Generator().manual_seed(0))
    assert classes.tolist() == [1, 4, 7] and local.tolist() == [2, 0, 2, 1, 0]
    assert sample_vocabulary(labels, 9, 50, torch.Generator())[0].tolist() == list(range(9))
    empty, none = sample_vocabulary(torch.zeros(0, dtype=torch.int64), 9, 4, torch.Generator())
    assert len(empty) == 4 and none.shape == (0,)


def test_other_classes_have_equal_weight_and_the_generator_advances_alike():
    """Each of the 9 absent classes is in a 4-class subset (1 present + 3 drawn) with probability 3/9."""
    g = torch.Generator().manual_seed(3)
    draws = 3000
    hits = torch.zeros(10)
    for _ in range(draws):
        classes, _ = sample_vocabulary(torch.tensor([0]), 10, 4, g)
        hits[classes] += 1
    assert hits[0] == draws
    p = 3 / 9
    assert bool(((hits[1:] / draws - p).abs() < 5 * (p * (1 - p) / draws) ** 0.5).all()), hits / draws
    # Whatever the labels, one call draws the same amount: processes sharing the generator stay in step.
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sample_vocabulary(torch.tensor([0, 1, 2]), 10, 4, a)
    sample_vocabulary(torch.tensor([9]), 10, 8, b)
    assert torch.equal(a.get_state(), b.get_state())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_synthetic(root, num_images=10, seed=1, size=(64, 64))
    return build_dataset(root / "instances_train.json", root, train=True, split=root / "split.json",
                         transforms=Resize(64))


def tiny_model():
    torch.manual_seed(0)
    return CORA.from_config(get_preset("tiny"), random_init=True)


def test_training_uses_the_sampled_classes(data, tmp_path, monkeypatch):
    model = tiny_model()
    text = model.encode_vocabulary(list(data.vocabulary))
    assert len(text) == 5  # the base shapes
    calls = []
    real = train_prompt_module.region_logits

    def spy(model, images, targets, sub_text):
        calls.append(([t["image_id"] for t in targets], torch.cat([t["labels"] for t in targets]), sub_text))
        return real(model, images, targets, sub_text)

    monkeypatch.setattr(train_prompt_module, "region_logits", spy)
    tcfg = prompt_config(epochs=2, batch_size=2, lr=1e-3, lr_drop_epoch=None, sampled_classes=3)
    log = train_prompt(model, data, tmp_path / "run", tcfg, text_embeddings=text, progress=False)
    assert len(log) == len(calls) == 2 * 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    sizes = set()
    for ids, local, sub_text in calls:
        original = torch.cat([data.image_labels(data.image_ids.index(i)) for i in ids])
        present = len(set(original.tolist()))
        assert sub_text.shape == (max(3, present), text.shape[1])
        assert torch.equal(sub_text[local], text[original])  # labels point at their own class's embedding
        rows = [int((text == row).all(1).nonzero()) for row in sub_text]  # each row is one vocabulary class
        assert rows == sorted(set(rows))
        sizes.add(len(sub_text))
    assert 3 in sizes  # some batches had fewer than 3 classes and were topped up
    assert (tmp_path / "run" / "prompt.pth").is_file()


def test_resume_draws_the_same_classes(data, tmp_path):
    tcfg = prompt_config(epochs=2, batch_size=2, lr=1e-2, lr_drop_epoch=None, sampled_classes=3)
    text = tiny_model().encode_vocabulary(list(data.vocabulary))
    full = tiny_model()
    train_prompt(full, data, tmp_path / "a", tcfg, text_embeddings=text, progress=False)
    part = tiny_model()
    train_prompt(part, data, tmp_path / "b", prompt_config(**{**tcfg.__dict__, "max_steps": 3}), text_embeddings=text,
                 progress=False)
    resumed = tiny_model()
    log = train_prompt(resumed, data, tmp_path / "b", tcfg, text_embeddings=text, resume=True, progress=False)
    assert [r["step"] for r in log] == list(range(1, 9))
    key = "region_classifier.pool.prompt"
    torch.testing.assert_close(resumed.state_dict()[key], full.state_dict()[key], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(full.state_dict()[key], tiny_model().state_dict()[key])
