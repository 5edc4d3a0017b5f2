"""Refusals inside the encryption, raised as typed errors and answered in OpenAI's error shape.

Once the gateway has opened a request, every answer goes back encrypted to that client, errors
included. A step that refuses raises :class:`Refusal`; the pipeline turns it into one answer with
:func:`openai_error_body`, the single builder of OpenAI-shaped error bodies in the gateway:
``{"error": {"message", "type", "param": null, "code", "reason"}}``, where ``reason`` is Veil's
stable dotted reason code (docs/reason-codes.md) and the rest is what the ``openai`` SDK reads.
"""

from __future__ import annotations

import json

from veil.errors import VeilError
from veil.ohttp import bhttp

#: HTTP status → OpenAI error ``type``, as OpenAI's API documents them.
_TYPES = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
}


def openai_error_body(message: str, type_: str, code: str, reason: str) -> bytes:
    """The JSON body of an OpenAI-shaped error, with Veil's reason code beside OpenAI's fields."""
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code, "reason": reason}}).encode()


class Refusal(VeilError):
    """An opened request refused inside the encryption: an encrypted status plus an OpenAI error.

    ``code`` is OpenAI's machine-readable ``error.code``; ``type_`` defaults from the status.
    ``headers`` go into the encrypted answer (``retry-after``, ``www-authenticate``, ``date``).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        code: str,
        type_: str | None = None,
        headers: bhttp.Fields | None = None,
    ) -> None:
        super().__init__(reason, message)
        self.status = status
        self.code = code
        self.type = type_ or _TYPES.get(status, "invalid_request_error")
        self.headers: bhttp.Fields = list(headers or [])

    def answer(self) -> tuple[int, bhttp.Fields, bytes]:
        """(status, headers, body) of the encrypted answer."""
        body = openai_error_body(self.message, self.type, self.code, self.reason)
        return self.status, [("content-type", "application/json"), *self.headers], body

    @classmethod
    def of(cls, err: VeilError, status: int = 400) -> Refusal:
        """A library error (say a ``bhttp.*`` parse error of the inner message) as a refusal."""
        if isinstance(err, Refusal):
            return err
        return cls(status, err.reason, err.message, code=err.reason.rsplit(".", 1)[-1])


def internal_error() -> Refusal:
    """What any unexpected exception after decryption becomes: nothing about it leaves the worker."""
    return Refusal(500, "gateway.internal_error", "The gateway could not process this request.", code="internal_error")
