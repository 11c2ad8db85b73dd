"""The standalone CMake build (CMakeLists.txt): configures the CPU library libcora_ops.so against
the torch of this interpreter, builds it with tests/cpp, runs them with ctest, and installs it.
Everything goes to a temporary folder; about 20 s on 2 cores."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")
CTEST = shutil.which("ctest")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CMAKE is None or CTEST is None, reason="cmake/ctest not on PATH"),
]


def configure_args(build_dir):
    """What a user passes (see the top of CMakeLists.txt), plus the generator."""
    args = [CMAKE, "-S", str(ROOT), "-B", str(build_dir), f"-DCORA_PYTHON={sys.executable}"]
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    return args


def run(args, timeout, cwd=None):
    result = subprocess.run(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout[-6000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    build = tmp_path_factory.mktemp("cora-cmake-build")
    run(configure_args(build), timeout=300)
    run([CMAKE, "--build", str(build), "--parallel", "2"], timeout=600)
    return build


def test_ctest_passes(build_dir):
    # -V: also the executables' own output, e.g. "test_roi_align: all 62 checks passed".
    out = run([CTEST, "-V", "--output-on-failure"], timeout=300, cwd=build_dir)
    assert "test_roi_align" in out and "test_linear_assignment" in out, out
    assert "100% tests passed" in out, out
    assert "checks passed" in out and "FAILED" not in out, out


def test_library_has_no_python_dependency(build_dir):
    lib = build_dir / "libcora_ops.so"
    assert lib.is_file()
    if shutil.which("nm") is None:
        pytest.skip("nm not on PATH")
    undefined = run(["nm", "-D", "--undefined-only", str(lib)], timeout=60).split()
    python_symbols = [s for s in undefined if s.startswith(("Py", "_Py"))]
    assert not python_symbols, f"libcora_ops.so needs Python: {python_symbols[:10]}"


def test_install(build_dir, tmp_path):
    run([CMAKE, "--install", str(build_dir), "--prefix", str(tmp_path)], timeout=120)
    libs = list(tmp_path.glob("lib*/libcora_ops.so"))
    assert libs, sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert (tmp_path / "include" / "cora_ops.h").is_file()
