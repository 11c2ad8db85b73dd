"""Data-parallel training: 2 gloo processes on CPU train exactly as 1 process on the same global batches.

The gradient of one step (SGD, no clipping: nothing that hides a gradient's scale) is compared first, to
rtol 1e-5; then a whole run (Adam, clipping, class dropout, EMA) end to end."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from cora.config import get_preset
from cora.data.coco import build_dataset
from cora.data.synthetic import write_synthetic
from cora.data.transforms import Resize
from cora.engine.train_localizer import train_localizer
from cora.engine.trainer import TrainConfig
from cora.modeling.detector import CORA

# Class dropout on every step (two forward passes per step), EMA, clipping: all of it must agree.
TCFG = TrainConfig(epochs=2, batch_size=4, lr=1e-3, ema_decay=0.9, class_dropout=1.0, clip_max_norm=1.0)


def _setup(root):
    data = build_dataset(root / "instances_train.json", root, train=True, split=root / "split.json",
                         transforms=Resize(64))  # equal sizes: no process pads differently from another
    torch.manual_seed(0)
    model = CORA.from_config(get_preset("tiny"), random_init=True)
    return data, model, model.encode_vocabulary(list(data.vocabulary))


def one_step_update(model, data, text, rank: int = 0, world: int = 1, lr: float = 0.1) -> dict:
    """The change of the trainable weights after one SGD step (no clipping) on the global batch of items
    0..3, this process taking items rank, rank + world, ... (run_training's split): -lr x the gradient."""
    from cora.engine.distributed import average_gradients
    from cora.engine.train_localizer import LOCALIZER_PREFIXES, localizer_step
    from cora.engine.trainer import freeze_except
    from cora.modeling.losses import SetCriterion

    trainable = freeze_except(model, LOCALIZER_PREFIXES)
    before = {k: v.detach().clone() for k, v in trainable.items()}
    images, targets = zip(*[data[i] for i in range(4)][rank::world])
    # class dropout on: each process draws the same class split from its own copy of the generator
    ctx = {"tcfg": TrainConfig(class_dropout=1.0), "step_rng": torch.Generator().manual_seed(7), "criterion": SetCriterion()}
    model.train()
    model.backbone.eval()
    loss, _ = localizer_step(model, list(images), list(targets), text, ctx)
    loss.backward()
    average_gradients(list(trainable.values()))
    torch.optim.SGD(trainable.values(), lr=lr).step()
    return {k: (v.detach() - before[k]) for k, v in trainable.items()}


def _worker(rank, world, port, root, out):
    from cora.engine.distributed import average_gradients, init_distributed, mean_over_processes

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size) == (rank, world)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), float(rank + 1))
    average_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), (world + 1) / 2))  # the mean over processes
    assert mean_over_processes({"a": float(rank)}) == {"a": (world - 1) / 2}
    data, model, text = _setup(root)
    torch.save(one_step_update(model, data, text, rank, world), out / f"update_rank{rank}.pt")
    data, model, text = _setup(root)
    train_localizer(model, data, out, TCFG, text_embeddings=text, progress=False)
    torch.save(model.learned_state_dict(), out / f"weights_rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    root = tmp_path / "shapes"
    write_synthetic(root, num_images=9, seed=4, size=(64, 64), val_fraction=0.1)  # 8 training images
    data, single, text = _setup(root)
    ref = one_step_update(single, data, text)
    data, single, text = _setup(root)
    log1 = train_localizer(single, data, tmp_path / "one", TCFG, text_embeddings=text, progress=False)

    (tmp_path / "two").mkdir()
    mp.spawn(_worker, args=(2, _free_port(), root, tmp_path / "two"), nprocs=2, join=True)
    u0, u1 = (torch.load(tmp_path / "two" / f"update_rank{r}.pt", weights_only=True) for r in (0, 1))
    scale = max(float(v.abs().max()) for v in ref.values())
    assert scale > 0
    for k, v in ref.items():
        assert torch.equal(u0[k], u1[k]), k
        # rtol 1e-5; atol 1e-6 of the largest update for entries that are float noise around 0
        torch.testing.assert_close(u0[k], v, rtol=1e-5, atol=1e-6 * scale, msg=k)
    # negative control: a sum over processes instead of the mean (2 x the update) is caught
    assert any(not torch.allclose(2 * u0[k], v, rtol=1e-5, atol=1e-6 * scale) for k, v in ref.items())

    log2 = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log2] == [r["step"] for r in log1] == [1, 2, 3, 4]
    for a, b in zip(log1, log2):
        for key in a:
            if key.startswith("loss"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a["step"])
    w0, w1 = (torch.load(tmp_path / "two" / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in single.learned_state_dict().items():
        assert torch.equal(w0[k], w1[k]), k  # the processes stay in step
        # Adam turns float noise in near-zero gradients into steps of up to lr: compare at a fraction of the
        # 4 x lr that a parameter can move in this run (a wrong gradient moves many by about that much).
        torch.testing.assert_close(w0[k], v, rtol=0, atol=0.3 * TCFG.lr, msg=k)
    from safetensors.torch import load_file

    ema1, ema2 = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("one", "two"))
    for k in ema1:
        torch.testing.assert_close(ema2[k], ema1[k], rtol=0, atol=0.3 * TCFG.lr, msg=k)


def test_batch_size_must_divide_among_processes(monkeypatch, tmp_path):
    from cora.engine import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    root = tmp_path / "shapes"
    write_synthetic(root, num_images=3, seed=4, size=(64, 64))
    data, model, text = _setup(root)
    with pytest.raises(ValueError, match="batch_size 4 must be a multiple of the number of processes \\(3\\)"):
        train_localizer(model, data, tmp_path / "o", TCFG, text_embeddings=text, progress=False)
