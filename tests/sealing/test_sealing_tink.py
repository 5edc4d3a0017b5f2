"""The segment layer is Tink's AesGcmHkdfStreaming wire format: Tink decrypts our files, we decrypt
Tink's, with the Veil header as the associated data. Skipped where `tink` is not installed."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from veil.errors import VeilError
from veil.sealing import generate_data_key, seal_file, unseal_to_memfd
from veil.sealing.format import TAG_SIZE, TINK_HEADER_SIZE

tink = pytest.importorskip("tink")
from tink import cleartext_keyset_handle, streaming_aead  # noqa: E402
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2  # noqa: E402

SEG = 4096
FIRST = SEG - TINK_HEADER_SIZE - TAG_SIZE
FULL = SEG - TAG_SIZE


def _tink_primitive(key: bytes, segment_size: int):
    """Load our raw data key into a Tink keyset (Tink has no raw-key import, hence the protobufs)."""
    streaming_aead.register()
    params = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
        ciphertext_segment_size=segment_size, derived_key_size=32, hkdf_hash_type=common_pb2.SHA256
    )
    k = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(version=0, key_value=key, params=params)
    data = tink_pb2.KeyData(
        type_url="type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
        value=k.SerializeToString(),
        key_material_type=tink_pb2.KeyData.SYMMETRIC,
    )
    keyset = tink_pb2.Keyset(
        primary_key_id=1,
        key=[tink_pb2.Keyset.Key(key_data=data, status=tink_pb2.ENABLED, key_id=1, output_prefix_type=tink_pb2.RAW)],
    )
    return cleartext_keyset_handle.from_keyset(keyset).primitive(streaming_aead.StreamingAead)


class _Sink(io.BytesIO):
    def close(self) -> None:
        self.value = self.getvalue()
        super().close()


@pytest.mark.parametrize("size", [0, 100, FIRST, FIRST + FULL, FIRST + 3 * FULL + 17])
def test_tink_interop_both_ways(tmp_path: Path, size: int) -> None:
    key = generate_data_key()
    data = os.urandom(size)
    (tmp_path / "m.bin").write_bytes(data)
    header = seal_file(tmp_path / "m.bin", tmp_path / "m.sealed", key, "m", segment_size=SEG)
    blob = (tmp_path / "m.sealed").read_bytes()
    prim = _tink_primitive(key, SEG)
    body = blob[len(header.raw) :]
    assert prim.new_decrypting_stream(io.BytesIO(body), header.raw).read() == data
    with pytest.raises(tink.TinkError):  # the header really is Tink's associated data
        prim.new_decrypting_stream(io.BytesIO(body), header.raw[:-1] + b"\x00").read()

    sink = _Sink()
    with prim.new_encrypting_stream(sink, header.raw) as enc:
        enc.write(data)
    (tmp_path / "tink.sealed").write_bytes(header.raw + sink.value)
    with unseal_to_memfd(tmp_path / "tink.sealed", key) as mf:
        assert mf.read() == data


def test_tink_body_under_another_header_is_refused(tmp_path: Path) -> None:
    key = generate_data_key()
    data = os.urandom(FIRST + 2 * FULL)
    (tmp_path / "m.bin").write_bytes(data)
    header = seal_file(tmp_path / "m.bin", tmp_path / "m.sealed", key, "m", segment_size=SEG)
    sink = _Sink()
    with _tink_primitive(key, SEG).new_encrypting_stream(sink, b"some other associated data") as enc:
        enc.write(data)
    (tmp_path / "x.sealed").write_bytes(header.raw + sink.value)
    with pytest.raises(VeilError) as err:
        unseal_to_memfd(tmp_path / "x.sealed", key)
    assert err.value.reason == "seal.tampered"
