"""A hostile OHTTP relay, run as its own process: forwards to a gateway and damages responses.

    python cutting_relay.py --upstream http://127.0.0.1:PORT --port PORT

It sees what any relay sees: the outer POST (whose clear-text header names the suite, hence the
response nonce length) and the encrypted response. ``POST /relay/mode`` with
``{"mode": ..., "after": k}`` sets what it does to the next responses, at a *chunk boundary* of
the chunked OHTTP framing (nonce || varint(len) ciphertext ... || 0x00 final):

* ``pass``: nothing;
* ``end``: forwards the nonce and the first ``k`` chunks (fewer if the final one comes first),
  then ends the HTTP body cleanly;
* ``abort``: the same, then drops the connection (the body never ends cleanly);
* ``flip``: flips one bit in chunk ``k`` and forwards everything else unchanged.
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from veil.ohttp.bhttp import decode_varint
from veil.ohttp.keyconfig import SymmetricSuite
from veil.ohttp.ohttp import response_nonce_len

MODE: dict[str, object] = {"mode": "pass", "after": 0}


class _Abort(Exception):
    """Raised inside the body: uvicorn then drops the connection mid-body."""


def _records(buf: bytearray, nonce_len: int, state: dict[str, object]) -> list[tuple[str, bytes]]:
    """Split what has arrived into ("nonce"|"chunk"|"final", bytes) records, keeping the rest in ``buf``."""
    out: list[tuple[str, bytes]] = []
    if not state["nonce_done"]:
        if len(buf) < nonce_len:
            return out
        out.append(("nonce", bytes(buf[:nonce_len])))
        del buf[:nonce_len]
        state["nonce_done"] = True
    while not state["in_final"]:
        got = decode_varint(buf, 0)
        if got is None:
            return out
        length, pos = got
        if length == 0:
            out.append(("final", bytes(buf[:pos])))
            del buf[:pos]
            state["in_final"] = True
            break
        if len(buf) < pos + length:
            return out
        out.append(("chunk", bytes(buf[: pos + length])))
        del buf[: pos + length]
    if state["in_final"] and buf:
        out.append(("final", bytes(buf)))
        buf.clear()
    return out


def create_relay(upstream: str) -> Starlette:
    client = httpx.AsyncClient(base_url=upstream, timeout=60)

    async def set_mode(request: Request) -> Response:
        MODE.update(await request.json())
        return JSONResponse(MODE)

    async def relay(request: Request) -> Response:
        body = await request.body()
        kdf, aead = struct.unpack("!HH", body[3:7])
        nonce_len = response_nonce_len(SymmetricSuite(kdf, aead))
        headers = {k: v for k, v in request.headers.items() if k in ("content-type", "accept")}
        up = await client.send(client.build_request("POST", request.url.path, content=body, headers=headers), stream=True)
        mode, after = str(MODE["mode"]), int(MODE["after"])  # type: ignore[call-overload]

        async def damaged() -> AsyncIterator[bytes]:
            buf = bytearray()
            state: dict[str, object] = {"nonce_done": False, "in_final": False}
            chunks = 0
            try:
                async for piece in up.aiter_raw():
                    buf += piece
                    for kind, data in _records(buf, nonce_len, state):
                        if kind != "nonce":
                            if mode in ("end", "abort") and (chunks >= after or kind == "final"):
                                if mode == "abort":
                                    raise _Abort()
                                return
                            if kind == "chunk":
                                if mode == "flip" and chunks == after:
                                    data = data[:-1] + bytes([data[-1] ^ 1])
                                chunks += 1
                        yield data
            finally:
                await up.aclose()

        if up.status_code != 200 or mode == "pass":
            content = await up.aread()
            await up.aclose()
            return Response(content, status_code=up.status_code, media_type=up.headers.get("content-type"))
        return StreamingResponse(damaged(), media_type=up.headers.get("content-type"))

    return Starlette(
        routes=[
            Route("/relay/mode", set_mode, methods=["POST"]),
            Route("/{path:path}", relay, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_relay(args.upstream), host="127.0.0.1", port=args.port, log_level="critical")


if __name__ == "__main__":
    main()
