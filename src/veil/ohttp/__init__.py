"""Oblivious HTTP for Veil: key configurations, Binary HTTP, RFC 9458 and chunked OHTTP."""

from veil.ohttp.bhttp import Request, Response, decode_request, decode_response, encode_request, encode_response
from veil.ohttp.chunked import (
    ChunkedRequestReceiver,
    ChunkedRequestSender,
    ChunkedResponseReceiver,
    ChunkedResponseSender,
)
from veil.ohttp.keyconfig import (
    DEFAULT_SUITE,
    KeyConfig,
    KeyPair,
    KeyStore,
    SymmetricSuite,
    decode_key_config_list,
    encode_key_config_list,
)
from veil.ohttp.ohttp import (
    ClientResponseContext,
    ServerResponseContext,
    decapsulate_request,
    encapsulate_request,
)
from veil.wire import (
    MEDIA_TYPE_CHUNKED_REQUEST,
    MEDIA_TYPE_CHUNKED_RESPONSE,
    MEDIA_TYPE_KEYS,
    MEDIA_TYPE_REQUEST,
    MEDIA_TYPE_RESPONSE,
)

__all__ = [
    "DEFAULT_SUITE",
    "MEDIA_TYPE_CHUNKED_REQUEST",
    "MEDIA_TYPE_CHUNKED_RESPONSE",
    "MEDIA_TYPE_KEYS",
    "MEDIA_TYPE_REQUEST",
    "MEDIA_TYPE_RESPONSE",
    "ChunkedRequestReceiver",
    "ChunkedRequestSender",
    "ChunkedResponseReceiver",
    "ChunkedResponseSender",
    "ClientResponseContext",
    "KeyConfig",
    "KeyPair",
    "KeyStore",
    "Request",
    "Response",
    "ServerResponseContext",
    "SymmetricSuite",
    "decapsulate_request",
    "decode_key_config_list",
    "decode_request",
    "decode_response",
    "encapsulate_request",
    "encode_key_config_list",
    "encode_request",
    "encode_response",
]
