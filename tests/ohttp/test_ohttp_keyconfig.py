"""Key configurations: RFC 9458 §3 encoding, the application/ohttp-keys list, key pairs and store,
the two configurations of each key generation, and which one Veil's clients choose."""

from __future__ import annotations

import pytest

from veil.errors import ParseError, ProtocolError
from veil.ohttp.keyconfig import (
    AEAD_AES_128_GCM,
    AES_128_GCM,
    AES_256_GCM,
    CHACHA20_POLY1305,
    KEM_X25519_SHA256,
    KEM_XWING,
    KeyConfig,
    KeyPair,
    KeyStore,
    SymmetricSuite,
    decode_key_config_list,
    encode_key_config_list,
    key_ids_for,
    new_generation,
)
from veil.ohttp.preference import choose_suite

# RFC 9458 Appendix A.
RFC_CONFIG = bytes.fromhex("01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003")
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


def test_default_suites_per_kem() -> None:
    # RFC 9458's example suite first: standard clients (ohttpy) take the first entry.
    classical = KeyPair.generate(7)
    assert classical.config.suites == (AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305)
    assert classical.config.select_suite() == SymmetricSuite(1, AEAD_AES_128_GCM)
    pq = KeyPair.generate(8, kem_id=KEM_XWING)
    assert pq.config.suites == (AES_256_GCM, CHACHA20_POLY1305)
    assert len(pq.config.public_key) == 1216 and len(pq.private_bytes()) == 32
    with pytest.raises(ProtocolError):
        KeyConfig.decode(RFC_CONFIG).select_suite(AES_256_GCM)
    with pytest.raises(ParseError) as e:
        KeyPair.generate(1, kem_id=0x0010)
    assert e.value.reason == "ohttp.unsupported_kem"


def test_each_generation_has_both_configurations_x25519_first() -> None:
    store = KeyStore(new_generation(0) + new_generation(3))
    configs = decode_key_config_list(store.encode_configs())
    assert [(c.key_id, c.kem_id) for c in configs] == [
        (0, KEM_X25519_SHA256),
        (1, KEM_XWING),
        (6, KEM_X25519_SHA256),
        (7, KEM_XWING),
    ]
    assert key_ids_for(3) == (6, 7) and key_ids_for(127) == (254, 255)
    assert [(p.key_id, p.kem_id) for p in new_generation(128)] == [(0, KEM_X25519_SHA256), (1, KEM_XWING)]
    # The first entry is what a standard client uses: X25519 with AES-128-GCM.
    assert configs[0].suites[0] == AES_128_GCM


def test_veil_prefers_xwing_wherever_it_is_listed() -> None:
    x25519, pq = new_generation(2)
    for order in ([x25519.config, pq.config], [pq.config, x25519.config]):
        chosen = choose_suite(order)
        assert chosen.config == pq.config and chosen.suite == AES_256_GCM and chosen.post_quantum
        assert chosen.name == "X-Wing (MLKEM768-X25519) / HKDF-SHA256 / AES-256-GCM"
    classical = choose_suite([x25519.config])
    assert classical.config == x25519.config and not classical.post_quantum
    # A suite only the X25519 configuration lists selects that one.
    assert choose_suite([x25519.config, pq.config], AES_128_GCM).config == x25519.config
    with pytest.raises(ProtocolError) as e:
        choose_suite([KeyConfig(1, 0x20, b"\x01" * 32, (SymmetricSuite(3, 1),))])
    assert e.value.reason == "ohttp.unsupported_suite"


def test_unsupported_suites_are_skipped() -> None:
    cfg = KeyConfig(1, 0x20, b"\x01" * 32, (SymmetricSuite(3, 1), SymmetricSuite(1, 3)))
    assert cfg.select_suite() == SymmetricSuite(1, 3)
    with pytest.raises(ProtocolError):
        KeyConfig(1, 0x20, b"\x01" * 32, (SymmetricSuite(3, 1),)).select_suite()


def test_private_bytes_round_trip_and_store() -> None:
    a, b = KeyPair.generate(1), KeyPair.generate(2, kem_id=KEM_XWING)
    again = KeyPair.from_private_bytes(1, a.private_bytes())
    assert again.config == a.config
    assert KeyPair.from_private_bytes(2, b.private_bytes(), kem_id=KEM_XWING).config == b.config
    assert b.private_bytes().hex() not in repr(b)
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
    with pytest.raises(ParseError):
        KeyPair.from_private_bytes(1, b"\x00" * 31, kem_id=KEM_XWING)
