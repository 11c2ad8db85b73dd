"""Bad input, table-driven: every family of hostile-but-ordinary input of issue #15 is refused with one line
naming the argument or file (exit 1; argparse's usage errors exit 2), never a traceback, never a silent
wrong result, never a lost file; good input of the same shape still works. The same refusals from the
Python API are typed (UserError or another ValueError).

The CLI runs in-process through cora.cli.main; `{d}` in a row is the folder of the module's files.
"""

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cora.cli import main
from cora.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--preset", "tiny", "--random-init", "--device", "cpu"]


class Evil:
    """A pickle that would run a command when loaded: weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cora_pwned",))


def png_bomb(width: int, height: int) -> bytes:
    """A PNG of a few bytes declaring width x height pixels (its data would decompress to them)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from cora.checkpoint import WEIGHTS_NAME, load_model, save_checkpoint
    from cora.config import config_to_dict

    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    for name in ("img.png", "a/x.png", "b/x.png", "same/x.png", "same/x.jpg", "out_in/photo.png"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(d / name)
    (d / "link_to_out_in").symlink_to(d / "out_in")
    (d / "bomb.png").write_bytes(png_bomb(40_000, 40_000))  # 1.6 G pixels in 70 bytes
    full = (d / "img.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    (d / "garbage.png").write_bytes(b"not an image at all" * 10)
    (d / "empty.png").write_bytes(b"")

    model = load_model(preset="tiny", random_init=True)
    state, cfg = model.learned_state_dict(), model.cfg
    save_checkpoint(d / "ckpt", state, cfg)

    def variant(name, state=state, cfg_json=None, weights_bytes=None):
        save_checkpoint(d / name, state, cfg)
        if cfg_json is not None:
            (d / name / "config.json").write_text(cfg_json)
        if weights_bytes is not None:
            (d / name / WEIGHTS_NAME).write_bytes(weights_bytes)

    key = next(iter(state))
    variant("ckpt_nan", state={k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                               for k, v in state.items()})
    good_weights = (d / "ckpt" / WEIGHTS_NAME).read_bytes()
    variant("ckpt_truncated", weights_bytes=good_weights[: len(good_weights) // 2])
    variant("ckpt_garbage", weights_bytes=b"\x00garbage" * 100)
    variant("ckpt_empty", weights_bytes=b"")
    variant("ckpt_cfg_list", cfg_json="[1, 2]")
    variant("ckpt_cfg_bad_json", cfg_json="{not json")
    other = config_to_dict(cfg)
    other["localizer"]["hidden_dim"] = 48  # another architecture: every localizer tensor has another shape
    variant("ckpt_other_cfg", cfg_json=json.dumps(other))
    wrong_type = config_to_dict(cfg)
    wrong_type["inference"]["max_detections"] = "abc"
    variant("ckpt_cfg_wrong_type", cfg_json=json.dumps(wrong_type))
    variant("ckpt_dropped", state={k: v for k, v in state.items() if k != key})
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "plain.safetensors"))

    torch.save(Evil(), d / "evil.pth")
    (d / "empty.pth").write_bytes(b"")
    (d / "text.pth").write_text("this is not a PyTorch file\n")
    torch.save({"model": {}}, d / "no_model.pth")

    (d / "names.txt").write_text("cat\ndog\n")
    (d / "names.csv").write_text("cat,dog\n")
    (d / "names").write_text("cat\ndog\n")
    (d / "names_dir").mkdir()
    (d / "bad_names.json").write_text(json.dumps({"categories": [{"id": 1, "name": 7}]}))
    (d / "bad.yaml").write_text("lr: [1, 2\nbatch_size: 3\n")
    (d / "nan_lr.yaml").write_text("lr: .nan\n")
    (d / "existing_file").write_text("x")
    (d / "not.onnx").write_text("not an onnx model")

    gt = {"images": [{"id": 1, "width": 64, "height": 48, "file_name": "img.png"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (d / "gt.json").write_text(json.dumps(gt))
    good = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.9}]
    (d / "dets_good.json").write_text(json.dumps(good))
    (d / "dets_unknown_cat.json").write_text(json.dumps([{**good[0], "category_id": 99}]))
    (d / "dets_nan_score.json").write_text(json.dumps([{**good[0], "score": float("nan")}]))
    (d / "dets_nan_box.json").write_text(json.dumps([{**good[0], "bbox": [5, float("nan"), 20, 20]}]))
    return d


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `cora argv`, in-process; argparse's exit is caught."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


DETECT = ["detect", "{d}/img.png", "--vocab", "cat"]
TRAIN = ["train", "--data", "{d}/nowhere", "--out", "{d}/run"]

# (id, argv, exit code, pattern the last line of stderr must match)
REFUSED = [
    # Data lost: an output never replaces an input
    ("detect-out-replaces-input", ["detect", "{d}/out_in/photo.png", "--vocab", "cat", "--out", "{d}/out_in", *TINY],
     1, r"^cora detect: output .*out_in/photo\.png would replace an input file"),
    ("detect-out-through-a-link", ["detect", "{d}/out_in/photo.png", "--vocab", "cat", "--out", "{d}/link_to_out_in",
                                   *TINY], 1, r"would replace an input file"),
    ("detect-out-replaces-vocab-file", ["detect", "{d}/img.png", "--vocab-file", "{d}/names.txt",
                                        "--out", "{d}", *TINY], 1, r"would replace an input file"),
    ("detect-image-twice", ["detect", "{d}/img.png", "{d}/img.png", "--vocab", "cat", *TINY], 1, r"given twice"),
    ("relabel-out-is-input", ["relabel", "--ann-file", "{d}/gt.json", "--images", "{d}", "--out", "{d}/gt.json",
                              *TINY], 1, r"^cora relabel: --out .*gt\.json would overwrite the input"),
    ("eval-out-overwrites-gt", ["eval", "--split", "coco-ovd", "--gt", "{d}/eval_out/metrics.json",
                                "--detections", "{d}/dets_good.json", "--out", "{d}/eval_out"],
     1, r"would overwrite the input .*metrics\.json"),
    ("export-out-is-checkpoint-file", ["export", "--out", "{d}/plain.safetensors", "--clip-weights",
                                       "{d}/plain.safetensors", *TINY[:2], "--random-init"],
     1, r"^cora export: --out .*would replace an input file"),
    # Silent wrong results: --set / --config checked against the config's types, numbers against their range
    ("set-wrong-type", [*DETECT, *TINY, "--set", "inference.max_detections=abc"],
     1, r"^cora detect: config key inference\.max_detections must be an int, got 'abc'$"),
    ("set-out-of-range", [*DETECT, *TINY, "--set", "inference.nms_iou=2"], 1,
     r"inference\.nms_iou must be in \[0, 1\]"),
    ("set-nan", [*DETECT, *TINY, "--set", "inference.score_threshold=NaN"], 1, r"must be a finite float, got nan"),
    ("config-nan-lr", ["train", "--config", "{d}/nan_lr.yaml"], 1,
     r"^cora train: --config .*nan_lr\.yaml: lr: expected a finite number > 0, got 'nan'$"),
    ("detect-score-threshold-nan", [*DETECT, "--score-threshold", "nan"], 2,
     r"argument --score-threshold: expected a finite number >= 0 and <= 1, got 'nan'"),
    ("export-score-threshold-nan", ["export", "--out", "x.onnx", "--score-threshold", "nan"], 2,
     r"argument --score-threshold: expected a finite number"),
    ("relabel-min-score-nan", ["relabel", "--out", "x.json", "--min-score", "nan"], 2, r"argument --min-score"),
    ("eval-novel-prior-nan", ["eval", "--split", "coco-ovd", "--novel-prior", "nan"], 2, r"argument --novel-prior"),
    ("eval-limit-0", ["eval", "--split", "coco-ovd", "--limit", "0"], 2, r"argument --limit: expected an integer >= 1"),
    ("train-ema-decay-2", [*TRAIN, "--ema-decay", "2"], 2,
     r"argument --ema-decay: expected a finite number >= 0 and < 1"),
    ("train-class-dropout-1.5", [*TRAIN, "--class-dropout", "1.5"], 2, r"argument --class-dropout"),
    ("train-save-every-negative", [*TRAIN, "--save-every", "-1"], 2,
     r"argument --save-every: expected an integer >= 0"),
    ("train-clip-max-norm-nan", [*TRAIN, "--clip-max-norm", "nan"], 2, r"argument --clip-max-norm"),
    ("train-max-steps-0", [*TRAIN, "--max-steps", "0"], 2, r"argument --max-steps: expected an integer >= 1, got '0'"),
    ("train-max-steps-negative", [*TRAIN, "--max-steps", "-3"], 2, r"argument --max-steps"),
    ("train-lr-inf", [*TRAIN, "--lr", "inf"], 2, r"argument --lr: expected a finite number > 0, got 'inf'"),
    ("train-batch-size-0", [*TRAIN, "--batch-size", "0"], 2, r"argument --batch-size"),
    ("seed-negative", [*DETECT, "--seed", "-1"], 2, r"argument --seed: expected an integer >= 0"),
    ("check-ks-0", ["check", "parity", "x.onnx", "--ks", "0"], 2, r"argument --ks"),
    # a file flag always reads a file
    ("vocab-file-no-suffix", ["detect", "{d}/img.png", "--vocab-file", "{d}/names", *TINY], 1,
     r"^cora detect: vocabulary file .*names: expected a \.txt file .* got no suffix$"),
    ("vocab-file-csv", ["detect", "{d}/img.png", "--vocab-file", "{d}/names.csv", *TINY], 1, r"got '\.csv'"),
    ("vocab-file-directory", ["detect", "{d}/img.png", "--vocab-file", "{d}/names_dir", *TINY], 1,
     r"vocabulary file .*names_dir is a directory"),
    ("vocab-json-non-string-name", ["detect", "{d}/img.png", "--vocab-file", "{d}/bad_names.json", *TINY], 1,
     r"bad_names\.json must be a COCO / LVIS json .*'name': <string>"),
    # eval --detections: only the ground truth's ids, finite numbers
    ("eval-unknown-category", ["eval", "--split", "coco-ovd", "--gt", "{d}/gt.json", "--detections",
                               "{d}/dets_unknown_cat.json", "--out", "{d}/eval"], 1,
     r"dets_unknown_cat\.json names 1 category id\(s\) absent from the ground truth, e\.g\. \[99\]"),
    ("eval-nan-score", ["eval", "--split", "coco-ovd", "--gt", "{d}/gt.json", "--detections",
                        "{d}/dets_nan_score.json", "--out", "{d}/eval"], 1, r"entry 0 has a non-finite score or bbox"),
    ("eval-nan-box", ["eval", "--split", "coco-ovd", "--gt", "{d}/gt.json", "--detections",
                      "{d}/dets_nan_box.json", "--out", "{d}/eval"], 1, r"non-finite score or bbox"),
    # checkpoints
    ("checkpoint-nan-weights", [*DETECT, "--checkpoint", "{d}/ckpt_nan"], 1,
     r"ckpt_nan/model\.safetensors: weight '.*' holds NaN or infinite values"),
    ("checkpoint-truncated", [*DETECT, "--checkpoint", "{d}/ckpt_truncated"], 1,
     r"ckpt_truncated/model\.safetensors is not a readable safetensors file"),
    ("checkpoint-garbage", [*DETECT, "--checkpoint", "{d}/ckpt_garbage"], 1, r"is not a readable safetensors file"),
    ("checkpoint-empty", [*DETECT, "--checkpoint", "{d}/ckpt_empty"], 1, r"is not a readable safetensors file"),
    ("config-json-list", [*DETECT, "--checkpoint", "{d}/ckpt_cfg_list"], 1,
     r"ckpt_cfg_list/config\.json: config file must be a JSON object"),
    ("config-json-invalid", [*DETECT, "--checkpoint", "{d}/ckpt_cfg_bad_json"], 1, r"config\.json is not valid JSON"),
    ("config-json-wrong-type", [*DETECT, "--checkpoint", "{d}/ckpt_cfg_wrong_type"], 1,
     r"config\.json: config key inference\.max_detections must be an int"),
    ("config-json-other-architecture", [*DETECT, "--checkpoint", "{d}/ckpt_other_cfg"], 1,
     r"ckpt_other_cfg: checkpoint does not fit the model: \d+ weight\(s\) of another shape"),
    ("checkpoint-dropped-tensor", [*DETECT, "--checkpoint", "{d}/ckpt_dropped"], 1,
     r"checkpoint does not fit the model: missing \["),
    # .pth files: refused pickles, empty and non-PyTorch files
    ("convert-empty-pth", ["convert", "--localizer", "{d}/empty.pth", "--prompt", "{d}/empty.pth", "--preset", "tiny",
                           "--out", "{d}/conv"], 1, r"empty\.pth is not a PyTorch file torch\.load can read"),
    ("convert-text-pth", ["convert", "--localizer", "{d}/text.pth", "--prompt", "{d}/text.pth", "--preset", "tiny",
                          "--out", "{d}/conv"], 1, r"text\.pth is not a PyTorch file"),
    ("convert-evil-pickle", ["convert", "--localizer", "{d}/evil.pth", "--prompt", "{d}/evil.pth", "--preset", "tiny",
                             "--out", "{d}/conv"], 1, r"evil\.pth: refused to load objects other than tensors"),
    ("convert-no-model", ["convert", "--localizer", "{d}/no_model.pth", "--prompt", "{d}/evil.pth", "--preset",
                          "tiny", "--out", "{d}/conv"], 1, r"no model weights in the checkpoint"),
    ("clip-weights-evil-pickle", [*DETECT, *TINY, "--clip-weights", "{d}/evil.pth"], 1,
     r"^cora detect: --clip-weights .*evil\.pth: refused to load objects other than tensors \(.*GLOBAL posix\.system"),
    ("clip-weights-empty", [*DETECT, *TINY, "--clip-weights", "{d}/empty.pth"], 1,
     r"--clip-weights .*empty\.pth: empty or truncated$"),
    ("prompt-not-pytorch", ["relabel", "--ann-file", "{d}/gt.json", "--images", "{d}", "--vocabulary", "all",
                            "--prompt", "{d}/text.pth", "--out", "{d}/relabelled.json", "--no-progress", *TINY], 1,
     r"^cora relabel: .*text\.pth is not a PyTorch file torch\.load can read$"),
    # images
    ("image-decompression-bomb", ["detect", "{d}/bomb.png", "--vocab", "cat", *TINY], 1,
     r"cannot read image .*bomb\.png: .*decompression bomb"),
    ("image-truncated", ["detect", "{d}/truncated.png", "--vocab", "cat", *TINY], 1, r"cannot read image .*truncated"),
    ("image-garbage", ["detect", "{d}/garbage.png", "--vocab", "cat", *TINY], 1, r"cannot read image .*garbage\.png"),
    ("image-empty", ["detect", "{d}/empty.png", "--vocab", "cat", *TINY], 1, r"cannot read image .*empty\.png"),
    # flags and files of the wrong kind
    ("config-missing", ["train", "--config", "{d}/missing.yaml"], 1,
     r"^cora train: --config .*missing\.yaml: No such file or directory$"),
    ("set-impossible-architecture", [*DETECT, *TINY, "--set", "localizer.num_heads=3"], 1,
     r"^cora detect: DABLocalizer: hidden_dim must be divisible by num_heads"),  # not blamed on CLIP weights
    ("annotations-not-json", ["relabel", "--ann-file", "{d}/bad.yaml", "--images", "{d}", "--out", "{d}/r.json",
                              *TINY], 1, r"^cora relabel: annotation file .*bad\.yaml is not valid JSON"),
    ("config-bad-yaml", ["train", "--config", "{d}/bad.yaml"], 1,
     r"^cora train: --config .*bad\.yaml is not valid YAML"),
    ("device-bogus", [*DETECT, "--preset", "tiny", "--random-init", "--device", "bogus"], 1,
     r"^cora detect: --device 'bogus': expected cpu, cuda or cuda:N$"),
    ("detect-out-is-a-file", [*DETECT, *TINY, "--out", "{d}/existing_file"], 1,
     r"--out .*existing_file is an existing file; expected a folder"),
    ("export-out-is-a-directory", ["export", "--out", "{d}/names_dir", *TINY[:3]], 1,
     r"^cora export: --out .*names_dir is a directory; expected a file path$"),
    ("export-out-inside-a-file", ["export", "--out", "{d}/existing_file/m.onnx", *TINY[:3]], 1,
     r"existing_file is a file, not a folder"),
    ("train-out-is-a-file", ["train", "--data", "{d}", "--out", "{d}/existing_file", *TINY[:3]], 1,
     r"^cora train: --out .*existing_file is an existing file"),
    ("check-lint-not-onnx", ["check", "lint", "{d}/not.onnx"], 1, r"^cora check: .*not\.onnx is not an ONNX model"),
    ("check-lint-missing", ["check", "lint", "{d}/missing.onnx"], 1, r"missing\.onnx does not exist"),
    ("detect-garbage-onnx", [*DETECT, "--checkpoint", "{d}/not.onnx", "--device", "cpu"], 1,
     r"^cora detect: .*not\.onnx is not an ONNX model ONNX Runtime can load"),
]


@pytest.mark.parametrize("argv, code, pattern", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_with_one_line(d, capsys, argv, code, pattern):
    code_, out, err = cli([a.format(d=d) for a in argv], capsys)
    assert "Traceback" not in err + out
    assert code_ == code, err
    last = err.strip().splitlines()[-1]
    assert re.search(pattern, last), last
    if code == 1:  # a UserError: exactly one line
        assert err.count("\n") == 1, err


def test_refused_pickle_in_a_training_state(d, tmp_path, capsys):
    """--resume over a training_state.pt that pickles code: refused (nothing runs), in one line."""
    from cora.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "data", num_images=4, size=(64, 64))
    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    torch.save(Evil(), step / "training_state.pt")
    (tmp_path / "run" / "last_checkpoint").write_text(step.name)
    code, _, err = cli(["train-prompt", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *TINY,
                        "--resume", "--no-progress"], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.match(r"^cora train-prompt: .*step_00000001/training_state\.pt", err), err
    assert not os.path.exists("/tmp/cora_pwned")


def test_corrupt_training_image_in_a_dataloader_worker(tmp_path, capsys):
    """A corrupt image met by a DataLoader worker: one line naming the image, not the worker's traceback."""
    from cora.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "data", num_images=4, size=(64, 64))
    train = json.loads((tmp_path / "data" / "instances_train.json").read_text())
    for image in train["images"]:
        (tmp_path / "data" / image["file_name"]).write_bytes(b"corrupt")
    code, _, err = cli(["train-prompt", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *TINY,
                        "--workers", "1", "--no-progress", "--max-steps", "1"], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.match(r"^cora train-prompt: cannot read image .*\.png: cannot identify image file", err), err


def test_device_cuda_without_a_gpu(d, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = cli([a.format(d=d) for a in DETECT] + ["--preset", "tiny", "--random-init", "--device", "cuda"],
                       capsys)
    assert (code, err) == (1, "cora detect: --device cuda: torch sees no CUDA GPU here (use --device cpu)\n")


def test_outputs_checked_before_the_work(d, capsys, monkeypatch):
    """export --out of the wrong kind fails before the model is built (the export takes ~30 s)."""
    import cora.checkpoint

    def never(**kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(cora.checkpoint, "load_model", never)
    code, _, err = cli(["export", "--out", str(d / "names_dir"), *TINY[:3]], capsys)
    assert code == 1 and "is a directory" in err


def test_same_stem_images_get_distinct_outputs(d, tmp_path, capsys):
    """Good input of the data-loss family: same-stem images in other folders or with other suffixes each get
    their own json + png, each json naming its own image."""
    images = [d / "a/x.png", d / "b/x.png", d / "same/x.png", d / "same/x.jpg"]
    out = tmp_path / "out"
    code, stdout, err = cli(["detect", *map(str, images), "--vocab", "cat", "--out", str(out), *TINY,
                             "--score-threshold", "0"], capsys)
    assert code == 0, err
    expected = {"a/x": images[0], "b/x": images[1], "same/x_png": images[2], "same/x_jpg": images[3]}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        f"{stem}.{ext}" for stem in expected for ext in ("json", "png"))
    for stem, image in expected.items():
        assert json.loads((out / f"{stem}.json").read_text())["image"] == str(image)
    assert "wrote 4 result(s)" in stdout
    for image in images:  # the inputs are untouched
        with Image.open(image) as img:
            assert img.size == (64, 48)


def test_good_input_still_works(d, tmp_path, capsys):
    """Positive controls of the refused rows: the same commands with good values succeed."""
    rows = [
        [*DETECT[:2], "--vocab-file", str(d / "names.txt"), "--out", str(tmp_path / "det"), *TINY,
         "--set", "inference.max_detections=5", "--score-threshold", "0"],
        ["eval", "--split", "coco-ovd", "--gt", str(d / "gt.json"), "--detections", str(d / "dets_good.json"),
         "--novel", "dog", "--out", str(tmp_path / "eval")],
        [*DETECT[:3], "cat", "--checkpoint", str(d / "ckpt"), "--device", "cpu", "--out", str(tmp_path / "ck")],
    ]
    for argv in rows:
        code, _, err = cli([a.format(d=d) for a in argv], capsys)
        assert code == 0, (argv, err)
    dets = json.loads((tmp_path / "det" / "img.json").read_text())["detections"]
    assert 0 < len(dets) <= 5  # the --set value took effect
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["AP50_base"] == pytest.approx(1.0)  # the one detection is the one ground-truth box


@pytest.mark.parametrize("command", ["detect", "train-prompt"])
def test_full_disk_is_one_line(d, tmp_path, capsys, command):
    """A full disk (a small tmpfs; needs root) is one line naming the file: detect's PNG, train's checkpoint."""
    from cora.data.synthetic import write_synthetic

    mnt = tmp_path / "small"
    mnt.mkdir()
    big = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)  # ~200 KB as PNG
    Image.fromarray(big).save(tmp_path / "big.png")
    write_synthetic(tmp_path / "data", num_images=4, size=(64, 64))
    argv = {"detect": ["detect", str(tmp_path / "big.png"), "--vocab", "cat", "--out", str(mnt)],
            "train-prompt": ["train-prompt", "--data", str(tmp_path / "data"), "--out", str(mnt / "run"),
                             "--max-steps", "1", "--no-progress"]}[command]
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        code, _, err = cli([*argv, *TINY], capsys)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert code == 1 and err.count("\n") == 1, err
    assert re.match(rf"^cora {command}: cannot write .*small/\S+: No space left on device$", err), err


def test_script_faces_are_one_line_too(d):
    """export/check.py (a subprocess: the script's own entry point) and python -m cora."""
    for argv, prefix in (([sys.executable, "export/check.py", "lint", str(d / "not.onnx")], "check: "),
                         ([sys.executable, "-m", "cora", "check", "lint", str(d / "not.onnx")], "cora check: ")):
        run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 1 and run.stderr.startswith(prefix) and run.stderr.count("\n") == 1, run.stderr
        assert "not.onnx is not an ONNX model" in run.stderr


# The Python API: the same refusals are typed exceptions (UserError or another ValueError).
def _api_rows(d: Path):
    from cora.checkpoint import load_model, load_official_file
    from cora.config import apply_overrides, get_preset
    from cora.engine.evaluate import check_coco_results
    from cora.io import read_image
    from cora.vocabulary import load_vocabulary

    gt = json.loads((d / "gt.json").read_text())
    return [
        (lambda: load_model(checkpoint=d / "ckpt_nan"), UserError, "holds NaN or infinite values"),
        (lambda: load_model(checkpoint=d / "ckpt_garbage"), UserError, "not a readable safetensors file"),
        (lambda: load_model(preset="tiny", random_init=True, clip_weights=str(d / "evil.pth")), UserError,
         "refused to load"),
        (lambda: load_official_file(d / "evil.pth"), ValueError, "refused to load objects other than tensors"),
        (lambda: load_official_file(d / "empty.pth"), ValueError, "is not a PyTorch file"),
        (lambda: apply_overrides(get_preset("tiny"), ["inference.max_detections=abc"]), ValueError, "must be an int"),
        (lambda: read_image(d / "bomb.png"), ValueError, "decompression bomb"),
        (lambda: read_image(d / "truncated.png"), ValueError, "truncated"),
        (lambda: load_vocabulary(Path(d / "names.csv")), ValueError, "expected a .txt file"),
        (lambda: load_vocabulary(d / "bad_names.json"), ValueError, "'name': <string>"),
        (lambda: check_coco_results(json.loads((d / "dets_nan_box.json").read_text())), ValueError, "non-finite"),
        (lambda: check_coco_results(json.loads((d / "dets_unknown_cat.json").read_text()), gt=gt), ValueError,
         "category id"),
    ]


def test_python_api_raises_typed_errors(d):
    for call, error, message in _api_rows(d):
        with pytest.raises(error, match=re.escape(message)):
            call()
    assert not os.path.exists("/tmp/cora_pwned")  # the evil pickles never ran


def test_number_types_accept_the_range_and_refuse_the_rest():
    """The validation layer itself, against a brute force over edge values."""
    from cora.cli import common

    values = ["0", "1", "-1", "0.5", "1.5", "nan", "inf", "-inf", "1e-9", "abc", "", "2"]
    for parse, ok in ((common.PROBABILITY, lambda v: 0 <= v <= 1), (common.FRACTION, lambda v: 0 <= v < 1),
                      (common.POSITIVE, lambda v: v > 0), (common.NON_NEGATIVE, lambda v: v >= 0)):
        for text in values:
            try:
                expected = float(text)
                expected = expected if np.isfinite(expected) and ok(expected) else None
            except ValueError:
                expected = None
            if expected is None:
                with pytest.raises(argparse.ArgumentTypeError):
                    parse(text)
            else:
                assert parse(text) == expected
    assert common.POSITIVE_INT("3") == 3
    for text in ("0", "-2", "1.5", "1e3", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.POSITIVE_INT(text)


def test_every_numeric_flag_goes_through_the_validation_layer():
    """No command keeps a bare int / float type: each numeric flag has a range."""
    from cora.cli import build_parser

    bare = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.type in (int, float):
                bare.append(f"{path} {action.option_strings}")

    walk(build_parser(), "cora")
    assert bare == []
