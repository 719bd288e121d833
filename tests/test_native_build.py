"""The native kernel's build cache (``kernels/native_build.py``): keyed, atomic, private, verified; a failing,
corrupt or hanging build is survived with a warning and the other backends run."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from conftest import needs_native, run_python

from monai_gdl.kernels import native, native_build

pytestmark = needs_native  # every build test needs a C compiler


# 2. The kernel cache: a corrupt library is detected and rebuilt; a hanging compiler times out with a warning.
@needs_native
def test_a_truncated_cached_library_is_rebuilt_with_a_warning(tmp_path):
    env = {"MONAI_GDL_CACHE_DIR": str(tmp_path / "cache")}
    probe = """
        import logging, torch
        logging.basicConfig(level=logging.WARNING)
        from monai_gdl.kernels import native, native_build
        from monai_gdl import VNetDiceLoss
        x, y = torch.randn(2, 3, 16, 16, 16), torch.randint(0, 3, (2, 1, 16, 16, 16))
        loss = VNetDiceLoss(softmax=True, to_onehot_y=True)(x, y)
        ref = VNetDiceLoss(softmax=True, to_onehot_y=True, implementation="reference")(x, y)
        assert native.available(), native.unavailable_reason()
        assert torch.allclose(loss, ref, atol=1e-6)
        print("ok", native_build.library_path().name)
    """
    built = native_build.library_path()  # this process's cache: the verified build every test run has made
    (tmp_path / "cache").mkdir(mode=0o700)
    library = tmp_path / "cache" / built.name
    library.write_bytes(built.read_bytes())
    library.chmod(0o700)
    seeded = library.stat().st_mtime_ns
    first = run_python(probe, env)
    assert first.returncode == 0 and f"ok {library.name}" in first.stdout, first.stderr[-2000:]
    assert library.stat().st_mtime_ns == seeded  # the seeded copy was loaded, not rebuilt
    # a zeroed tail (same size) is the harder case: a size check alone would miss it
    library.write_bytes(library.read_bytes()[:4096] + bytes(len(library.read_bytes()) - 4096))
    again = run_python(probe, env)
    assert again.returncode == 0, again.stderr[-2000:]  # was SIGBUS, in every later process
    assert "does not match the checksum" in again.stderr
    assert f"ok {library.name}" in again.stdout  # rebuilt, same content, same name
    clean = run_python(probe, env)
    assert "checksum" not in clean.stderr and clean.returncode == 0


@needs_native
def test_a_killed_builds_leftovers_are_removed(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    leftover = cache / ".build-0123456789abcdef-xyz.so"
    leftover.write_bytes(b"half a library")
    old = time.time() - 3600
    os.utime(leftover, (old, old))
    result = run_python(
        "from monai_gdl.kernels import native; print(native.available())", {"MONAI_GDL_CACHE_DIR": str(cache)}
    )
    assert result.stdout.strip() == "True", result.stderr[-2000:]
    assert not leftover.exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []


def test_a_hanging_compiler_is_stopped_and_the_loss_still_runs(tmp_path):
    compiler = tmp_path / "cc-hangs"
    compiler.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'hanging cc 1.0'; exit 0; }\nexec sleep 600\n")
    compiler.chmod(0o755)
    env = {"CC": str(compiler), "MONAI_GDL_CACHE_DIR": str(tmp_path / "cache"), "MONAI_GDL_BUILD_TIMEOUT_S": "3"}
    start = time.monotonic()
    result = run_python(
        """
        import torch
        from monai_gdl import VNetDiceLoss
        x, y = torch.randn(1, 3, 8, 8, 8), torch.randint(0, 3, (1, 1, 8, 8, 8))
        print(float(VNetDiceLoss(softmax=True, to_onehot_y=True)(x, y)))
    """,
        env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - start < 60
    assert "took over 3 s and was stopped" in result.stderr and "MONAI_GDL_BUILD_TIMEOUT_S" in result.stderr
    assert 0.0 <= float(result.stdout.split()[-1]) <= 1.0


def test_build_is_cached_and_keyed_by_source(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MONAI_GDL_CACHE_DIR", str(cache))
    first = native_build.library_path()
    assert first is not None and first.parent == cache and first.exists()
    stamp = first.stat().st_mtime_ns
    assert native_build.library_path() == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in cache.iterdir()] == [first.name]  # no temporary left behind
    assert cache.stat().st_mode & 0o077 == 0  # created private
    edited = tmp_path / "native.c"
    edited.write_text(native_build.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(native_build, "SOURCE", edited)
    assert native_build.library_path() != first


def test_a_cache_folder_others_can_write_is_not_used(monkeypatch, tmp_path, caplog):
    """A shared folder (group/other-writable) could hold a planted binary: never load from it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("MONAI_GDL_CACHE_DIR", str(shared))
    native_build._process_folder.cache_clear()
    with caplog.at_level("WARNING", logger="monai_gdl.kernels.native"):
        path = native_build.library_path()
    assert path.parent != shared and path.parent.stat().st_mode & 0o077 == 0
    assert "no private cache folder" in caplog.text
    assert not list(shared.iterdir())


def test_a_planted_binary_others_can_write_is_rebuilt(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MONAI_GDL_CACHE_DIR", str(cache))
    path = native_build.library_path()
    path.write_bytes(b"not a library")
    path.chmod(0o666)  # writable by others: not trusted, built again
    assert native_build.library_path() == path
    assert path.read_bytes() != b"not a library" and path.stat().st_mode & 0o022 == 0


def test_unwritable_cache_home_falls_back_to_a_temp_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.delenv("MONAI_GDL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # mkdir under a file fails
    folder = native_build._cache_dir()
    assert folder.parent == Path(tempfile.gettempdir())


def test_a_failing_build_is_reported_and_falls_back(monkeypatch, tmp_path):
    broken = tmp_path / "native.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(native_build, "SOURCE", broken)
    monkeypatch.setenv("MONAI_GDL_CACHE_DIR", str(tmp_path / "cache"))
    native.load.cache_clear()
    try:
        assert not native.available()
        assert "the C compiler failed on the kernel source" in native.unavailable_reason()
        assert not list((tmp_path / "cache").glob("*"))  # no half-written library left behind
    finally:
        native.load.cache_clear()
