"""Checksums written at export and verified at load: bytes damaged afterwards fail loudly."""
import pytest

from modules.core.checksums import verify_checksums, write_checksums


def test_recorded_files_verify_and_damage_is_caught(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 64)
    sums = write_checksums(tmp_path)
    assert set(sums) == {"model.safetensors"}
    verify_checksums(tmp_path)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte in the middle, as an overwrite would
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors is corrupted: sha256"):
        verify_checksums(tmp_path)
    weights.unlink()
    with pytest.raises(ValueError, match="model.safetensors is missing"):
        verify_checksums(tmp_path)


def test_a_directory_without_a_record_passes(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    verify_checksums(tmp_path)
