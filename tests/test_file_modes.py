"""Files a run or an export writes are readable as the umask says (0644 / 0755 under umask 022):
another user, a container (compose's serve service) or a Ray worker on shared storage reads them."""
import os
import stat

from polo_lib import atomic


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_the_umask_mode_not_the_temp_files_private_one(tmp_path):
    expected = 0o666 & ~atomic.umask()
    assert expected != 0o600, "run under a umask that hides the difference"
    path = atomic.atomic_write_text(tmp_path / "sub" / "report.md", "hello")
    assert mode(path) == expected
    atomic.atomic_write_json(path, {"again": True})  # rewriting keeps it
    assert mode(path) == expected


def test_match_umask_opens_private_files_and_folders_and_keeps_execute_bits(tmp_path):
    folder = tmp_path / "export"
    (folder / "inner").mkdir(parents=True)
    weights, script = folder / "inner" / "model.safetensors", folder / "run.sh"
    weights.write_bytes(b"x")
    script.write_text("#!/bin/sh\n")
    weights.chmod(0o600)  # what a library's mkstemp leaves
    script.chmod(0o700)
    (folder / "inner").chmod(0o700)
    atomic.match_umask(folder)
    mask = atomic.umask()
    assert mode(weights) == 0o666 & ~mask
    assert mode(script) == mode(folder / "inner") == 0o777 & ~mask


def test_a_replaced_folder_gets_the_umask_mode(tmp_path):
    def build(tmp):
        (tmp / "weights.bin").write_bytes(b"x")
        (tmp / "weights.bin").chmod(0o600)

    target = atomic.atomic_replace_dir(tmp_path / "merged", build)
    assert mode(target / "weights.bin") == 0o666 & ~atomic.umask()
