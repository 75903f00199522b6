"""The demo's quiet output: what Ray, subprocesses and native code write to fds 1/2 lands in the log file, the
command's own lines reach the user, and the descriptors are restored afterwards."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from odvla.platform.output_capture import captured_output


def test_noise_goes_to_the_log_and_user_lines_do_not(tmp_path, capsys):
    log = tmp_path / "logs" / "demo.log"
    with captured_output(log) as user:
        os.write(1, b"raw fd1 INFO line\n")
        os.write(2, b"raw fd2 progress dump\n")
        subprocess.run([sys.executable, "-c", "import sys; print('child says hi'); print('child err', file=sys.stderr)"],
                       check=True)
        warnings.warn("a deprecation from a library", DeprecationWarning)
        user.write("step 3/10 loss 1.2\n")
    text = log.read_text()
    for needle in ("raw fd1 INFO line", "raw fd2 progress dump", "child says hi", "child err",
                   "a deprecation from a library"):
        assert needle in text
    assert "step 3/10" not in text
    assert "step 3/10 loss 1.2" in capsys.readouterr().out
    os.write(1, b"")  # descriptors work again after the block


def test_restored_after_an_error(tmp_path):
    before = os.fstat(1).st_ino, os.fstat(2).st_ino
    with pytest.raises(RuntimeError, match="boom"):
        with captured_output(tmp_path / "x.log"):
            raise RuntimeError("boom")
    assert (os.fstat(1).st_ino, os.fstat(2).st_ino) == before
