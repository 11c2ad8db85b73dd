"""Stage 2 training on the tiny preset and synthetic shapes (CPU)."""

import json

import pytest
import torch
import torch.nn.functional as F

from cora.config import get_preset
from cora.data.coco import CocoDetection, build_dataset
from cora.data.synthetic import write_synthetic
from cora.data.transforms import Resize, scaled_train_transforms
from cora.engine.train_localizer import class_dropout_halves, split_classes, train_localizer
from cora.engine.inference import evaluate_model
from cora.engine.trainer import TrainConfig
from cora.modeling.detector import CORA
from cora.modeling.matcher import PerClassHungarianMatcher
from cora.preprocess import pad_batch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_synthetic(root, num_images=10, seed=0, size=(64, 64), val_fraction=0.2)
    return build_dataset(root / "instances_train.json", root, train=True, split=root / "split.json",
                         transforms=scaled_train_transforms(64, 96))


def tiny_model():
    torch.manual_seed(0)
    return CORA.from_config(get_preset("tiny"), random_init=True)


@pytest.fixture(scope="module")
def text(data):
    return tiny_model().encode_vocabulary(list(data.vocabulary))


def test_loss_falls(data, text, tmp_path):
    fixed = build_dataset(data.ann_file, data.image_root, train=True, split=data.image_root / "split.json",
                          transforms=Resize(64))
    model = tiny_model()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("backbone.", "region_classifier."))}
    tcfg = TrainConfig(epochs=10, batch_size=8, lr=1e-3, ema_decay=0.9, class_dropout=0.0, clip_max_norm=1.0)
    log = train_localizer(model, fixed, tmp_path, tcfg, text_embeddings=text, progress=False)
    losses = [r["loss"] for r in log]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    for k, v in frozen.items():  # CLIP and the prompt are frozen
        assert torch.equal(model.state_dict()[k], v), k
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11)) and "loss_giou_d1" in rows[0]
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_resume_matches_uninterrupted_run(data, text, tmp_path):
    tcfg = TrainConfig(epochs=2, batch_size=3, lr=1e-3, ema_decay=0.9, class_dropout=0.5)
    full = tiny_model()
    train_localizer(full, data, tmp_path / "a", tcfg, text_embeddings=text, progress=False)
    part = tiny_model()  # interrupted mid-epoch 2 (3 steps per epoch)
    train_localizer(part, data, tmp_path / "b", TrainConfig(**{**tcfg.__dict__, "max_steps": 4}),
                    text_embeddings=text, progress=False)
    resumed = tiny_model()  # a fresh process: weights come from the checkpoint
    log = train_localizer(resumed, data, tmp_path / "b", tcfg, text_embeddings=text, resume=True, progress=False)
    assert [r["step"] for r in log] == list(range(1, 7))
    a, b = full.learned_state_dict(), resumed.learned_state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    from safetensors.torch import load_file
    ea, eb = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in "ab")
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], atol=1e-6, rtol=1e-5)


def test_class_dropout_groups_and_matching(data, text):
    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 5, 48):
        a, b = split_classes(k, g)
        assert len(a) and len(b) and sorted(torch.cat([a, b]).tolist()) == list(range(k))
    images, targets = zip(*[data[i] for i in range(4)])
    halves = class_dropout_halves(list(targets), text.shape[0], 1.0, g)
    assert len(halves) == 2
    model = tiny_model().eval()
    batch, sizes = pad_batch(list(images))
    matcher = PerClassHungarianMatcher()
    for keep, tg in halves:
        for t, orig in zip(tg, targets):
            assert set(t["class_ids"].tolist()) <= set(keep.tolist())
            assert len(t["labels"]) == sum(int(c) in set(keep.tolist()) for c in orig["labels"])
        with torch.no_grad():
            out = model.predict_raw(batch, sizes, text[keep])  # the raw per-query outputs the matcher takes
        assert int(out["classes"].max()) < len(keep)
        for i, (qi, gi) in enumerate(matcher({k: (v[-1] if k != "classes" else v) for k, v in out.items()}, tg)):
            assert set(keep[out["classes"][i][qi]].tolist()) <= set(keep.tolist())
            assert set(tg[i]["class_ids"][gi].tolist()) <= set(keep.tolist())
            assert torch.equal(keep[out["classes"][i][qi]], tg[i]["class_ids"][gi])


def test_training_raises_ap50_on_the_training_images(tmp_path):
    """AP50 (pycocotools, via cora.engine.inference) on the training images rises well above the untrained model's.

    With random CLIP weights the region classifier cannot tell the shapes apart (its top-1 accuracy over the
    synthetic classes is near chance), and it multiplies every score, so per-class AP would measure CLIP, not
    the localizer. The test therefore merges the base shapes into one class "shape" whose text embedding is the
    mean region embedding of the training boxes (a visual prototype: every box gets class probability ~1), so
    that AP50 measures what stage 2 trains: boxes and objectness."""
    root = tmp_path / "shapes"
    write_synthetic(root, num_images=13, seed=5, size=(64, 64), val_fraction=0.1)
    gt = json.loads((root / "instances_train.json").read_text())
    gt["categories"] = [{"id": 1, "name": "shape", "supercategory": "shape"}]
    for a in gt["annotations"]:
        a["category_id"] = 1
    gt.pop("info", None)
    (root / "agnostic.json").write_text(json.dumps(gt))
    data = CocoDetection(root / "agnostic.json", root, transforms=Resize(64), drop_empty=True)
    model = tiny_model()
    with torch.no_grad():
        embeddings = []
        for image, target in (data[i] for i in range(len(data))):
            batch, _ = pad_batch([image])
            layer3 = model.backbone.features(model.backbone.normalize(batch))
            embeddings.append(F.normalize(model.region_classifier.region_embeddings(layer3, [target["boxes"]]), dim=-1))
        text = F.normalize(torch.cat(embeddings).mean(0, keepdim=True), dim=-1)

    def ap50():
        result, _ = evaluate_model(model, "coco-ovd", gt, root, novel=[], batch_size=8, progress=False,
                                   text_embeddings=text)
        return result["metrics"]["AP50_base"]

    before = ap50()
    tcfg = TrainConfig(epochs=60, batch_size=4, lr=2e-3, ema_decay=0.0, class_dropout=0.0)
    train_localizer(model, data, tmp_path / "run", tcfg, text_embeddings=text, progress=False)
    after = ap50()
    # Over model seeds 0-8 on this machine: 5x to 8x (e.g. 0.023 -> 0.150; lowest gain 0.008 -> 0.055).
    assert after > max(3 * before, before + 0.04), (before, after)
