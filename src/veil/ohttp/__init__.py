"""Oblivious HTTP for Veil: key configurations (X25519 and X-Wing), Binary HTTP, RFC 9458 and chunked OHTTP."""

from veil.ohttp.bhttp import Request, Response, decode_request, decode_response, encode_request, encode_response
from veil.ohttp.chunked import (
    ChunkedRequestReceiver,
    ChunkedRequestSender,
    ChunkedResponseReceiver,
    ChunkedResponseSender,
)
from veil.ohttp.keyconfig import (
    KEM_X25519_SHA256,
    KEM_XWING,
    KeyConfig,
    KeyPair,
    KeyStore,
    SymmetricSuite,
    decode_key_config_list,
    encode_key_config_list,
    new_generation,
)
from veil.ohttp.ohttp import (
    ClientResponseContext,
    ServerResponseContext,
    decapsulate_request,
    encapsulate_request,
)
from veil.ohttp.preference import ChosenSuite, choose_suite
from veil.wire import (
    MEDIA_TYPE_CHUNKED_REQUEST,
    MEDIA_TYPE_CHUNKED_RESPONSE,
    MEDIA_TYPE_KEYS,
    MEDIA_TYPE_REQUEST,
    MEDIA_TYPE_RESPONSE,
)

__all__ = [
    "KEM_X25519_SHA256",
    "KEM_XWING",
    "MEDIA_TYPE_CHUNKED_REQUEST",
    "MEDIA_TYPE_CHUNKED_RESPONSE",
    "MEDIA_TYPE_KEYS",
    "MEDIA_TYPE_REQUEST",
    "MEDIA_TYPE_RESPONSE",
    "ChunkedRequestReceiver",
    "ChunkedRequestSender",
    "ChunkedResponseReceiver",
    "ChunkedResponseSender",
    "ChosenSuite",
    "ClientResponseContext",
    "KeyConfig",
    "KeyPair",
    "KeyStore",
    "Request",
    "Response",
    "ServerResponseContext",
    "SymmetricSuite",
    "choose_suite",
    "decapsulate_request",
    "decode_key_config_list",
    "decode_request",
    "decode_response",
    "encapsulate_request",
    "encode_key_config_list",
    "encode_request",
    "encode_response",
    "new_generation",
]
