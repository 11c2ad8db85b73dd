"""cora.engine.relabel (CLIP-aligned labeling) on the tiny preset with random weights and synthetic shapes (CPU).
The helpers here are shared with tests/cli/test_relabel.py (the `cora relabel` command)."""

import copy
import json

import torch

from cora.config import get_preset
from cora.data.synthetic import write_synthetic
from cora.engine.relabel import RECORD_KEY, relabel_annotations, relabel_dataset
from cora.io import image_tensor, read_image
from cora.modeling.detector import CORA

SIZE = (50, 90)  # (h, w): not square, so the x and y scales to the inference size differ (128 / 192 at most)


def make_data(root):
    """Synthetic shapes (6 training images) plus boxes that must be skipped or clipped; returns the json."""
    write_synthetic(root, num_images=7, seed=4, size=SIZE)
    path = root / "instances_train.json"
    data = json.loads(path.read_text())
    image_id, next_id = data["images"][0]["id"], max(a["id"] for a in data["annotations"]) + 1
    extra = [  # (bbox xywh, category id, extra fields); ids 1..5 are base, 6..8 novel
        ([2, 2, 20, 20], 1, {"iscrowd": 1}),
        ([5, 5, 0, 10], 2, {}),                 # zero width
        ([200, 10, 10, 10], 3, {}),             # outside the 90 px wide image: empty once clipped
        ([3, 3, 10, 10], 1, {"ignore": 1}),
        ([80, 30, 30, 30], 4, {}),              # partly outside: classified on its clipped part
        ([-5, -5, 20, 20], 5, {}),
    ]
    for bbox, cid, fields in extra:
        data["annotations"].append({"id": next_id, "image_id": image_id, "category_id": cid, "bbox": bbox,
                                    "area": bbox[2] * bbox[3], "iscrowd": 0, **fields})
        next_id += 1
    path.write_text(json.dumps(data))
    return data


def tiny_model():
    torch.manual_seed(0)  # the CLI's --random-init builds the same weights (load_model seeds --seed, 0)
    return CORA.from_config(get_preset("tiny"), random_init=True).eval()


def eligible(ann, data):
    """Not crowd / ignored, w and h > 0 and something left inside the image: the boxes relabel classifies."""
    img = next(i for i in data["images"] if i["id"] == ann["image_id"])
    x, y, w, h = ann["bbox"]
    inside = min(x + w, img["width"]) > max(x, 0) and min(y + h, img["height"]) > max(y, 0)
    return not ann.get("iscrowd", 0) and not ann.get("ignore", 0) and w > 0 and h > 0 and inside


@torch.no_grad()
def reference(model, data, root, names, text):
    """One image at a time, from the image file: {annotation id: (category id, probability, top-2 margin)}."""
    id_of = {c["name"]: c["id"] for c in data["categories"]}
    vocab_ids = [id_of[n] for n in names]
    out = {}
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"] and a["category_id"] in vocab_ids
                and eligible(a, data)]
        if not anns:
            continue
        image = image_tensor(read_image(root / img["file_name"]))
        h, w = image.shape[-2:]
        batch, sizes, _ = model.preprocess([image])
        scale = torch.tensor([sizes[0, 1] / w, sizes[0, 0] / h] * 2)
        boxes = torch.tensor([[max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)]
                              for x, y, bw, bh in (a["bbox"] for a in anns)], dtype=torch.float32) * scale
        layer3 = model.backbone.features(model.backbone.normalize(batch))
        logits = model.region_classifier(layer3, boxes[None], text)  # Tensor[1, N, 4] form
        top = logits.topk(2, dim=-1)
        probs = logits.softmax(-1).max(-1).values
        for a, label, p, (l1, l2) in zip(anns, top.indices[:, 0].tolist(), probs.tolist(), top.values.tolist()):
            out[a["id"]] = (vocab_ids[label], p, l1 - l2)
    return out


def centred_text(model, dataset, k):
    """Random text embeddings [k, D] orthogonal to the mean region embedding. A random CLIP maps every box
    to nearly one direction, so its own text embeddings give one class to all boxes; these spread them."""
    with torch.no_grad():
        embeddings = []
        for i in range(len(dataset)):
            image, target = dataset[i]
            batch, sizes, orig = model.preprocess([image])
            layer3 = model.backbone.features(model.backbone.normalize(batch))
            scale = torch.tensor([sizes[0, 1] / orig[0, 1], sizes[0, 0] / orig[0, 0]] * 2)
            embeddings.append(model.region_classifier.region_embeddings(layer3, [target["boxes"] * scale]))
    mean = torch.nn.functional.normalize(torch.cat(embeddings).mean(0), dim=0)
    text = torch.randn(k, mean.shape[0], generator=torch.Generator().manual_seed(1))
    return text - (text @ mean)[:, None] * mean


def assert_only_categories_changed(data, result, new_ids):
    """Every field equals the input's, except the category of annotations in new_ids {ann id: category}."""
    assert {k: v for k, v in result.items() if k not in ("annotations", "info")} == \
           {k: v for k, v in data.items() if k not in ("annotations", "info")}
    assert len(result["annotations"]) == len(data["annotations"])
    for before, after in zip(data["annotations"], result["annotations"]):
        cid = new_ids.get(before["id"], before["category_id"])
        expected = dict(before, category_id=cid)
        if cid != before["category_id"]:
            expected["original_category_id"] = before["category_id"]
        assert after == expected


def test_relabels_every_box_like_a_per_image_reference(tmp_path):
    root = tmp_path / "shapes"
    data = make_data(root)
    names = ["star", "circle", "hexagon", "square", "triangle"]  # not in id order; hexagon is novel
    dataset = relabel_dataset(root / "instances_train.json", root, ",".join(names))
    model = tiny_model()
    text = centred_text(model, dataset, len(names))
    untouched = copy.deepcopy(data)
    result, stats = relabel_annotations(model, dataset, text_embeddings=text, batch_size=4, progress=False)
    assert data == untouched  # the input is not modified

    ref = reference(model, data, root, names, text)
    got = {a["id"]: a["category_id"] for a in result["annotations"] if a["id"] in ref}
    wrong = {i: (got[i], ref[i]) for i in ref if got[i] != ref[i][0] and ref[i][2] > 1e-3}  # ties may flip
    assert not wrong
    assert len({c for c, _, _ in ref.values()}) >= 3  # the reference is not one class for every box
    new_ids = {i: ref[i][0] for i in ref}
    assert_only_categories_changed(data, result, new_ids)
    changed = sum(new_ids[a["id"]] != a["category_id"] for a in data["annotations"] if a["id"] in ref)
    assert 0 < changed < len(ref)
    assert stats == {"vocabulary_ids": [4, 1, 8, 2, 3], "vocabulary_size": 5, "annotations": len(data["annotations"]),
                     "classified": len(ref), "relabelled": len(ref), "changed": changed, "below_min_score": 0,
                     "skipped": len(data["annotations"]) - len(ref), "min_score": None}
    assert result["info"] == {**data["info"], RECORD_KEY: stats}

    # --min-score between the probabilities: exactly the boxes at or above it are relabelled.
    threshold = sorted(p for _, p, _ in ref.values())[len(ref) // 2]
    result, stats = relabel_annotations(model, dataset, text_embeddings=text, min_score=threshold, progress=False)
    kept = {i for i, (_, p, _) in ref.items() if p < threshold}
    assert_only_categories_changed(data, result, {i: c for i, (c, _, _) in ref.items() if i not in kept})
    assert stats["below_min_score"] == len(kept) > 0 and stats["relabelled"] == len(ref) - len(kept) > 0
