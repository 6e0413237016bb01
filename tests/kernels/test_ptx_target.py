"""The kernels' PTX must load on the oldest driver we run on (CUDA 13.0: PTX ISA 9.0).

NVVM from the 13.5 wheels emits ``.version 9.5``, which a 13.0 driver's JIT rejects. gpuckpt's
choice (docs/performance.md, "Loading the kernels"): link through nvJitLink at least as new as
NVVM (the ``gpu`` extra installs it), so the driver receives SASS, not PTX. These tests compile
every kernel (gather's pointer loads and scatter's stores included) and check that (1) the PTX
ISA is one CUDA 13.0 accepts, or nvJitLink is new enough and links every kernel into an sm_90
cubin here; (2) the kernels use nothing beyond ISA 9.0: with the header set to 9.0, CUDA 13.0's
ptxas assembles them for sm_90.
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
from gpuckpt.kernels import gather_crc
ptx, _ = cuda.compile_ptx(gather_crc.gather_crc_kernel_source(256, 32),
                          "void(int64[:, ::1], uint8[::1], uint64[::1], boolean, uint32[::1])", cc=(9, 0))
open(f"{sys.argv[1]}/gather_crc.ptx", "w").write(ptx)
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


LINK_SCRIPT = """
import json, sys
from pathlib import Path
try:
    from cuda.bindings import nvjitlink as n
    version = n.version()
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
cubins = {}
for path in sorted(Path(sys.argv[1]).glob("*.ptx")):
    ptx = path.read_bytes()
    h = n.create(1, ["-arch=sm_90"])
    n.add_data(h, n.InputType.PTX, ptx, len(ptx), path.stem)
    n.complete(h)
    size = n.get_linked_cubin_size(h)
    buf = bytearray(size)
    n.get_linked_cubin(h, buf)
    n.destroy(h)
    cubins[path.name] = bytes(buf[:4]) == b"\\x7fELF"
print(json.dumps({"version": list(version)[:2], "cubins": cubins}))
"""


def link_with_nvjitlink(ptx_dir: Path) -> dict:
    """nvJitLink's version and, per PTX file, whether it linked to an sm_90 cubin (in a subprocess that
    finds the wheels' libraries)."""
    import json

    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(wheel_lib_dirs() + [env.get("LD_LIBRARY_PATH", "")])
    result = subprocess.run([sys.executable, "-c", LINK_SCRIPT, str(ptx_dir)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_gather_kernel_reads_through_pointers(ptx_dir):
    ptx = (ptx_dir / "gather.ptx").read_text()
    assert ".target sm_90" in ptx
    assert re.search(r"\bld(\.global)?\.u64\b", ptx) and re.search(r"\bld(\.global)?\.u8\b", ptx)


def test_fused_gather_crc_reads_through_pointers_and_reduces_in_shared_memory(ptx_dir):
    ptx = (ptx_dir / "gather_crc.ptx").read_text()
    assert ".target sm_90" in ptx
    assert re.search(r"\bld(\.global)?\.u64\b", ptx) and re.search(r"\bst(\.global)?\.u64\b", ptx)  # word path
    assert "ld.shared.u32" in ptx and "atom.shared.xor.b32" in ptx  # shared tables, shared reduction
    assert "atom.global" not in ptx  # one value per row: no global atomics, no zeroed output


def test_scatter_kernel_stores_through_pointers(ptx_dir):
    ptx = (ptx_dir / "scatter.ptx").read_text()
    assert re.search(r"\bst(\.global)?\.u64\b", ptx) and re.search(r"\bst(\.global)?\.u8\b", ptx)


def test_ptx_isa_loads_on_a_cuda_13_0_driver(ptx_dir):
    versions = {p.name: isa(p.read_text()) for p in sorted(ptx_dir.glob("*.ptx"))}
    newer = {name: v for name, v in versions.items() if v > OLDEST_DRIVER_ISA}
    if not newer:
        return  # a CUDA 13.0 driver's JIT takes every kernel as it is
    linked = link_with_nvjitlink(ptx_dir)
    if "error" in linked:
        pytest.skip(f"PTX ISA {max(newer.values())} needs nvJitLink (the gpu extra's nvidia-nvjitlink), "
                    f"which is not usable here: {linked['error']}")
    version = tuple(linked["version"])
    assert ISA_OF_CUDA.get(version, (0, 0)) >= max(newer.values()), (
        f"PTX ISA {max(newer.values())} is newer than nvJitLink {version} can link; a CUDA 13.0 driver "
        f"accepts at most {OLDEST_DRIVER_ISA}")
    assert all(linked["cubins"].get(name) for name in newer), linked  # SASS for sm_90: no driver JIT needed


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
