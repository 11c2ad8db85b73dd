"""cora.fileio: atomic writes (all or nothing), the umask's mode, temporary files cleaned, failures as one
UserError naming the file (a full disk included)."""

import json
import os
import stat
import subprocess
import sys

import pytest

from cora.errors import UserError
from cora.fileio import TMP_SUFFIX, atomic_write, remove_stale_temporaries, write_json


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})  # fails half-way through the dump: a bug keeps its type
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["a.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.bin", lambda tmp: open(tmp, "wb").close())
        with open(tmp_path / "plain.bin", "wb"):  # what a plain open gives: the reference
            pass
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.bin").st_mode) == 0o666 & ~umask


def test_temporary_file_removed_on_any_exception(tmp_path):
    def interrupted(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.txt", interrupted)
    assert os.listdir(tmp_path) == []


def test_killed_write_leftover_is_recognisable_and_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.onnx"
    # a writer killed mid-write (SIGKILL: no clean-up runs) leaves its temporary file behind
    code = ("import os, sys; from cora.fileio import atomic_write\n"
            "def write(tmp):\n    open(tmp, 'w').write('partial'); os.kill(os.getpid(), 9)\n"
            f"atomic_write({str(target)!r}, write)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    (leftover,) = os.listdir(tmp_path)
    assert leftover.startswith(".model.onnx.") and leftover.endswith(TMP_SUFFIX)
    # a live writer's temporary file (this process) is never touched
    live = tmp_path / f".model.onnx.{os.getpid()}.0{TMP_SUFFIX}"
    live.write_text("in progress")
    atomic_write(target, lambda tmp: open(tmp, "w").write("done"))
    assert sorted(os.listdir(tmp_path)) == sorted(["model.onnx", live.name]) and target.read_text() == "done"
    assert remove_stale_temporaries(target) == []  # negative control: nothing stale is left


def test_directory_in_the_way_is_one_line(tmp_path):
    (tmp_path / "out.json").mkdir()
    with pytest.raises(UserError, match=r"^cannot write .*out\.json: it is a directory"):
        write_json(tmp_path / "out.json", {})
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^cannot write .*file/a\.json: cannot create its folder"):
        write_json(tmp_path / "file" / "a.json", {})


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (needs root); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("writer", ["python", "torch.save", "safetensors"])
def test_full_disk_is_one_line_naming_the_file(full_disk, writer):
    import torch
    from safetensors.torch import save_file

    big = torch.zeros(100_000)  # 400 KB > 64 KiB
    write = {"python": lambda tmp: open(tmp, "wb").write(big.numpy().tobytes()),
             "torch.save": lambda tmp: torch.save(big, tmp),  # its C++ writer raises no OSError
             "safetensors": lambda tmp: save_file({"w": big}, tmp)}[writer]  # names the OS error in its message
    with pytest.raises(UserError, match=r"^cannot write .*big\.bin: No space left on device$"):
        atomic_write(full_disk / "big.bin", write)
    assert os.listdir(full_disk) == []  # the partial temporary file is gone, the space is back
    atomic_write(full_disk / "small.bin", lambda tmp: open(tmp, "wb").write(b"x" * 1000))  # positive control
    assert (full_disk / "small.bin").stat().st_size == 1000


def test_stale_temporaries_of_another_target_are_kept(tmp_path):
    """`x`'s clean-up leaves the temporaries of `x.7` (a name that extends it) alone; names with glob
    characters work."""
    dead = 2**22 + 12345  # above the default pid_max of 4194304: no such process
    mine, other, brackets = (tmp_path / f".{n}.{dead}.abcdef12.cora-tmp" for n in ("x", "x.7", "x[1]"))
    for f in (mine, other, brackets):
        f.write_text("left by a killed write")
    assert remove_stale_temporaries(tmp_path / "x") == [mine]
    assert remove_stale_temporaries(tmp_path / "x[1]") == [brackets]
    assert other.exists()
