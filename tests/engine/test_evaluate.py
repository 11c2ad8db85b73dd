"""COCO OVD / LVIS metrics against hand-computed values on small hand-made ground truths."""

import json
import math

import numpy as np
import pytest
import torch

from cora.engine import evaluate as ev

# COCO / LVIS interpolate precision at 101 recall points r = 0, 0.01, ..., 1: a recall reached at 0.5
# covers the 51 points 0 .. 0.50.
R = 101


def box(x, y, w=40, h=40):
    return [x, y, w, h]


def coco_gt(anns, categories=("cat", "dog", "bird"), num_images=2):
    """anns: (image_id, category name, bbox); category ids are 1.. in order."""
    ids = {name: i + 1 for i, name in enumerate(categories)}
    return {
        "images": [{"id": i, "width": 300, "height": 300, "file_name": f"{i}.png"} for i in range(1, num_images + 1)],
        "categories": [{"id": i, "name": n} for n, i in ids.items()],
        "annotations": [{"id": k + 1, "image_id": img, "category_id": ids[c], "bbox": b, "area": b[2] * b[3],
                         "iscrowd": 0} for k, (img, c, b) in enumerate(anns)],
    }


def perfect(gt, score=1.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
            for a in gt["annotations"]]


ANNS = [(1, "cat", box(10, 10)), (1, "dog", box(100, 100)), (2, "cat", box(50, 60, 80, 50)), (2, "bird", box(200, 10))]


def test_coco_perfect_detections_give_one():
    gt = coco_gt(ANNS)
    result = ev.evaluate_coco_ovd(perfect(gt), gt, novel=["cat"])
    for key in ("AP50_novel", "AP50_base", "AP50_all", "AP", "AP50", "AP75"):
        assert result["metrics"][key] == pytest.approx(1.0), key
    assert {n: c["group"] for n, c in result["per_class"].items()} == {"cat": "novel", "dog": "base", "bird": "base"}
    assert result["num_images"] == 2 and result["num_detections"] == 4 and result["ignored_detections"] == 0


@pytest.mark.parametrize("tp_score, fp_score, ap50", [
    # Two GT cats; the true positive (IoU 0.64) ranks first: precision 1/1 then 1/2 at recall 1/2 both times;
    # the envelope gives precision 1 at the 51 recall points <= 0.5, 0 above: AP50 = 51 / 101.
    (0.9, 0.8, 51 / R),
    # False positive first: precision 0/1 at recall 0, then 1/2 at recall 1/2; the envelope (max to the
    # right) gives 0.5 at the 51 points <= 0.5: AP50 = 0.5 * 51 / 101.
    (0.8, 0.9, 0.5 * 51 / R),
])
def test_coco_ap_by_hand(tp_score, fp_score, ap50):
    gt = coco_gt([(1, "cat", [0, 0, 100, 100]), (1, "cat", [150, 150, 50, 50])], num_images=1)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 64, 100], "score": tp_score},   # IoU 6400/10000
            {"image_id": 1, "category_id": 1, "bbox": [150, 0, 40, 40], "score": fp_score}]  # overlaps nothing
    m = ev.evaluate_coco_ovd(dets, gt, novel=["cat"])["metrics"]
    assert m["AP50"] == pytest.approx(ap50) and m["AP50_novel"] == pytest.approx(ap50)
    # IoU 0.64 matches at thresholds 0.50, 0.55, 0.60 (3 of 10) and nothing above: AP = 3/10 * AP50.
    assert m["AP"] == pytest.approx(0.3 * ap50) and m["AP75"] == 0.0
    assert math.isnan(m["AP50_base"])  # dog and bird have no ground truth here


def test_novel_perfect_base_wrong():
    gt = coco_gt(ANNS)
    dets = [{**d, "bbox": [d["bbox"][0] + 150, d["bbox"][1], 10, 10]} if d["category_id"] != 1 else d
            for d in perfect(gt)]
    result = ev.evaluate_coco_ovd(dets, gt, novel=["cat"])
    m = result["metrics"]
    assert m["AP50_novel"] == pytest.approx(1.0) and m["AP50_base"] == 0.0
    assert m["AP50_all"] == pytest.approx(1 / 3)  # mean over the 3 classes
    assert result["per_class"]["dog"]["AP50"] == 0.0 and result["per_class"]["cat"]["AP"] == pytest.approx(1.0)


def test_novel_by_id_and_explicit_base():
    gt = coco_gt(ANNS)
    result = ev.evaluate_coco_ovd(perfect(gt), gt, novel=[1], base=["dog"])
    assert set(result["per_class"]) == {"cat", "dog"}          # bird is in neither group: not evaluated
    assert result["ignored_detections"] == 1


def test_default_split_comes_from_cora_data_splits():
    splits = pytest.importorskip("cora.data.splits")
    names = list(splits.COCO_BASE_CLASSES) + list(splits.COCO_NOVEL_CLASSES) + ["hair drier"]
    gt = coco_gt([(1, "cat", box(10, 10)), (1, "person", box(100, 100)), (1, "hair drier", box(200, 200))],
                 categories=names, num_images=1)
    result = ev.evaluate_coco_ovd(perfect(gt), gt)
    assert len(result["per_class"]) == 65 and "hair drier" not in result["per_class"]
    assert result["per_class"]["cat"]["group"] == "novel" and result["per_class"]["person"]["group"] == "base"
    assert result["metrics"]["AP50_novel"] == pytest.approx(1.0) and result["ignored_detections"] == 1


def test_split_recorded_in_ovd_json_info_is_the_default():
    gt = {**coco_gt(ANNS), "info": {"ovd_split": {"image_set": "val", "base": ["cat", "bird"], "novel": ["dog"]}}}
    result = ev.evaluate_coco_ovd(perfect(gt), gt)
    assert {n: c["group"] for n, c in result["per_class"].items()} == {"cat": "base", "dog": "novel", "bird": "base"}


def test_errors():
    gt = coco_gt(ANNS)
    with pytest.raises(ValueError, match="unknown novel class 'caat'.*did you mean 'cat'"):
        ev.evaluate_coco_ovd(perfect(gt), gt, novel=["caat"])
    with pytest.raises(ValueError, match="image id.*absent from the ground truth, e.g. \\[7\\]"):
        ev.evaluate_coco_ovd([{"image_id": 7, "category_id": 1, "bbox": box(0, 0), "score": 1.0}], gt, novel=["cat"])
    with pytest.raises(ValueError, match="ground truth is not LVIS format: images\\[0\\] lacks 'neg_category_ids'"):
        ev.evaluate_lvis(perfect(gt), gt)
    with pytest.raises(ValueError, match="unknown split 'coco'.*did you mean 'coco-ovd'"):
        ev.evaluate("coco", [], gt)
    with pytest.raises(ValueError, match="rare classes"):
        ev.evaluate("lvis", [], lvis_gt(), novel=["apple"])
    many = [{"id": i, "name": f"class_{i}"} for i in range(1, 31)]  # long vocabularies get hints, not a list
    with pytest.raises(ValueError, match=r"^unknown novel class 'class_7x' among the ground truth's 30 categories "
                                         r"\(did you mean 'class_7'"):
        ev.resolve_categories(many, ["class 3", 4, "class_7x"])
    assert ev.resolve_categories(many, ["class 3", 4]) == {3, 4}  # LVIS names match with spaces too


def test_verbose_shows_pycocotools_output(capsys):
    gt = coco_gt(ANNS)
    ev.evaluate_coco_ovd(perfect(gt), gt, novel=["cat"])
    assert capsys.readouterr().out == ""
    ev.evaluate_coco_ovd(perfect(gt), gt, novel=["cat"], verbose=True)
    assert "Average Precision  (AP) @[ IoU=0.50 " in capsys.readouterr().out


@pytest.mark.parametrize("results, message", [
    ({"image_id": 1}, "expected a list of"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], "entry 0 lacks 'score'"),
    ([{"image_id": "a", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}], "non-numeric"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}], "expected 4 numbers"),
])
def test_check_coco_results(results, message):
    with pytest.raises(ValueError, match=message):
        ev.check_coco_results(results)


def test_no_detections_score_zero_and_inputs_are_not_modified():
    gt = coco_gt(ANNS)
    snapshot = json.dumps(gt)
    assert ev.evaluate_coco_ovd([], gt, novel=["cat"])["metrics"]["AP50_all"] == 0.0
    dets = perfect(gt)
    ev.evaluate_coco_ovd(dets, gt, novel=["cat"])
    assert json.dumps(gt) == snapshot and set(dets[0]) == {"image_id", "category_id", "bbox", "score"}


def test_image_ids_restrict_the_evaluation():
    gt = coco_gt(ANNS)
    dets = [d for d in perfect(gt) if d["image_id"] == 1]  # image 2 not run
    result = ev.evaluate_coco_ovd(dets, gt, novel=["cat"], image_ids=[1])
    assert result["num_images"] == 1 and result["metrics"]["AP50_all"] == pytest.approx(1.0)
    assert math.isnan(result["per_class"]["bird"]["AP50"])  # bird only appears in image 2


# --- LVIS -------------------------------------------------------------------------------------------------

def lvis_gt():
    """3 categories (rare, common, frequent), 2 images; image 1 has 'frequent' verified absent and
    'common' not exhaustively annotated."""
    cats = [{"id": 1, "name": "aerosol_can", "frequency": "r", "synset": "x"},
            {"id": 2, "name": "apple", "frequency": "c", "synset": "y"},
            {"id": 3, "name": "banana", "frequency": "f", "synset": "z"}]
    images = [{"id": 1, "width": 300, "height": 300, "coco_url": "http://x/val2017/1.jpg",
               "neg_category_ids": [3], "not_exhaustive_category_ids": [2]},
              {"id": 2, "width": 300, "height": 300, "coco_url": "http://x/val2017/2.jpg",
               "neg_category_ids": [], "not_exhaustive_category_ids": []}]
    anns = [(1, 1, box(10, 10)), (1, 2, box(100, 100)), (2, 3, box(50, 50, 60, 30)), (2, 2, box(200, 200))]
    return {"images": images, "categories": cats,
            "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3]}
                            for k, (i, c, b) in enumerate(anns)]}


def test_lvis_perfect_detections_give_one():
    gt = lvis_gt()
    m = ev.evaluate_lvis(perfect(gt), gt)["metrics"]
    for key in ("AP", "APr", "APc", "APf", "AP50", "AP75"):
        assert m[key] == pytest.approx(1.0), key
    assert list(m)[:4] == ["AP", "APr", "APc", "APf"]


def test_lvis_federated_rules_by_hand():
    gt = lvis_gt()
    dets = perfect(gt, score=0.5) + [
        {"image_id": 2, "category_id": 1, "bbox": box(0, 200), "score": 0.9},   # unverified class in image 2: ignored
        {"image_id": 1, "category_id": 2, "bbox": box(200, 0), "score": 0.9},   # not-exhaustive class: ignored
        # banana is verified absent from image 1: a false positive ranked above banana's true positive. Precision
        # 0/1 at recall 0, then 1/2 at recall 1; the envelope is 0.5 at all 101 points: APf = 0.5.
        {"image_id": 1, "category_id": 3, "bbox": box(0, 200), "score": 0.9},
    ]
    result = ev.evaluate_lvis(dets, gt)
    m = result["metrics"]
    assert m["APr"] == pytest.approx(1.0) and m["APc"] == pytest.approx(1.0) and m["APf"] == pytest.approx(0.5)
    assert m["AP"] == pytest.approx(2.5 / 3)
    assert result["per_class"]["banana"] == {"id": 3, "group": "f", "AP": pytest.approx(0.5),
                                             "AP50": pytest.approx(0.5)}


def test_lvis_keeps_300_detections_per_image():
    gt = lvis_gt()
    # 300 detections of a class image 2 does not mention (never scored, but they count towards the 300)
    # rank above image 2's perfect detections, which are then dropped: banana (only in image 2) gets AP 0,
    # apple keeps its image-1 true positive (recall 1/2 at precision 1): AP = 51 / 101.
    filler = [{"image_id": 2, "category_id": 1, "bbox": box(0, 250, 5, 5), "score": 0.9} for _ in range(300)]
    per_class = ev.evaluate_lvis(filler + perfect(gt, score=0.5), gt)["per_class"]
    assert per_class["banana"]["AP"] == 0.0 and per_class["apple"]["AP"] == pytest.approx(51 / R)
    assert ev.evaluate_lvis(filler + perfect(gt, score=0.5), gt, max_dets=302)["metrics"]["AP"] == pytest.approx(1.0)


def test_lvis_numpy_compat_patches_only_lvis_and_restores():
    import lvis.eval as lvis_eval

    had_float = "float" in vars(np)
    with ev.lvis_numpy_compat():
        with ev.lvis_numpy_compat():  # re-entrant
            assert lvis_eval.np.float is float and lvis_eval.np.cumsum is np.cumsum
        assert lvis_eval.np.float is float
        assert ("float" in vars(np)) == had_float  # numpy itself untouched
    assert lvis_eval.np is np


@pytest.mark.skipif(hasattr(np, "float"), reason="numpy < 1.24 still has np.float")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # lvis' logger.warn
def test_lvis_without_the_patch_fails_on_numpy_2():
    from lvis import LVIS, LVISEval

    gt = lvis_gt()
    lvis_gt_api = LVIS.__new__(LVIS)
    lvis_gt_api.logger, lvis_gt_api.dataset = __import__("logging").getLogger("lvis"), gt
    lvis_gt_api._create_index()
    lvis_eval = LVISEval(lvis_gt_api, perfect(gt), iou_type="bbox")
    lvis_eval.evaluate()
    with pytest.raises(AttributeError, match="float"):
        lvis_eval.accumulate()
    with ev.lvis_numpy_compat():
        lvis_eval.accumulate()


# --- conversion, distributed, output ------------------------------------------------------------------------

def test_detections_to_coco():
    det = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 1.0]]),
           "scores": torch.tensor([0.75, 0.5]), "labels": torch.tensor([1, -1])}
    assert ev.detections_to_coco(det, 9, [5, 7]) == [
        {"image_id": 9, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.75}]
    assert ev.detections_to_coco({k: v[:1].numpy() for k, v in det.items()}, 3, {1: 90})[0]["category_id"] == 90
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert ev.detections_to_coco(empty, 1, [1]) == []


def test_merge_rank_detections_drops_padding_repeats():
    a = {"image_id": 1, "category_id": 1, "bbox": box(0, 0), "score": 0.5}
    b = {"image_id": 2, "category_id": 1, "bbox": box(0, 0), "score": 0.5}
    assert ev.merge_rank_detections([[a, a], [b, dict(a)]]) == [a, a, b]


def test_gather_detections(tmp_path):
    import torch.distributed as dist

    dets = [{"image_id": 1, "category_id": 1, "bbox": box(0, 0), "score": 0.5}]
    assert ev.gather_detections(dets) == dets  # not initialised: the list itself
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert ev.gather_detections(dets) == dets
    finally:
        dist.destroy_process_group()


def test_format_table_and_save_json(tmp_path):
    gt = coco_gt(ANNS[:1], num_images=1)
    result = ev.evaluate_coco_ovd(perfect(gt), gt, novel=["cat"])
    table = ev.format_table(result, per_class=True)
    assert "AP50_novel   100.00" in table and "AP50_base         -" in table and "cat" in table
    ev.save_json(tmp_path / "m.json", result)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["metrics"]["AP50_base"] is None and saved["metrics"]["AP50_novel"] == pytest.approx(1.0)
