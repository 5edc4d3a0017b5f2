"""Hugging Face transformers engine: any local causal LM, serving the OpenAI API on a Unix socket.

Run as ``python -m veil.engines.transformers_engine --model DIR --socket PATH [--n-ctx N]``.

Serves ``/v1/chat/completions`` and ``/v1/completions`` (stream or not, SSE framed like OpenAI),
``/v1/models`` and ``/health``, with the same request models, error shape and log hygiene as the
llama.cpp engine. The model directory is loaded offline only (no hub access, no remote code: the
model's own Python would be untrusted code), and nothing a request carries is ever logged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from veil.engines.openai_api import (
    SSE_DONE,
    ChatCompletionRequest,
    CompletionRequest,
    EngineAPIError,
    check_model,
    install_error_handlers,
    parse_body,
    sse_event,
)
from veil.engines.serving import log as _log
from veil.engines.serving import serve, start_up

#: Set before transformers is imported: never reach the network, never phone home.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class Generation:
    """What one request asked for, already tokenised and checked against the context window."""

    input_ids: Any  # torch.LongTensor [1, n]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stops: list[str]
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])


def _make_streamer(tokenizer: Any, put: Any) -> Any:
    """A TextIteratorStreamer that hands text to the event loop token by token.

    The stock class waits for a space before releasing text (fine for a console, choppy for SSE);
    here every token's text goes out as soon as it decodes to whole characters.
    """
    from transformers import TextIteratorStreamer

    class _LoopStreamer(TextIteratorStreamer):  # type: ignore[misc]  # transformers is untyped here
        token_cache: list[int]
        print_len: int
        next_tokens_are_prompt: bool

        def put(self, value: Any) -> None:
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                return
            self.on_finalized_text(text[self.print_len:])
            self.print_len = len(text)
            if text.endswith("\n"):  # start afresh so decoding stays linear in the output
                self.token_cache, self.print_len = [], 0

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                put(("text", text))

    return _LoopStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class TransformersBackend:
    """One causal LM and its tokenizer behind a single generation thread (requests queue up)."""

    def __init__(self, model_dir: Path, model_id: str, n_ctx: int, threads: int,
                 device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False
        )
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False, dtype="auto"
        ).to(device)
        self.model.eval()
        self.device = device
        self.model_id = model_id
        self.created = int(time.time())
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.n_ctx = min(n_ctx, limit) if isinstance(limit, int) and limit > 0 else n_ctx
        self.eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=None)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return set(ids if isinstance(ids, list) else [ids] if ids is not None else [])

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: list[dict[str, Any]]) -> Any:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def encode_text(self, prompt: str) -> Any:
        return self.tokenizer(prompt, return_tensors="pt")["input_ids"]

    def plan(self, input_ids: Any, req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None,
             param: str) -> Generation:
        """Check the request fits the context window (OpenAI's 400 if not) and fix max tokens."""
        prompt = int(input_ids.shape[1])
        room = self.n_ctx - prompt
        if room < 1 or (max_tokens is not None and max_tokens > room):
            raise EngineAPIError(
                400, f"this model's context window is {self.n_ctx} tokens; the request needs "
                f"{prompt} for the prompt plus {max_tokens or 1} to generate",
                "context_length_exceeded", param,
            )
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return Generation(input_ids, max_tokens or room, req.temperature, req.top_p, req.seed,
                          [s for s in stops if s])

    def _generate(self, gen: Generation, put: Any) -> None:
        """Runs on the generation thread; reports ("text", str) items then ("end", finish, n)."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return gen.cancel.is_set()

        if gen.cancel.is_set():
            return
        if gen.seed is not None:
            self.torch.manual_seed(gen.seed)
        sample = gen.temperature > 0
        ids = gen.input_ids.to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=self.torch.ones_like(ids),
                max_new_tokens=gen.max_new_tokens,
                do_sample=sample,
                temperature=gen.temperature if sample else None,
                top_p=gen.top_p if sample else None,
                top_k=None,
                pad_token_id=self.pad_id,
                streamer=_make_streamer(self.tokenizer, put),
                stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            )
        new = out[0, gen.prompt_tokens:].tolist()
        finish = "stop" if new and new[-1] in self.eos_ids else "length"
        n = len(new) - (1 if finish == "stop" else 0)
        put(("end", finish, n))

    async def stream(self, gen: Generation) -> AsyncGenerator[tuple[str, Any, Any], None]:
        """Yield ("text", str, None)... then ("end", finish_reason, completion_tokens).

        Stop sequences are cut here (OpenAI leaves them out of the text); text that might be the
        start of a stop sequence is held back until it is known not to be one.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        def put(item: tuple[Any, ...]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # loop closed during shutdown
                gen.cancel.set()

        def produce() -> None:
            try:
                self._generate(gen, put)
            except Exception as exc:  # reported to the client, never logged
                put(("error", exc))
            finally:
                put(("done",))

        self.executor.submit(produce)
        held, stopped = "", False
        keep = max((len(s) for s in gen.stops), default=1) - 1
        try:
            while True:
                item = await queue.get()
                if item[0] == "text":
                    if stopped:  # tokens produced before the thread saw the cancel flag
                        continue
                    held += item[1]
                    hits = [i for s in gen.stops if (i := held.find(s)) >= 0]
                    if hits:
                        stopped = True
                        gen.cancel.set()
                        if held[: min(hits)]:
                            yield "text", held[: min(hits)], None
                        held = ""
                        continue
                    if len(held) > keep:
                        yield "text", held[: len(held) - keep], None
                        held = held[len(held) - keep:]
                elif item[0] == "end":
                    if held:
                        yield "text", held, None
                    yield "end", "stop" if stopped else item[1], item[2]
                elif item[0] == "error":
                    raise item[1]
                else:
                    return
        finally:
            gen.cancel.set()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _api_error(exc: Exception) -> EngineAPIError:
    if isinstance(exc, EngineAPIError):
        return exc
    return EngineAPIError(500, f"generation failed ({type(exc).__name__})", "engine_error")


def create_app(backend: TransformersBackend) -> FastAPI:
    """The OpenAI-compatible ASGI app for one loaded model."""

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


    async def respond(gen: Generation, chat: bool, stream: bool, include_usage: bool,
                      prefix: str = "") -> Any:
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        head = {"id": rid, "created": created, "model": backend.model_id}

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            if stream:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "message": {"role": "assistant", "content": text},
                    "logprobs": None, "finish_reason": finish}

        events = backend.stream(gen)
        if not stream:
            parts, finish, completion = [prefix], "stop", 0
            try:
                async for kind, value, n in events:
                    if kind == "text":
                        parts.append(value)
                    else:
                        finish, completion = value, n
            except Exception as exc:
                raise _api_error(exc) from None
            return JSONResponse({**head, "object": obj,
                                 "choices": [choice("".join(parts), finish)],
                                 "usage": _usage(gen.prompt_tokens, completion)})

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> bytes:
            return sse_event({**head, "object": chunk_obj,
                              "choices": [choice(text, finish, first)]})

        async def body() -> AsyncIterator[bytes]:
            try:
                if chat or prefix:
                    yield chunk(prefix or None, None, first=True)
                async for kind, value, n in events:
                    if kind == "text":
                        yield chunk(value, None)
                    else:
                        yield chunk(None, value)
                        if include_usage:
                            yield sse_event({**head, "object": chunk_obj, "choices": [],
                                             "usage": _usage(gen.prompt_tokens, n)})
                yield SSE_DONE
            except Exception as exc:
                yield sse_event(_api_error(exc).body())
            finally:
                await events.aclose()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": backend.model_id}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": backend.model_id, "object": "model",
                                            "created": backend.created, "owned_by": "veil"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req = await parse_body(request, ChatCompletionRequest)
        check_model(req.model, backend.model_id)
        if not backend.has_chat_template:
            raise EngineAPIError(400, f"{backend.model_id} has no chat template; use "
                                 "/v1/completions", "unsupported_chat", "messages")
        messages = [m.plain() for m in req.messages]
        try:
            ids = backend.encode_chat(messages)
        except Exception:  # template errors (e.g. roles it refuses) may quote the messages
            raise EngineAPIError(400, "the model's chat template refused these messages",
                                 "invalid_messages", "messages") from None
        gen = backend.plan(ids, req, req.max_completion_tokens or req.max_tokens, "messages")
        usage = req.include_usage
        return await respond(gen, True, req.stream, usage)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await parse_body(request, CompletionRequest)
        check_model(req.model, backend.model_id)
        if req.suffix is not None:
            raise EngineAPIError(400, "this engine has no fill-in-the-middle support; suffix is "
                                 "unsupported", "unsupported_suffix", "suffix")
        prompt = req.single_prompt()
        gen = backend.plan(backend.encode_text(prompt), req, req.max_tokens, "prompt")
        usage = req.include_usage
        return await respond(gen, False, req.stream, usage, prefix=prompt if req.echo else "")

    return app


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m veil.engines.transformers_engine",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="local model directory")
    p.add_argument("--socket", type=Path, required=True, help="Unix socket path to serve on")
    p.add_argument("--model-id", help="name under /v1/models (default: the directory name)")
    p.add_argument("--n-ctx", type=int, default=2048, help="context window (capped by the model)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--socket-mode", type=lambda s: int(s, 8), default=0o600)
    p.add_argument("--parent-pid", type=int, help="exit at once if our parent is not this pid")
    return p.parse_args(argv)


def _silence_libraries() -> None:
    """transformers and torch warnings carry no prompts today; keep it that way by not printing."""
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    """Load the model, then listen; the socket existing means the engine is ready."""

    args = _parse_args(argv)
    start_up(args.parent_pid)
    os.environ.update(OFFLINE_ENV)
    _silence_libraries()
    model_id = args.model_id or args.model.resolve().name
    try:
        backend = TransformersBackend(args.model, model_id, args.n_ctx, args.threads, args.device)
    except Exception as exc:  # no request yet: the text is about the operator's own files
        _log(f"cannot load model {args.model}: {type(exc).__name__}: {str(exc)[:500]}")
        sys.exit(1)
    serve(create_app(backend), args.socket, args.socket_mode,
          f"serving {model_id} (transformers, n_ctx={backend.n_ctx}, device={args.device}) "
          f"on {args.socket}")


if __name__ == "__main__":
    main()
