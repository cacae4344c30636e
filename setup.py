"""Build script: the prr_ext._C extension (torch.utils.cpp_extension + ninja) and the two Python packages, prr_ext
(the library) and prr_testbed (the testbed, with its model and controller in prr_testbed/assets).

    pip install --no-build-isolation .        # build against the torch already installed (recommended)
    pip install --no-build-isolation -e .     # editable / in-tree build for development

What gets built:
  * csrc/prr_ops.cpp + step_args.cpp + cpu/step_cpu.cpp   always (CppExtension)
  * + csrc/cuda/step_cuda.cu                         when the installed torch has CUDA (torch.version.cuda) AND an
                                                     nvcc is found -- no GPU needed (CUDAExtension, -DPRR_EXT_WITH_CUDA)

Environment knobs:
  PRR_EXT_FORCE_CPU=1      CPU-only build even when torch has CUDA and nvcc exists
  TORCH_CUDA_ARCH_LIST     CUDA archs (default here: "9.0" = H100/H200; e.g. "9.0;10.0+PTX")
  CUDA_HOME                CUDA toolkit root (auto-detected, see _find_cuda_home)
  DEBUG=1                  -O0 -g instead of -O3 -g0 (separate build dir)
  MAX_JOBS                 parallel compile jobs (ninja; handled by BuildExtension)
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
os.chdir(ROOT)
# Paths relative to setup.py (pip runs it from the project root).
CPU_SOURCES = ["csrc/prr_ops.cpp", "csrc/step_args.cpp", "csrc/cpu/step_cpu.cpp"]
CUDA_SOURCES = ["csrc/cuda/step_cuda.cu"]


def _log(msg: str) -> None:
    print(f"prr_ext setup: {msg}", flush=True)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------------------------
# CUDA toolkit discovery. Must run BEFORE torch.utils.cpp_extension is imported: that module computes CUDA_HOME once,
# at import time, from $CUDA_HOME / $CUDA_PATH or `which nvcc`. Where `which nvcc` is a shell wrapper (e.g. in
# /usr/local/bin, as on the dev/CI machine), that yields the bogus CUDA_HOME=/usr/local, whose include/ has no CUDA
# headers. A usable toolkit root has both bin/nvcc and include/cuda_runtime.h.
# ---------------------------------------------------------------------------------------------------------------
def _is_cuda_root(path) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def _find_cuda_home():
    user = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if user and _is_cuda_root(user):
        return user
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(nvcc)))
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if _is_cuda_root(c):
            if user:
                _log(f"WARNING: CUDA_HOME={user} has no bin/nvcc + include/cuda_runtime.h; using {c}")
            return c
    return None


FORCE_CPU = _flag("PRR_EXT_FORCE_CPU")
DEBUG = _flag("DEBUG")
cuda_home = None if FORCE_CPU else _find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
import torch.utils.cpp_extension as cpp_ext  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if cuda_home and torch.version.cuda is not None and cpp_ext.CUDA_HOME != cuda_home:
    cpp_ext.CUDA_HOME = cuda_home  # cpp_extension was imported before us (e.g. by a build frontend): patch it


def _runtime_torch():
    """(path, version, cuda) of the torch installed in the environment being installed INTO, if that is not the torch
    we build against -- i.e. under build isolation (plain `pip install .`), where the build runs with a temporary
    torch (the newest pip allows, e.g. 2.14.1+cu130) that can differ from the one the extension will run with."""
    import subprocess
    try:
        probe = "import importlib.util as u; s = u.find_spec('torch'); print(s.origin if s else '')"
        origin = subprocess.run([sys.executable, "-I", "-c", probe],  # -I: without the build env's sys.path additions
                                capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception:
        return None
    if not origin or os.path.realpath(os.path.dirname(origin)) == os.path.realpath(os.path.dirname(torch.__file__)):
        return None
    ns = {}
    try:
        with open(os.path.join(os.path.dirname(origin), "version.py")) as f:
            exec(f.read(), ns)  # torch/version.py: __version__ and cuda, without importing torch
    except Exception:
        return None
    return os.path.dirname(origin), ns.get("__version__"), ns.get("cuda")


runtime_torch = _runtime_torch()
if runtime_torch is not None and runtime_torch[1] != torch.__version__:
    _log(f"WARNING: building against torch {torch.__version__} ({os.path.dirname(torch.__file__)}), but the target "
         f"environment has torch {runtime_torch[1]} ({runtime_torch[0]}): an isolated build (plain `pip install .`). "
         "PyTorch has no C++ ABI guarantee across versions; prefer `pip install --no-build-isolation .`")

cuda_sources = [s for s in CUDA_SOURCES if os.path.exists(os.path.join(ROOT, s))]
if FORCE_CPU:
    WITH_CUDA, why = False, "PRR_EXT_FORCE_CPU=1"
elif torch.version.cuda is None:
    WITH_CUDA, why = False, f"torch {torch.__version__} has no CUDA"
elif runtime_torch is not None and runtime_torch[2] is None:
    # A CUDA build would need libc10_cuda.so, which the target's CPU-only torch does not have: it could not load.
    WITH_CUDA, why = False, f"the target environment's torch {runtime_torch[1]} has no CUDA"
elif cuda_home is None:
    WITH_CUDA, why = False, "no nvcc / CUDA toolkit found (set CUDA_HOME)"
elif not cuda_sources:
    WITH_CUDA, why = False, f"CUDA sources missing ({', '.join(CUDA_SOURCES)})"
else:
    WITH_CUDA, why = True, ""
if not WITH_CUDA and torch.version.cuda is not None and not FORCE_CPU:
    _log(f"WARNING: torch has CUDA {torch.version.cuda} but the CUDA kernels are NOT built: {why}")


def _wheel_cuda_include():
    """The torch wheel's CUDA library headers (cublas_v2.h, cusparse.h, ...), e.g. site-packages/nvidia/cu13/include.

    Some toolkits (the dev machine's, assembled from wheels) ship nvcc + cudart only, without the cuBLAS/cuSPARSE
    headers that <ATen/cuda/CUDAContext.h> includes, so it fails with `cusparse.h: No such file`; the torch wheel's
    nvidia packages carry those headers. Returns a list of include dirs (may be empty)."""
    try:
        import nvidia  # namespace package installed with the CUDA torch wheels
    except ImportError:
        return []
    major = (torch.version.cuda or "").split(".")[0]
    for base in nvidia.__path__:
        for sub in dict.fromkeys([f"cu{major}", "cu13", "cu12"]):  # CUDA 13 wheels: one merged include dir
            inc = os.path.join(base, sub, "include")
            if os.path.isfile(os.path.join(inc, "cusparse.h")):
                return [inc]
    dirs = []  # CUDA 12 wheels: one package per library (nvidia/cublas/include, nvidia/cusparse/include, ...)
    for base in nvidia.__path__:
        dirs += [d for d in sorted(glob.glob(os.path.join(base, "*", "include"))) if os.path.isdir(d)]
    return dirs


extra_include_dirs = []
if WITH_CUDA:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # H100/H200; unset would mean every arch of the wheel (slow)
    tk_inc = os.path.join(cuda_home, "include")
    if not (os.path.isfile(os.path.join(tk_inc, "cusparse.h")) and os.path.isfile(os.path.join(tk_inc, "cublas_v2.h"))):
        wheel_inc = _wheel_cuda_include()
        if len(wheel_inc) == 1 and not os.environ.get("CUDA_INC_PATH"):
            os.environ["CUDA_INC_PATH"] = wheel_inc[0]  # read by cpp_extension.include_paths("cuda")
            _log(f"toolkit lacks cusparse.h/cublas_v2.h -> CUDA_INC_PATH={wheel_inc[0]}")
        elif wheel_inc and not os.environ.get("CUDA_INC_PATH"):
            extra_include_dirs += wheel_inc
            _log(f"toolkit lacks cusparse.h/cublas_v2.h -> adding {len(wheel_inc)} nvidia/*/include dirs")
        elif not wheel_inc:
            _log("note: toolkit lacks cusparse.h/cublas_v2.h (fine if only c10/cuda headers are included)")
    _log(f"building CPU + CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} "
         f"(torch {torch.__version__}, nvcc in {cuda_home}{', DEBUG' if DEBUG else ''})")
else:
    _log(f"building CPU-only (torch {torch.__version__}; {why}{', DEBUG' if DEBUG else ''})")

# ---------------------------------------------------------------------------------------------------------------
# Flags. torch picks the C++ standard (-std=c++17/20). Python's CFLAGS inject `-g`; `-g0` (appended later) wins.
# No --use_fast_math: the kernels' discrete outputs (argmax, commit decisions) are compared exactly with the CPU path.
# ---------------------------------------------------------------------------------------------------------------
if DEBUG:
    cxx_flags = ["-O0", "-g"]
    nvcc_flags = ["-O0", "-g", "-lineinfo"]
    link_flags = ["-O0", "-g"]
else:
    cxx_flags = ["-O3", "-g0"]
    nvcc_flags = ["-O3", "-lineinfo"]
    link_flags = ["-g0"]

sources = list(CPU_SOURCES)
kwargs = dict(
    include_dirs=[os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")] + extra_include_dirs,
    extra_compile_args={"cxx": cxx_flags},
    extra_link_args=link_flags,
    # setuptools skips the whole extension when the .so is newer than `sources + depends`; list the headers (and this
    # file, for flag edits) so that such edits reach ninja, which then tracks the real include dependencies itself.
    depends=sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh", recursive=True))
    + ["setup.py"],
)
if WITH_CUDA:
    sources += cuda_sources
    kwargs["extra_compile_args"]["nvcc"] = nvcc_flags
    kwargs["define_macros"] = [("PRR_EXT_WITH_CUDA", None)]
    ext = CUDAExtension("prr_ext._C", sources, **kwargs)
else:
    ext = CppExtension("prr_ext._C", sources, **kwargs)

# One build directory per configuration, so e.g. a CPU-torch venv and a CUDA-torch venv sharing this checkout do not
# reuse each other's objects / .so (setuptools would skip the build as "up to date" and install the wrong binary).
build_tag = "-".join([
    sys.implementation.cache_tag,
    "torch" + torch.__version__.replace("+", "_"),
    ("cuda" + os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", "_").replace(" ", "_").replace("+", "p")
     ) if WITH_CUDA else "cpu",
    "debug" if DEBUG else "release",
])

setup(
    # name, version, dependencies: pyproject.toml [project]
    packages=find_packages(include=["prr_ext", "prr_ext.*", "prr_testbed", "prr_testbed.*"]),
    package_data={"prr_testbed": ["assets/*/*.safetensors", "assets/*/*.json"]},
    include_package_data=True,
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
    options={"build": {"build_base": os.path.join("build", build_tag)}},
    zip_safe=False,
)
