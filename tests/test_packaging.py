"""The installable package, tested on the real artefact: a wheel of this tree, installed into a throwaway
folder, run from a directory outside the repository.

The wheel is built by `setup.py bdist_wheel` with CORA_PREBUILT_EXT=1: it packages the extension that
`make build` compiled in place (cora/_C*.so), so nothing is compiled (a few seconds) and the wheel holds the
very library the other tests ran. Its build folders are temporary, not the repository's build/: a build in
build/lib would package whatever stale module an earlier build left there, and would race with other builds in
the shared tree. It is installed with `pip install --no-deps --target`; the commands then run with `python -S`
(no site-packages, so no editable install of this checkout) and PYTHONPATH = the target + the venv's
site-packages (torch etc.), from a folder outside the repository: only the installed copy can be imported.
"""

from __future__ import annotations

import ast
import filecmp
import inspect
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_PACKAGES = {"export", "benchmarks", "tests"}  # folders of scripts and tests: the package never imports them
PYTHON_DIRS = ("cora", "export", "benchmarks", "tests")
TIMEOUT_S = 600
PYTHON_S = [sys.executable, "-S"]  # -S: no site-packages processing, so no editable install of this checkout


# ------------------------------------------------------------------------------- source checks (fast)

def _python_files(*dirs: Path):
    for d in dirs:
        yield from (p for p in sorted(d.rglob("*.py")) if "__pycache__" not in p.parts)


def _imported_modules(tree: ast.AST) -> set[str]:
    """Absolute module names imported anywhere in the file (at top level or inside functions), and the string
    arguments of importlib.import_module / __import__."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")))):
            names.add(node.args[0].value)
    return names


def _is_sys_path(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys")


def _sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines that change sys.path: a method call on it (insert, append, ...), an assignment to it or to an item
    or slice of it, and site.addsitedir."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if _is_sys_path(node.func.value) or node.func.attr == "addsitedir":
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                if _is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value)):
                    lines.append(node.lineno)
    return sorted(lines)


def test_no_python_file_edits_sys_path():
    """Package, scripts and tests: none reaches code by editing sys.path (the scripts import the installed
    package, the tests run from the repository root)."""
    offenders = [f"{p.relative_to(ROOT)}:{line}" for p in _python_files(*(ROOT / d for d in PYTHON_DIRS))
                 for line in _sys_path_edits(ast.parse(p.read_text(), str(p)))]
    assert not offenders, offenders


def test_the_sys_path_scan_finds_edits():
    """Negative control of the scan above."""
    code = "import sys, site\nsys.path.insert(0, 'x')\nsys.path += ['y']\nsys.path[:0] = ['z']\nsite.addsitedir('w')\n"
    assert _sys_path_edits(ast.parse(code)) == [2, 3, 4, 5]
    assert _sys_path_edits(ast.parse("import sys\nprint(sys.path[0])\n")) == []


def _script_imports(files) -> list[str]:
    return [f"{p}: {m}" for p in files for m in sorted(_imported_modules(ast.parse(Path(p).read_text(), str(p))))
            if m.split(".")[0] in SCRIPT_PACKAGES]


def test_package_never_imports_scripts_or_tests():
    assert not _script_imports(_python_files(ROOT / "cora"))
    # Negative control: the scan sees a lazy import inside a function and importlib calls.
    tree = ast.parse("def f():\n    from export.to_onnx import x\n    importlib.import_module('benchmarks.kernels')\n")
    assert _imported_modules(tree) == {"export.to_onnx", "benchmarks.kernels"}


def test_scripts_are_thin_faces_of_the_package():
    """benchmarks/*.py call cora.bench; the results folder they pass is theirs."""
    for name, module in (("vocab_scaling.py", "cora.bench.vocab_scaling"), ("train_step.py", "cora.bench.train_step"),
                         ("kernels.py", "cora.bench.kernels")):
        source = (ROOT / "benchmarks" / name).read_text()
        assert module in _imported_modules(ast.parse(source)), name
        assert len(source.splitlines()) <= 15, f"benchmarks/{name} is more than a thin script"


# ------------------------------------------------------------------------------ the wheel, installed

def _venv_site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _installed_env(target: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), *_venv_site_packages()])
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd, cwd, env, timeout=TIMEOUT_S) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                                    f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target folder, work folder outside the repository, env): the wheel of this tree installed with
    `pip install --no-deps --target`."""
    built = sorted((ROOT / "cora").glob("_C.*.so"))
    if not built:
        pytest.fail("cora/_C*.so is missing: build the extension first (`make build`)")
    base = tmp_path_factory.mktemp("wheel")
    assert ROOT not in base.parents, "the throwaway folders must lie outside the repository"
    env = {**os.environ, "CORA_PREBUILT_EXT": "1"}
    _run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", base, "build", "--build-base", base / "build",
          "bdist_wheel", "--bdist-dir", base / "bdist", "--dist-dir", base / "dist"], cwd=ROOT, env=env, timeout=300)
    (wheel,) = (base / "dist").glob("cora-*.whl")
    target = base / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "--target", target, wheel],
         cwd=base, env=env, timeout=300)
    work = base / "work"
    work.mkdir()
    return target, work, _installed_env(target)


def test_wheel_holds_the_whole_package(installed):
    target, _, _ = installed
    skip = lambda p: "__pycache__" in p.parts or p.suffix in (".pyc", ".so", ".tmp") or p.name.startswith(".")
    source = {p.relative_to(ROOT) for p in (ROOT / "cora").rglob("*") if p.is_file() and not skip(p)}
    shipped = {p.relative_to(target) for p in (target / "cora").rglob("*") if p.is_file() and not skip(p)}
    assert not source - shipped, f"files of cora/ missing from the wheel: {sorted(map(str, source - shipped))}"
    (library,) = (target / "cora").glob("_C.*.so")
    assert filecmp.cmp(library, ROOT / "cora" / library.name, shallow=False), "the wheel's cora._C is not the built one"
    assert not {p.name for p in target.iterdir()} & SCRIPT_PACKAGES, "the wheel installs a scripts folder"


def test_installed_package_imports_no_script_or_test(installed):
    target, _, _ = installed
    offenders = _script_imports(_python_files(target / "cora"))
    assert not offenders, offenders


def test_imports_come_from_the_installed_copy(installed):
    target, work, env = installed
    code = ("import json, sys, torch, cora, cora._C, cora.cli, cora.bench.vocab_scaling;"
            "print(json.dumps({'cora': cora.__file__, 'ext': cora._C.__file__, 'path': sys.path}))")
    out = json.loads(_run([*PYTHON_S, "-c", code], cwd=work, env=env).stdout.strip().splitlines()[-1])
    assert Path(out["cora"]).resolve().is_relative_to(target.resolve()), out["cora"]
    assert Path(out["ext"]).resolve().is_relative_to(target.resolve()), out["ext"]
    assert not any(p and Path(p).resolve() == ROOT for p in out["path"]), out["path"]


def _commands(parser, prefix=()):
    """Every command path of an argparse parser: ('detect',), ('data', 'make-synthetic'), ..."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


def test_cora_help_and_every_command_help(installed):
    target, work, env = installed
    script = target / "bin" / "cora"
    assert script.is_file(), "the wheel installs no `cora` console script"
    # The console script as installed (its shebang: this venv's python), and `python -m cora`.
    for cmd in ([script, "--help"], [*PYTHON_S, script, "--help"], [*PYTHON_S, "-m", "cora", "--help"]):
        assert "usage: cora" in _run(cmd, cwd=work, env=env).stdout
    # Every command registered in the installed cora.cli.build_parser (nested ones too), in one process.
    code = inspect.getsource(_commands) + """
import contextlib, io, json, sys
from cora.cli import build_parser, main
report = {}
for command in _commands(build_parser()):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main([*command, "--help"])
        except SystemExit as e:
            code = e.code
    report[" ".join(command)] = [code, out.getvalue()]
print(json.dumps(report))
"""
    report = json.loads(_run([*PYTHON_S, "-c", code], cwd=work, env=env).stdout.strip().splitlines()[-1])
    assert {"detect", "export"} <= set(report), sorted(report)
    for command, (code, text) in report.items():
        assert code in (0, None), f"cora {command} --help exited {code}:\n{text[-2000:]}"
        assert f"usage: cora {command}" in " ".join(text.split()), f"cora {command} --help:\n{text[:500]}"


def test_installed_cora_detect_tiny(installed):
    import numpy as np
    from PIL import Image

    target, work, env = installed
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(work / "image.png")
    _run([*PYTHON_S, target / "bin" / "cora", "detect", "--preset", "tiny", "--random-init", "--vocab", "cat,dog",
          "image.png", "--out", "detections"], cwd=work, env=env)
    written = sorted(p.name for p in (work / "detections").iterdir())
    assert any(n.endswith(".json") for n in written) and any(n.endswith(".png") for n in written), written


def test_installed_cora_export_tiny(installed):
    target, work, env = installed
    _run([*PYTHON_S, target / "bin" / "cora", "export", "--preset", "tiny", "--random-init", "--out", "x.onnx"],
         cwd=work, env=env)
    assert (work / "x.onnx").stat().st_size > 0
