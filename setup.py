"""Builds the compiled ops as `cora._C` (`python setup.py build_ext --inplace`) and installs the package.

    python setup.py build_ext --inplace                           # the extension, in place (ninja: incremental)
    pip install --no-build-isolation --no-deps -e .               # editable install (what `make build` does)
    pip install --no-build-isolation .                            # a regular install; `pip wheel` likewise
    CORA_PREBUILT_EXT=1 pip install --no-build-isolation --no-deps -e .   # reuse the in-place build: no compile
    CORA_PREBUILT_EXT=1 pip wheel --no-build-isolation --no-deps -w dist .  # a wheel of the in-place build

`--no-build-isolation`: building imports torch (torch.utils.cpp_extension), which an isolated build
environment would lack. `CORA_PREBUILT_EXT=1` packages the extension already built in place
(cora/_C*.so, from `build_ext --inplace`) instead of compiling it, and fails if there is none: `make build`
uses it for its editable install and tests/test_packaging.py for its wheel, so that neither compiles the
CUDA kernels a second time and the wheel holds exactly the library the tests ran. It does not check that
the library is up to date with csrc/: run `build_ext --inplace` first.

C++ kernels are always built. CUDA kernels are built when torch has CUDA and nvcc is found;
`CORA_BUILD_CUDA=1` requires them, `CORA_BUILD_CUDA=0` skips them. With no GPU visible (as on
the development machines, where the CUDA code compiles but cannot run) the target architectures
come from `TORCH_CUDA_ARCH_LIST`, default "8.0;9.0" (A100, H100/H200).
"""

import filecmp
import glob
import os
import shutil
import site
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"


def _cuda_requested():
    """True / False from CORA_BUILD_CUDA, None when unset (auto)."""
    value = os.environ.get("CORA_BUILD_CUDA", "").strip()
    if value in ("", "auto"):
        return None
    if value in ("0", "1"):
        return value == "1"
    sys.exit(f"setup.py: CORA_BUILD_CUDA must be 0, 1 or unset, got {value!r}")


def _prebuilt():
    """True when CORA_PREBUILT_EXT=1: package the in-place build instead of compiling (module docstring)."""
    value = os.environ.get("CORA_PREBUILT_EXT", "").strip()
    if value not in ("", "0", "1"):
        sys.exit(f"setup.py: CORA_PREBUILT_EXT must be 0, 1 or unset, got {value!r}")
    return value == "1"


def _headers():
    """Every header under csrc/: listed as the extension's `depends`, so that `build_ext` (which skips an
    extension newer than its sources and depends) reaches ninja, which tracks the headers per object, when
    only a header changed."""
    return sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
                  + glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True))


def _package_data():
    """Non-Python files under cora/ that the package reads at run time (none today but this list's kinds):
    shipped in wheels and regular installs. tests/test_packaging.py checks that an installed wheel holds every
    file of the source package."""
    return {"cora": ["**/*.json", "**/*.yaml", "**/*.yml", "**/*.txt", "**/*.csv", "py.typed"]}


def _pip_cuda_include_dirs():
    """Headers of the pip CUDA packages (cusparse.h and friends), which torch's headers include
    but the system toolkit may lack (docs/design.md)."""
    dirs = []
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += sorted(glob.glob(os.path.join(base, "nvidia", "*", "include")))
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def _set_cuda_home():
    """torch finds the toolkit from CUDA_HOME, CUDA_PATH, then `which nvcc`; a wrapper script on PATH
    (as /usr/local/bin/nvcc here) sends it to a root without libcudart, so prefer the standard root."""
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        if os.path.isfile("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


def build_extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    requested = _cuda_requested()
    cuda_available = torch.version.cuda is not None and CUDA_HOME is not None
    if requested and not cuda_available:
        sys.exit("setup.py: CORA_BUILD_CUDA=1 but torch has no CUDA or nvcc was not found (set CUDA_HOME)")
    with_cuda = cuda_available if requested is None else requested

    # Kernels are split by device: csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu (distinct object names).
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # at::parallel_for is a header template: without -fopenmp it silently runs serially.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    define_macros = []
    if with_cuda:
        if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # torch's arch detection queries the GPU and fails without one.
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("CORA_WITH_CUDA", None))
        return [
            CUDAExtension(
                "cora._C",
                sources,
                depends=_headers(),
                include_dirs=[os.path.join(ROOT, "csrc")] + _pip_cuda_include_dirs(),
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
                extra_link_args=link_flags,
            )
        ]
    return [
        CppExtension(
            "cora._C",
            sources,
            depends=_headers(),
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ]


def _check_dynamic_libstdcxx(path):
    """Exits when the built library does not load libstdc++ dynamically.

    A compiler wrapper that links libstdc++ statically (seen on a GPU image: CXX=/opt/gcc/bin/g++) gives
    the extension its own copy of the C++ runtime; any exception it throws (every argument check) then
    crashes the process with a segmentation fault instead of raising in Python."""
    readelf = shutil.which("readelf")
    if readelf is None:
        return  # cannot check without binutils
    dynamic = subprocess.run([readelf, "-d", path], capture_output=True, text=True).stdout
    if "libstdc++.so" not in dynamic:
        os.remove(path)
        sys.exit(f"setup.py: {path} links libstdc++ statically (compiler: {os.environ.get('CXX', 'c++')}), so C++ "
                 "exceptions thrown in it would crash Python. Build with a compiler that links it dynamically, "
                 "e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++ python setup.py build_ext --inplace")


def main():
    _set_cuda_home()  # before torch.utils.cpp_extension reads it at import
    from torch.utils.cpp_extension import BuildExtension

    class BuildExtensionChecked(BuildExtension.with_options(use_ninja=True)):
        def finalize_options(self):
            super().finalize_options()
            if self.editable_mode:
                # An editable install (PEP 660) builds in a fresh temporary folder: every object, CUDA kernels
                # included, would be recompiled. The regular folder keeps ninja's objects between builds.
                self.build_temp = os.path.join(ROOT, "build", f"temp.{self.plat_name}-{sys.implementation.cache_tag}")

        def build_extension(self, ext):
            if _prebuilt():
                built = os.path.join(ROOT, self.get_ext_filename(ext.name))  # where build_ext --inplace puts it
                if not os.path.isfile(built):
                    sys.exit(f"setup.py: CORA_PREBUILT_EXT=1 but {built} does not exist; build it first with "
                             "`python setup.py build_ext --inplace` (or `make build`)")
                self.copy_file(built, self.get_ext_fullpath(ext.name))
                return
            super().build_extension(ext)
            _check_dynamic_libstdcxx(self.get_ext_fullpath(ext.name))

        def copy_file(self, infile, outfile, *args, **kwargs):
            """Copies the library (to build/ or, --inplace, into cora/) through a temporary file and a rename:
            writing over the loaded library in place would crash any process that has it mapped (a test run
            beside the build); an identical file is left alone."""
            if os.path.abspath(infile) == os.path.abspath(outfile) or (
                    os.path.isfile(outfile) and filecmp.cmp(infile, outfile, shallow=False)):
                return outfile, False
            os.makedirs(os.path.dirname(outfile) or ".", exist_ok=True)
            tmp = f"{outfile}.{os.getpid()}.tmp"
            try:
                shutil.copy2(infile, tmp)
                os.replace(tmp, outfile)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            print(f"copying {infile} -> {outfile}")
            return outfile, True

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 2))
    setup(
        name="cora",
        version="0.1.0",
        description="CORA open-vocabulary detection: training, evaluation, ONNX/TensorRT export",
        packages=find_packages(include=["cora", "cora.*"]),
        package_data=_package_data(),
        python_requires=">=3.10",
        ext_modules=build_extensions(),
        entry_points={"console_scripts": ["cora = cora.cli:main"]},
        cmdclass={"build_ext": BuildExtensionChecked},
    )


if __name__ == "__main__":
    main()
