"""Key configurations: RFC 9458 §3 encoding, the application/ohttp-keys list, key pairs and store."""

from __future__ import annotations

import pytest

from veil.errors import ParseError, ProtocolError
from veil.ohttp.keyconfig import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    DEFAULT_SUITE,
    KeyConfig,
    KeyPair,
    KeyStore,
    SymmetricSuite,
    decode_key_config_list,
    encode_key_config_list,
)

# RFC 9458 Appendix A.
RFC_CONFIG = bytes.fromhex(
    "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003"
)
RFC_SKR = bytes.fromhex("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a")
RFC_SUITES = (SymmetricSuite(1, 1), SymmetricSuite(1, 3))


def test_rfc9458_key_config_round_trip() -> None:
    cfg = KeyConfig.decode(RFC_CONFIG)
    assert cfg.key_id == 1 and cfg.kem_id == 0x20
    assert cfg.public_key.hex() == "31e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e798155"
    assert cfg.suites == RFC_SUITES
    assert cfg.encode() == RFC_CONFIG


def test_rfc9458_private_key_gives_the_published_config() -> None:
    kp = KeyPair.from_private_bytes(1, RFC_SKR, RFC_SUITES)
    assert kp.config.encode() == RFC_CONFIG
    assert kp.private_bytes() == RFC_SKR
    assert RFC_SKR.hex() not in repr(kp)


def test_list_format() -> None:
    cfg = KeyConfig.decode(RFC_CONFIG)
    listed = encode_key_config_list([cfg, cfg])
    assert listed.hex() == "002d" + RFC_CONFIG.hex() + "002d" + RFC_CONFIG.hex()
    assert decode_key_config_list(listed) == [cfg, cfg]


@pytest.mark.parametrize(
    "data",
    [
        RFC_CONFIG[:-1],  # truncated suite list
        RFC_CONFIG + b"\x00",  # trailing byte
        RFC_CONFIG[:3] + RFC_CONFIG[3:20],  # truncated key
        RFC_CONFIG[:35] + b"\x00\x06" + RFC_CONFIG[37:],  # odd algorithm list length
        RFC_CONFIG[:35] + b"\x00\x00",  # empty suite list
        b"",
    ],
)
def test_strict_decoding(data: bytes) -> None:
    with pytest.raises(ParseError):
        KeyConfig.decode(data)


def test_unknown_kem_is_refused() -> None:
    with pytest.raises(ParseError) as e:
        KeyConfig.decode(RFC_CONFIG[:1] + b"\x12\x34" + RFC_CONFIG[3:])
    assert e.value.reason == "ohttp.unsupported_kem"


@pytest.mark.parametrize("data", ["002e" + RFC_CONFIG.hex(), "002d" + RFC_CONFIG.hex() + "00", "", "0000"])
def test_strict_list_decoding(data: str) -> None:
    with pytest.raises(ParseError):
        decode_key_config_list(bytes.fromhex(data))


def test_default_suite_and_selection() -> None:
    kp = KeyPair.generate(7)
    assert kp.config.suites[0] == DEFAULT_SUITE == SymmetricSuite(1, AEAD_AES_256_GCM)
    assert kp.config.select_suite() == DEFAULT_SUITE
    cfg = kp.config.preferring(SymmetricSuite(1, AEAD_AES_128_GCM))
    assert cfg.suites[0].aead_id == AEAD_AES_128_GCM and set(cfg.suites) == set(kp.config.suites)
    with pytest.raises(ProtocolError):
        KeyConfig.decode(RFC_CONFIG).select_suite(DEFAULT_SUITE)


def test_unsupported_suites_are_skipped() -> None:
    cfg = KeyConfig(1, 0x20, b"\x01" * 32, (SymmetricSuite(3, 1), SymmetricSuite(1, 3)))
    assert cfg.select_suite() == SymmetricSuite(1, 3)
    with pytest.raises(ProtocolError):
        KeyConfig(1, 0x20, b"\x01" * 32, (SymmetricSuite(3, 1),)).select_suite()


def test_private_bytes_round_trip_and_store() -> None:
    a, b = KeyPair.generate(1), KeyPair.generate(2)
    again = KeyPair.from_private_bytes(1, a.private_bytes())
    assert again.config == a.config
    store = KeyStore([a, b])
    assert store.get(2) is b and len(store) == 2 and 1 in store
    assert decode_key_config_list(store.encode_configs()) == [a.config, b.config]
    with pytest.raises(ProtocolError) as e:
        store.get(9)
    assert e.value.reason == "ohttp.unknown_key_id"
    with pytest.raises(ValueError):
        store.add(again)
    with pytest.raises(ParseError):
        KeyPair.from_private_bytes(1, b"short")
