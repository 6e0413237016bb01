"""The kernels' PTX must load on the oldest driver we run on (CUDA 13.0: PTX ISA 9.0).

NVVM from the 13.5 wheels emits ``.version 9.5``, which a 13.0 driver's JIT rejects. gpuckpt's
choice (docs/performance.md, "Loading the kernels"): link through nvJitLink at least as new as
NVVM (the ``gpu`` extra pins both), so the driver receives SASS, not PTX. These tests compile
every kernel (the gather kernel's pointer loads included) and check that (1) the PTX ISA is one
CUDA 13.0 accepts, or nvJitLink is new enough to turn it into a cubin here; (2) the kernels use
nothing beyond ISA 9.0: with the header set to 9.0, CUDA 13.0's ptxas assembles them for sm_90.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.test_package import PTX_SCRIPT

OLDEST_DRIVER_ISA = (9, 0)  # CUDA 13.0
ISA_OF_CUDA = {(13, minor): (9, minor) for minor in range(10)}

GATHER = """
from gpuckpt.kernels import gather
ptx, _ = cuda.compile_ptx(gather.gather_kernel_source, "void(int64[:, ::1], uint8[::1], uint64[::1])", cc=(9, 0))
open(f"{sys.argv[1]}/gather.ptx", "w").write(ptx)
ptx, _ = cuda.compile_ptx(gather.scatter_kernel_source, "void(int64[:, ::1], uint8[::1], uint64[::1])", cc=(9, 0))
open(f"{sys.argv[1]}/scatter.ptx", "w").write(ptx)
"""


def wheel_lib_dirs() -> list[str]:
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    return [str(p) for root in roots for p in Path(root).glob("*/lib") if p.is_dir()]


@pytest.fixture(scope="module")
def ptx_dir(tmp_path_factory) -> Path:
    pytest.importorskip("numba.cuda")
    out = tmp_path_factory.mktemp("ptx")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(wheel_lib_dirs() + [env.get("LD_LIBRARY_PATH", "")])
    script = PTX_SCRIPT.replace('print("OK")', GATHER + 'print("OK")')
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("SKIP:"):
        pytest.skip(f"no CUDA compiler libraries here: {result.stdout.strip()}")
    return out


def isa(ptx: str) -> tuple[int, int]:
    found = re.search(r"^\.version (\d+)\.(\d+)", ptx, re.M)
    assert found, "no .version directive"
    return int(found.group(1)), int(found.group(2))


def nvjitlink_version() -> tuple[int, int] | None:
    try:
        from cuda.bindings import nvjitlink

        return tuple(nvjitlink.version())[:2]
    except Exception:
        return None


def test_gather_kernel_reads_through_pointers(ptx_dir):
    ptx = (ptx_dir / "gather.ptx").read_text()
    assert ".target sm_90" in ptx
    assert re.search(r"\bld(\.global)?\.u64\b", ptx) and re.search(r"\bld(\.global)?\.u8\b", ptx)


def test_scatter_kernel_stores_through_pointers(ptx_dir):
    ptx = (ptx_dir / "scatter.ptx").read_text()
    assert re.search(r"\bst(\.global)?\.u64\b", ptx) and re.search(r"\bst(\.global)?\.u8\b", ptx)


def test_ptx_isa_loads_on_a_cuda_13_0_driver(ptx_dir):
    for path in sorted(ptx_dir.glob("*.ptx")):
        version = isa(path.read_text())
        if version <= OLDEST_DRIVER_ISA:
            continue
        linker = nvjitlink_version()
        if linker is None:
            pytest.skip(f"{path.name}: PTX ISA {version} needs nvJitLink (the gpu extra's nvidia-nvjitlink), "
                        "which is not installed here")
        assert ISA_OF_CUDA.get(linker, (0, 0)) >= version, (
            f"{path.name}: PTX ISA {version} is newer than nvJitLink {linker} can link; a CUDA 13.0 driver "
            f"accepts at most {OLDEST_DRIVER_ISA}")


def test_kernels_use_nothing_beyond_isa_9_0(ptx_dir, tmp_path):
    ptxas = shutil.which("ptxas") or next(iter(Path("/usr/local").glob("cuda-13.0*/bin/ptxas")), None)
    if ptxas is None:
        pytest.skip("no ptxas here")
    for path in sorted(ptx_dir.glob("*.ptx")):
        text = re.sub(r"^\.version \d+\.\d+", ".version 9.0", path.read_text(), count=1, flags=re.M)
        src = tmp_path / path.name
        src.write_text(text)
        result = subprocess.run([str(ptxas), "-arch=sm_90", "-o", str(tmp_path / (path.stem + ".cubin")), str(src)],
                                capture_output=True, text=True, timeout=120)
        if "Unsupported .version" in result.stderr:
            pytest.skip(f"this ptxas is older than CUDA 13.0: {result.stderr.strip()}")
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_the_engine_names_a_toolchain_that_cannot_load_its_kernels():
    from gpuckpt.engine.cuda import isa_of_cuda, kernel_toolchain_problem

    assert isa_of_cuda((13, 0)) == (9, 0) and isa_of_cuda((13, 5)) == (9, 5) and isa_of_cuda((12, 9)) == (8, 8)
    assert kernel_toolchain_problem((13, 0), (9, 0), None) is None  # the driver JIT takes it
    assert kernel_toolchain_problem((13, 0), (9, 5), (13, 5)) is None  # nvJitLink makes SASS
    problem = kernel_toolchain_problem((13, 0), (9, 5), None)
    assert problem and "nvjitlink" in problem.lower() and "9.5" in problem and "13.0" in problem
    assert kernel_toolchain_problem((13, 0), (9, 5), (13, 2)) is not None  # a linker older than NVVM
