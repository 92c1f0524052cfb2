"""senseflow.io: the one sha256-of-a-file helper."""

import hashlib

from senseflow.io import sha256_file


def test_sha256_file_reads_in_blocks(tmp_path):
    data = bytes(range(256)) * 1000  # 256 kB: several blocks of 64 kB
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    assert sha256_file(path, chunk=1 << 16) == hashlib.sha256(data).hexdigest() == sha256_file(str(path))
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
