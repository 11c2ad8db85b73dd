"""Stage 1 (region prompt) training on the tiny preset and synthetic shapes (CPU)."""

import pytest
import torch
import torch.nn.functional as F

from cora.config import get_preset
from cora.data.coco import build_dataset
from cora.data.synthetic import write_synthetic
from cora.data.transforms import Resize
from cora.engine.convert import PROMPT_KEY
from cora.engine.train_prompt import prompt_config, region_accuracy, train_prompt
from cora.modeling.detector import CORA


def pretrain_on_crops(model, data, text: torch.Tensor, steps: int = 60) -> None:
    """A stand-in for CLIP's pretraining (its weights cannot be downloaded here): the tiny visual tower learns to
    match whole-object crops (each box cut out and resized to a 64 x 64 image) to the class text embeddings.

    This reproduces the gap region prompting closes: CLIP sees objects as whole images, CORA classifies regions
    RoIAligned from the image's feature map, where the same encoder is less accurate (here ~0.5-0.65 against
    1.0 on the crops). With random weights there is nothing to adapt: region features do not separate the
    shapes at all, and the prompt only learns the class prior."""
    crops, labels = [], []
    for i in range(len(data)):
        image, target = data[i]
        for (x1, y1, x2, y2), label in zip(target["boxes"].round().long().tolist(), target["labels"].tolist()):
            crop = image[:, max(y1, 0): max(y2, y1 + 1), max(x1, 0): max(x2, x1 + 1)]
            crops.append(F.interpolate(crop[None], size=(64, 64), mode="bilinear", align_corners=False)[0])
            labels.append(label)
    crops, labels = model.backbone.normalize(torch.stack(crops)), torch.tensor(labels)
    visual = model.backbone.visual
    params = list(visual.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-3)
    visual.train()
    for _ in range(steps):
        loss = F.cross_entropy(100 * F.normalize(visual(crops), dim=-1) @ text.T, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    visual.eval()
    for p in params:
        p.requires_grad_(False)


def test_prompt_training_raises_region_accuracy_and_changes_only_the_prompt(tmp_path):
    root = tmp_path / "shapes"
    write_synthetic(root, num_images=24, seed=1, size=(128, 128))
    data = build_dataset(root / "instances_train.json", root, train=True, split=root / "split.json",
                         transforms=Resize(128))
    assert set(data.vocabulary) <= {"circle", "square", "triangle", "star", "cross"}  # base classes only
    torch.manual_seed(0)
    model = CORA.from_config(get_preset("tiny"), random_init=True)
    text = F.normalize(torch.randn(len(data.vocabulary), model.backbone.embed_dim), dim=-1)
    pretrain_on_crops(model, data, text)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc0 = region_accuracy(model, data, text)
    log = train_prompt(model, data, tmp_path / "run", prompt_config(epochs=30, batch_size=8, lr=1e-2, lr_drop_epoch=27),
                       text_embeddings=text, progress=False)
    acc1 = region_accuracy(model, data, text)
    # Here 0.57 -> 0.77; over model seeds 0-6 (other text draws) the gain was +0.07 to +0.36 from 0.50-0.66.
    assert acc1 > acc0 + 0.05 and log[-1]["loss_ce"] < log[0]["loss_ce"], (acc0, acc1, [r["loss"] for r in log])
    assert log[-1]["lr"] == pytest.approx(1e-3) and log[0]["lr"] == pytest.approx(1e-2)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= {"region_classifier.pool.prompt", "prematcher.pool.prompt"}
    exported = torch.load(tmp_path / "run" / "prompt.pth", weights_only=True)[PROMPT_KEY]
    fresh = CORA.from_config(get_preset("tiny"), random_init=True)
    fresh.load_state_dict({k: v for k, v in before.items()})
    fresh.region_classifier.load_prompt(exported)
    assert abs(region_accuracy(fresh, data, text) - acc1) < 1e-6
