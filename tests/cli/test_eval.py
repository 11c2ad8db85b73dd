"""`cora eval` end to end through cora.cli.eval's add_parser / run: scoring a detections file, and running a tiny
random model over a synthetic dataset."""

import argparse
import json

import pytest
import torch

from cora.cli.eval import add_parser
from cora.errors import UserError

from tests.engine.test_evaluate import ANNS, coco_gt, lvis_gt, perfect


def cora_eval(argv):
    parser = argparse.ArgumentParser(prog="cora")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv])
    return args.run(args)


def write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture
def files(tmp_path):
    gt = coco_gt(ANNS)
    dets = perfect(gt)
    dets[1] = {**dets[1], "bbox": [250, 250, 10, 10]}  # the dog is missed: AP50_base = (0 + 1) / 2
    return {"gt": write(tmp_path / "gt.json", gt), "dets": write(tmp_path / "dets.json", dets),
            "lvis": write(tmp_path / "lvis.json", lvis_gt()),
            "lvis_dets": write(tmp_path / "lvis_dets.json", perfect(lvis_gt())),
            "out": str(tmp_path / "out")}


def test_score_a_detections_file(files, capsys):
    assert cora_eval(["--detections", files["dets"], "--gt", files["gt"], "--split", "coco-ovd", "--novel", "cat",
                      "--out", files["out"], "--per-class"]) == 0
    printed = capsys.readouterr().out
    assert "AP50_novel   100.00" in printed and "AP50_base     50.00" in printed and "dog" in printed
    assert "Accumulating" not in printed  # pycocotools is quiet
    saved = json.loads(open(f"{files['out']}/metrics.json").read())
    assert saved["metrics"]["AP50_novel"] == pytest.approx(1.0) and saved["metrics"]["AP50_base"] == pytest.approx(0.5)
    assert saved["per_class"]["dog"] == {"id": 2, "group": "base", "AP": 0.0, "AP50": 0.0}
    assert saved["gt"] == files["gt"] and saved["detections"] == files["dets"]


def test_score_lvis(files, capsys):
    assert cora_eval(["--detections", files["lvis_dets"], "--gt", files["lvis"], "--split", "lvis",
                      "--out", files["out"]]) == 0
    assert "APr          100.00" in capsys.readouterr().out
    assert json.loads(open(f"{files['out']}/metrics.json").read())["metrics"]["APf"] == pytest.approx(1.0)


def test_novel_split_file(files, tmp_path):
    split = write(tmp_path / "split.json", {"base": ["cat"], "novel": ["dog", "bird"]})
    cora_eval(["--detections", files["dets"], "--gt", files["gt"], "--split", "coco-ovd", "--novel", split,
               "--out", files["out"]])
    saved = json.loads(open(f"{files['out']}/metrics.json").read())
    assert saved["metrics"]["AP50_novel"] == pytest.approx(0.5) and saved["metrics"]["AP50_base"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv, message", [
    (["--detections", "{tmp}/nope.json", "--gt", "{gt}", "--split", "coco-ovd"],
     "detections file not found: .*nope.json"),
    (["--detections", "{dets}", "--gt", "{tmp}/nope.json", "--split", "coco-ovd"], "ground truth not found"),
    (["--detections", "{gt}", "--gt", "{gt}", "--split", "coco-ovd"], "is not COCO results format: expected a list"),
    (["--detections", "{dets}", "--gt", "{gt}", "--split", "coco-ovd", "--novel", "cat,dgo"],
     "unknown novel class 'dgo'.*did you mean 'dog'"),
    (["--detections", "{dets}", "--gt", "{gt}", "--split", "coco_ovd"],
     "unknown split 'coco_ovd'.*did you mean 'coco-ovd'"),
    (["--detections", "{dets}", "--gt", "{gt}", "--split", "lvis"], "not LVIS format"),
    (["--detections", "{dets}", "--gt", "{gt}", "--split", "coco-ovd", "--random-init"], "drop --random-init"),
    (["--gt", "{gt}", "--split", "coco-ovd"], "no CORA weights"),
    (["--random-init", "--split", "coco-ovd"], "no ground truth: pass --gt"),
])
def test_errors_are_one_line(files, tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path, gt=files["gt"], dets=files["dets"]) for a in argv]
    with pytest.raises(UserError, match=message) as e:
        cora_eval([*argv, "--out", files["out"]])
    assert "\n" not in str(e.value)


def test_model_run_on_synthetic_data(tmp_path, capsys):
    synthetic = pytest.importorskip("cora.data.synthetic")
    data = tmp_path / "shapes"
    synthetic.write_synthetic(data, num_images=4, seed=0, size=(64, 64), val_fraction=0.5)
    out = tmp_path / "out"
    assert cora_eval(["--data", str(data), "--split", "coco-ovd", "--random-init", "--preset", "tiny",
                      "--device", "cpu", "--out", str(out), "--novel-prior", "8", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "novel classes from" in printed and "AP50_novel" in printed
    dets = json.loads((out / "detections.json").read_text())
    val = json.loads((data / "instances_val.json").read_text())
    assert dets and {d["image_id"] for d in dets} <= {im["id"] for im in val["images"]}
    assert len(dets) <= 100 * len(val["images"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["config"]["name"] == "tiny" and metrics["random_init"] is True
    assert {c["group"] for c in metrics["per_class"].values()} == {"novel", "base"}
    # The file the model wrote scores the same without the model.
    assert cora_eval(["--detections", str(out / "detections.json"), "--data", str(data), "--split", "coco-ovd",
                      "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["metrics"] == metrics["metrics"]


def test_model_run_lvis_format(tmp_path, capsys):
    synthetic = pytest.importorskip("cora.data.synthetic")
    data = tmp_path / "shapes"
    synthetic.write_synthetic(data, num_images=3, seed=1, size=(64, 64), val_fraction=0.5)
    out = tmp_path / "out"
    assert cora_eval(["--data", str(data), "--split", "lvis", "--random-init", "--preset", "tiny", "--device", "cpu",
                      "--out", str(out), "--limit", "1", "--set", "inference.max_detections=300"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 1 and set(metrics["metrics"]) >= {"AP", "APr", "APc", "APf"}
    assert metrics["config"]["inference"]["max_detections"] == 300


@pytest.mark.parametrize("argv, line, context, topk, prior", [
    ([], "protocol official (the official evaluation code): prompts cut at 15 tokens, every (box, class) pair "
         "above the score threshold into NMS, novel prior x8", 15, 0, 8.0),
    (["--protocol", "cora"], "protocol cora: prompts cut at 77 tokens, the best 3000 (box, class) pairs per image "
                             "into NMS, novel prior x1", 77, 3000, 1.0),
    # the user's --set and --novel-prior win over the protocol's settings, and the line says so
    (["--set", "text_context_length=20", "--novel-prior", "2"], "protocol official (the official evaluation code): "
     "prompts cut at 20 tokens, every (box, class) pair above the score threshold into NMS, novel prior x2", 20, 0, 2.0),
])
def test_protocol_is_applied_and_printed(tmp_path, capsys, argv, line, context, topk, prior):
    synthetic = pytest.importorskip("cora.data.synthetic")
    data = tmp_path / "shapes"
    synthetic.write_synthetic(data, num_images=2, seed=0, size=(64, 64), val_fraction=0.5)
    out = tmp_path / "out"
    assert cora_eval(["--data", str(data), "--split", "coco-ovd", "--random-init", "--preset", "tiny",
                      "--device", "cpu", "--out", str(out), *argv]) == 0
    assert line in capsys.readouterr().out.splitlines()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == ("cora" if "cora" in argv else "official") and metrics["novel_prior"] == prior
    assert metrics["config"]["text_context_length"] == context
    assert metrics["config"]["inference"]["pre_nms_topk"] == topk


def test_protocol_defaults_per_split():
    from cora.cli.eval import protocol_settings

    assert protocol_settings("official", "coco-ovd", None) == (["text_context_length=15", "inference.pre_nms_topk=0"],
                                                               8.0)
    assert protocol_settings("official", "lvis", None)[1] == 1.0  # the x 8 is the official COCO evaluation's
    assert protocol_settings("cora", "coco-ovd", None) == ([], 1.0)
    assert protocol_settings("cora", "coco-ovd", 3) == ([], 3.0)


def test_protocol_flags_with_detections_are_refused(files):
    with pytest.raises(UserError, match="drop --protocol, --novel-prior"):
        cora_eval(["--detections", files["dets"], "--gt", files["gt"], "--split", "coco-ovd", "--protocol", "cora",
                   "--novel-prior", "2", "--out", files["out"]])


def test_novel_prior_moves_the_pre_matching_to_the_novel_classes(tmp_path, monkeypatch):
    """--novel-prior 8 multiplies the novel classes' pre-matching probabilities (theirs only): more anchors are
    matched to novel classes than with 1, and the detections change with them. A random model's logits
    (100 x cosine) are so far apart that no prior moves an argmax: temperature 1 gives it near ties, and with
    seed 3 every anchor goes to a base class at prior 1 (measured; seeds 0-2 pick a novel one already)."""
    from cora.data.synthetic import write_synthetic
    from cora.modeling.prematch import AnchorPreMatcher

    data = tmp_path / "shapes"
    write_synthetic(data, num_images=4, seed=0, size=(64, 64), val_fraction=0.5)
    names = [c["name"] for c in json.loads((data / "instances_val.json").read_text())["categories"]]
    novel = torch.tensor([n in json.loads((data / "split.json").read_text())["novel"] for n in names])
    assert 0 < int(novel.sum()) < len(names)
    real = AnchorPreMatcher.forward
    calls = []

    def spy(self, *args, **kwargs):  # (layer4_map, anchors, image_sizes, padded_size, text_embeddings, class_prior)
        out = real(self, *args, **kwargs)
        calls.append((args[5] if len(args) > 5 else kwargs.get("class_prior"), out["classes"]))
        return out

    monkeypatch.setattr(AnchorPreMatcher, "forward", spy)
    novel_share, detections = {}, {}
    for prior in (1, 8):
        calls.clear()
        out = tmp_path / f"prior{prior}"
        assert cora_eval(["--data", str(data), "--split", "coco-ovd", "--random-init", "--preset", "tiny",
                          "--seed", "3", "--set", "temperature=1", "--device", "cpu", "--out", str(out),
                          "--novel-prior", str(prior), "--batch-size", "2"]) == 0
        assert calls
        for weights, _ in calls:
            assert weights.tolist() == [float(prior) if n else 1.0 for n in novel.tolist()]
        classes = torch.cat([c.reshape(-1) for _, c in calls])
        novel_share[prior] = float(novel[classes].float().mean())
        detections[prior] = json.loads((out / "detections.json").read_text())
    assert novel_share[8] > novel_share[1], novel_share  # here 0 -> 1
    assert detections[8] != detections[1]
