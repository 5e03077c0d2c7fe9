"""Progress bars go to a terminal only, never into a log file (issue 13)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import shutil
import subprocess


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, arcsat_night):
    exe = shutil.which("archive")
    done = subprocess.run([exe, "--db", tmp_path / "c.sqlite", "ingest", arcsat_night], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "new frames: 32" in done.stdout
    assert "reading headers" not in done.stderr and "\r" not in done.stderr


def test_a_progress_bar_on_a_terminal(tmp_path, arcsat_night):
    exe = shutil.which("archive")
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 wide
    try:
        done = subprocess.run([exe, "--db", tmp_path / "c.sqlite", "ingest", arcsat_night], stdout=subprocess.PIPE,
                              stderr=secondary, timeout=300)
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
    assert done.returncode == 0
    assert b"reading headers" in seen
