"""Stage 1 (region prompt) training on the tiny preset and synthetic shapes (CPU)."""

import pytest
import torch

from cora.config import get_preset
from cora.data.coco import build_dataset
from cora.data.synthetic import write_synthetic
from cora.data.transforms import Resize
from cora.engine.convert import PROMPT_KEY
from cora.engine.train_prompt import prompt_config, region_accuracy, train_prompt
from cora.modeling.detector import CORA


def test_prompt_training_raises_accuracy_and_changes_only_the_prompt(tmp_path):
    root = tmp_path / "shapes"
    write_synthetic(root, num_images=10, seed=1, size=(64, 64))
    data = build_dataset(root / "instances_train.json", root, train=True, split=root / "split.json",
                         transforms=Resize(64))
    assert set(data.vocabulary) <= {"circle", "square", "triangle", "star", "cross"}  # base classes only
    torch.manual_seed(0)
    model = CORA.from_config(get_preset("tiny"), random_init=True)
    text = model.encode_vocabulary(list(data.vocabulary))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc0 = region_accuracy(model, data, text)
    log = train_prompt(model, data, tmp_path / "run", prompt_config(epochs=15, batch_size=8, lr=1e-3, lr_drop_epoch=12),
                       text_embeddings=text, progress=False)
    acc1 = region_accuracy(model, data, text)
    assert acc1 > acc0 + 0.05 and log[-1]["loss_ce"] < log[0]["loss_ce"], (acc0, acc1, [r["loss"] for r in log])
    assert log[-1]["lr"] == pytest.approx(1e-4) and log[0]["lr"] == pytest.approx(1e-3)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= {"region_classifier.pool.prompt", "prematcher.pool.prompt"}
    exported = torch.load(tmp_path / "run" / "prompt.pth", weights_only=True)[PROMPT_KEY]
    fresh = CORA.from_config(get_preset("tiny"), random_init=True)
    fresh.load_state_dict({k: v for k, v in before.items()})
    fresh.region_classifier.load_prompt(exported)
    assert abs(region_accuracy(fresh, data, text) - acc1) < 1e-6
