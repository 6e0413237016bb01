"""Packaging of gpuckpt.kernels (lazy import, missing extra), PTX for sm_90, and a full-size GPU run."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environ, timeout=300
    )


def test_import_does_not_load_numba():
    result = run_python(
        """
        import sys
        import gpuckpt.kernels as k
        assert "numba" not in sys.modules, "numba imported eagerly"
        assert "crc_segments" in dir(k) and k.__all__ == ["crc_segments"]
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_missing_numba_names_the_extra():
    result = run_python(
        """
        import sys
        sys.modules["numba"] = None  # makes "import numba" raise ImportError
        import gpuckpt.kernels as k
        try:
            k.crc_segments
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("no ImportError")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'gpuckpt[gpu]'" in result.stdout


def test_host_arrays_are_refused_outside_the_simulator():
    # A NumPy argument would make numba copy it to the device and back behind the caller's back.
    pytest.importorskip("numba.cuda")
    result = run_python(
        """
        import numpy as np
        from gpuckpt.kernels import crc_segments
        try:
            crc_segments(np.zeros(8, np.uint8), [0], [8])
        except TypeError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "buf must be a CUDA array" in result.stdout


def test_unknown_attribute_is_an_attribute_error():
    import gpuckpt.kernels as k

    with pytest.raises(AttributeError):
        k.no_such_kernel  # noqa: B018


PTX_SCRIPT = """
import sys, types
import numba.cuda.dispatcher as dispatcher
# numba-cuda asks the driver for the current device's compute capability when it compiles a
# call to a device function; with no driver, answer for the target being compiled for.
dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
from numba import cuda
from gpuckpt.kernels import pack
u8, u64, i64, u32 = "uint8[::1]", "uint64[::1]", "int64[::1]", "uint32[::1]"
chunk_sig = f"void({u8},{u64},{u8},{u64},{i64},{i64},{i64},{i64},int64,boolean,{u32})"
kernels = {
    "chunk_crc": (pack.chunk_kernel_source(256, 32), chunk_sig),
    "combine": (pack.combine_kernel_source, f"void({u32},{i64},{i64},{i64},int64,{u32})"),
}
missing = ("DynamicLibNotFoundError", "CudaSupportError", "NvvmSupportError", "NvrtcSupportError")
for name, (fn, sig) in kernels.items():
    try:
        ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
    except Exception as exc:
        if type(exc).__name__ in missing:
            print("SKIP:", type(exc).__name__, str(exc).splitlines()[0])
            sys.exit(0)
        raise
    with open(f"{sys.argv[1]}/{name}.ptx", "w") as f:
        f.write(ptx)
print("OK")
"""


def test_kernels_compile_to_ptx_for_sm90(tmp_path):
    pytest.importorskip("numba.cuda")
    from tests.kernels.test_ptx_target import wheel_lib_dirs

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(wheel_lib_dirs() + [env.get("LD_LIBRARY_PATH", "")])  # wheel libraries
    result = subprocess.run(
        [sys.executable, "-c", PTX_SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("SKIP:"):
        pytest.skip(f"no CUDA compiler libraries here (libnvrtc/libnvvm): {result.stdout.strip()}")
    assert result.stdout.strip() == "OK"
    chunk = (tmp_path / "chunk_crc.ptx").read_text()
    assert ".target sm_90" in chunk
    assert "ld.global.u64" in chunk  # word-wide reads
    assert "ld.shared.u32" in chunk and "atom.shared.xor.b32" in chunk  # shared tables, shared reduction
    assert "atom.global.xor.b32" in (tmp_path / "combine.ptx").read_text()


def real_gpu_reason() -> str | None:
    """Why the GPU test cannot run here, or None when a real GPU is usable."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "the CUDA simulator is on (set NUMBA_ENABLE_CUDASIM=0 on a machine with a GPU)"
    try:
        from numba import cuda
    except ImportError:
        return "numba-cuda is not installed"
    if not cuda.is_available():
        return "no CUDA GPU or driver is available"
    return None


@pytest.mark.gpu
@pytest.mark.slow
def test_full_size_on_a_real_gpu():
    reason = real_gpu_reason()
    if reason:
        pytest.skip(reason)
    import crc32c as crc32c_pkg
    from numba import cuda

    from gpuckpt.kernels import crc_segments

    rng = np.random.default_rng(7)
    size = 256 << 20
    arena = rng.integers(0, 256, size, dtype=np.uint8)
    sizes = [size - 3_000_000, 1, 3, 1_000_003, 1_999_990]
    offsets = [0, size - 3_000_000, size - 2_999_999 + 1, size - 2_999_995, size - 1_999_992 + 2]
    want = [crc32c_pkg.crc32c(arena[o : o + s]) for o, s in zip(offsets, sizes)]
    src = cuda.to_device(arena)
    assert crc_segments(src, offsets, sizes).tolist() == want
    assert np.array_equal(src.copy_to_host(), arena)  # nothing written
