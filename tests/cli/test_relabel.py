"""`cora relabel` (cora.cli.relabel) on the tiny preset with random weights and synthetic shapes (CPU)."""

import argparse
import json

import torch

from cora.cli import main
from cora.cli.relabel import add_parser
from cora.engine.convert import PROMPT_KEY
from cora.engine.relabel import RECORD_KEY
from tests.engine.test_relabel import assert_only_categories_changed, eligible, make_data, reference, tiny_model


def parse(argv):
    parser = argparse.ArgumentParser(prog="cora")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_skips_other_classes_crowd_and_degenerate_boxes(tmp_path, capsys):
    root = tmp_path / "shapes"
    data = make_data(root)
    prompt = tmp_path / "prompt.pth"
    model = tiny_model()
    pe = model.region_classifier.effective_positional_embedding()
    torch.save({PROMPT_KEY: pe + 0.1 * torch.randn_like(pe)}, prompt)
    args = parse(["relabel", "--data", str(root), "--preset", "tiny", "--random-init", "--prompt", str(prompt),
                  "--batch-size", "3", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "out" / "r.json")])
    assert args.run(args) == 0
    assert "skipped; wrote" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "r.json").read_text())
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r.json"]  # atomic: no temporary file left

    base = json.loads((root / "split.json").read_text())["base"]  # default vocabulary: base of --data/split.json
    model.region_classifier.load_prompt(torch.load(prompt)[PROMPT_KEY])
    ref = reference(model, data, root, base, model.encode_vocabulary(base))
    skipped = [a for a in data["annotations"] if a["id"] not in ref]
    base_ids = {c["id"] for c in data["categories"] if c["name"] in base}
    assert any(a["category_id"] not in base_ids for a in skipped)  # novel shapes
    assert sum(not eligible(a, data) for a in skipped) >= 4        # crowd, ignored, zero width, outside
    assert all(a["category_id"] not in base_ids or not eligible(a, data) for a in skipped)
    assert_only_categories_changed(data, result, {i: c for i, (c, _, _) in ref.items()})
    record = result["info"][RECORD_KEY]
    assert record["skipped"] == len(skipped) and record["classified"] == record["relabelled"] == len(ref)
    assert record["vocabulary_size"] == len(base) and record["prompt"] == str(prompt)
    assert record["ann_file"] == str(root / "instances_train.json") and record["random_init"] is True


def test_min_score_one_changes_nothing_and_bad_input_exits_1(tmp_path, capsys):
    root = tmp_path / "shapes"
    data = make_data(root)
    out = tmp_path / "out" / "r.json"
    common = ["relabel", "--preset", "tiny", "--random-init", "--no-progress", "--device", "cpu"]
    args = parse([*common, "--data", str(root), "--min-score", "1", "--out", str(out)])
    assert args.run(args) == 0
    result = json.loads(out.read_text())
    record = result["info"].pop(RECORD_KEY)
    assert result == data
    assert record["changed"] == record["relabelled"] == 0 and record["below_min_score"] == record["classified"] > 0
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]
    capsys.readouterr()

    bad = {
        "not found": ["--ann-file", str(tmp_path / "missing.json"), "--images", str(root)],
        "did you mean 'circle'": ["--data", str(root), "--vocabulary", "circel,square"],
        "would overwrite": ["--ann-file", str(out), "--images", str(root), "--vocabulary", "all"],
        "--images": ["--ann-file", str(root / "instances_train.json")],
    }
    for expected, flags in bad.items():
        assert main([*common, *flags, "--out", str(out)]) == 1, flags
        err = capsys.readouterr().err
        assert err.startswith("cora relabel: ") and expected in err and err.count("\n") == 1, err
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]
