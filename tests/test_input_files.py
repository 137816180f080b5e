"""kimpki.input_files: every command argument naming a certificate, CSR, key or passphrase file
is read with a bound (/dev/zero refused at 32 MiB, not read until MemoryError) and without waiting
for a writer that never comes (a FIFO nobody writes to reads as empty), through the real CLI."""

from __future__ import annotations

import os
import threading

import pytest

from tests.conftest import assert_one_line_error

# Every command argument naming a certificate, CSR, key or passphrase file; what it makes of an
# empty file (a FIFO nobody writes to reads as one). --ca takes only a regular file as a file.
FILE_READERS = {
    "inspect": (lambda f: ["inspect", f], (2, "not a readable certificate (empty)")),
    "inspect --ca": (lambda f: ["inspect", "ca.crt", "--ca", f], (1, "no CA named")),
    "sign": (lambda f: ["sign", f], (2, "not a readable certificate signing request (empty)")),
    "ca import --cert": (lambda f: ["ca", "import", "imported", "--cert", f, "--key", "ca.key"],
                         (2, "not a readable certificate (empty)")),
    "ca import --key": (lambda f: ["ca", "import", "imported", "--cert", "ca.crt", "--key", f],
                        (1, "cannot read the key in")),
    "--passphrase-file": (lambda f: ["issue", "kim.example.com", "--passphrase-file", f], (2, "is empty")),
}


@pytest.fixture
def with_ca_files(kimpki):
    kimpki.ok("ca", "init", "example.com")
    for name in ("ca.crt", "ca.key"):
        (kimpki.cwd / name).write_bytes((kimpki.home / "cas" / "example.com" / name).read_bytes())
    return kimpki


@pytest.mark.parametrize("command,if_empty", FILE_READERS.values(), ids=FILE_READERS.keys())
def test_endless_input_file_is_refused_at_the_bound(with_ca_files, command, if_empty):
    """/dev/zero never ends: read whole, it filled memory until MemoryError ("internal error")."""
    res = with_ca_files(*command("/dev/zero"), timeout=60)
    if if_empty[1] == "no CA named":
        assert_one_line_error(res, 1, "no CA named '/dev/zero'")
    else:
        assert_one_line_error(res, 2, "/dev/zero: larger than 32 MiB; refused")


@pytest.mark.parametrize("command,if_empty", FILE_READERS.values(), ids=FILE_READERS.keys())
def test_fifo_nobody_writes_to_is_empty_not_a_hang(with_ca_files, command, if_empty):
    fifo = with_ca_files.cwd / "fifo"
    os.mkfifo(fifo)
    res = with_ca_files(*command(fifo), timeout=30)  # it waited for a writer forever
    assert_one_line_error(res, *if_empty)


def test_fifo_with_a_writer_is_read(with_ca_files):
    fifo = with_ca_files.cwd / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes((with_ca_files.cwd / "ca.crt").read_bytes()))
    writer.start()  # blocks in open() until kimpki opens the other end
    try:
        assert with_ca_files.json("inspect", fifo)["certificates"][0]["subject"] == "CN=example.com"
    finally:
        writer.join(timeout=30)
