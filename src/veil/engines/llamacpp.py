"""The embedded CPU engine: llama.cpp (llama-cpp-python) serving the OpenAI API on a Unix socket.

Run as ``python -m veil.engines.llamacpp --socket PATH [--model PATH] [--n-ctx 2048] [--threads N]``.

This module holds only the model code: the OpenAI app, the model thread and the command line are
the engines' shared base (``base``, ``openai_app``, ``cli``). Why our own small app rather than
``llama_cpp.server``: see docs/engines.md. In short we need (1) no prompt or output ever in logs,
including exception text, (2) a socket that is owner-only from the moment it exists, (3) chat and
embeddings from one process without model swapping, (4) refusal (not silent misbehaviour) where
the model cannot do what was asked, e.g. ``suffix`` on a model without fill-in-the-middle tokens,
and (5) a prefix cache scoped to one caller: llama.cpp reuses the previous request's evaluated
prefix, which makes a request faster when it starts like the last one; the gateway gives each
tenant its own ``cache_salt`` and the engine forgets every cached prefix when the salt changes,
so one tenant cannot time (or read from ``usage.prompt_tokens_details.cached_tokens``) whether
another's prompt began the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
from contextlib import aclosing
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

from veil.engines import cli
from veil.engines.base import (
    Backend,
    Chunk,
    Embeddings,
    FinishChunk,
    ModelThread,
    TextChunk,
    ToolCallChunk,
    Usage,
)
from veil.engines.openai_api import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, EngineAPIError
from veil.engines.openai_app import create_openai_app

_CONTEXT_RE = re.compile(r"Requested tokens \(\d+\) exceed context window of \d+")


class _Counter:
    """Usage of one llama-cpp-python call, counted at ``Llama.generate``.

    llama-cpp-python reports usage only for whole answers and never says how much of the prompt
    came from its prefix cache, so we count what it feeds to and gets from ``generate`` (prompt
    tokens as evaluated; sampled tokens except end-of-generation), and the prefix it will reuse.
    The instance attribute shadows the method only inside the ``with``, on the model thread.
    """

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.prompt = self.completion = self.cached = 0

    def __enter__(self) -> _Counter:
        from llama_cpp import Llama, llama_vocab_is_eog

        llm, generate, vocab = self.llm, self.llm.generate, self.llm._model.vocab

        def counting(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            tokens = list(tokens)
            self.prompt = len(tokens)
            prefix = Llama.longest_token_prefix(llm._input_ids.tolist(), tokens) if llm.n_tokens else 0
            self.cached = prefix if prefix < len(tokens) else max(len(tokens) - 1, 0)
            for token in generate(tokens, *args, **kwargs):
                if not llama_vocab_is_eog(vocab, token):
                    self.completion += 1
                yield token

        llm.generate = counting
        return self

    def __exit__(self, *exc: object) -> None:
        del self.llm.generate  # the class's method again

    def usage(self) -> Usage:
        return Usage(self.prompt, self.completion, self.cached)


class LlamaBackend(Backend):
    """One generation model, and lazily loaded scoring and embedding twins of the same file."""

    def __init__(self, model_path: Path, model_id: str, n_ctx: int, threads: int) -> None:
        from llama_cpp import Llama

        super().__init__(model_id)
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.threads = threads
        self.llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=threads, verbose=False)
        self._embedder: Any = None
        self._scorer: Any = None
        self.thread = ModelThread("llama")
        self.scope: str | None = None  # the cache scope (a tenant's salt) the contexts hold state for

    # -- model capabilities ----------------------------------------------------------------------

    @property
    def supports_fim(self) -> bool:
        """Whether the vocabulary has fill-in-the-middle tokens, which ``suffix`` requires."""
        m = self.llm._model  # llama-cpp-python exposes the FIM ids only on the internal model
        return bool(min(m.token_prefix(), m.token_middle(), m.token_suffix()) >= 0)

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

    def scorer(self) -> Any:
        """A twin context with ``logits_all=True``, which llama-cpp-python needs for logprobs.

        Kept apart because keeping every position's logits costs n_ctx x vocabulary floats
        (about 200 MB for SmolLM2 at n_ctx 1024) and slows prompt evaluation; loaded on the
        first request that asks for logprobs. The weights are memory-mapped, so shared.
        """
        if self._scorer is None:
            from llama_cpp import Llama

            self._scorer = Llama(model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.threads,
                                 logits_all=True, verbose=False)
        return self._scorer

    def embedder(self) -> Any:
        """A second context with embeddings on (mean pooling); loaded on first use, same file."""
        if self._embedder is None:
            from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

            self._embedder = Llama(model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.threads,
                                   embedding=True, pooling_type=LLAMA_POOLING_TYPE_MEAN, verbose=False)
        return self._embedder

    def enter_scope(self, scope: str | None) -> None:
        """Before a request of cache scope ``scope`` (model thread only): if the contexts hold
        another scope's state, forget it, so no prefix evaluated for one caller serves another."""
        if scope == self.scope:
            return
        for llm in (self.llm, self._scorer, self._embedder):
            if llm is not None:
                llm.reset()  # n_tokens = 0: generate() finds no prefix to reuse
                llm._ctx.kv_cache_clear()  # and the KV memory itself is wiped
        self.scope = scope

    # -- the model thread -----------------------------------------------------------------------

    async def _answer(self, scope: str | None, scored: bool, call: Callable[[Any], Any], stream: bool,
                      pieces: Callable[[dict[str, Any]], Iterator[Chunk]]) -> AsyncGenerator[Chunk, None]:
        """On the model thread, in cache scope ``scope``: ``call(llm)`` on the generation context
        (or its scoring twin when ``scored``: logprobs need every position's logits). Each
        llama-cpp-python choice (whole, or one per streamed chunk) becomes chunks through
        ``pieces``, then the finish chunk with the counted usage."""

        def produce(emit: Callable[[Any], None], cancelled: threading.Event) -> None:
            self.enter_scope(scope)
            llm = self.scorer() if scored else self.llm  # loaded here, never on the event loop
            with _Counter(llm) as counter:
                if not stream:
                    emit(call(llm))
                else:
                    for item in call(llm):
                        if cancelled.is_set():
                            break
                        emit(item)
            emit(counter.usage())

        finish = "stop"
        try:
            async with aclosing(self.thread.stream(produce)) as items:  # closing us stops the model
                async for item in items:
                    if isinstance(item, Usage):
                        yield FinishChunk(finish, item)
                        return
                    choice = item["choices"][0]
                    for chunk in pieces(choice):
                        yield chunk
                    finish = choice.get("finish_reason") or finish
        except ValueError as exc:
            raise _api_error(exc) from None

    # -- the OpenAI surface ---------------------------------------------------------------------

    async def chat(self, req: ChatCompletionRequest) -> AsyncGenerator[Chunk, None]:
        kwargs = self._chat_kwargs(req)
        top = kwargs.pop("_top", None)

        def pieces(choice: dict[str, Any]) -> Iterator[Chunk]:
            msg = (choice.get("delta") if req.stream else choice.get("message")) or {}
            logprobs = _tidy_chat_logprobs(choice.get("logprobs"), top) if top is not None else None
            if msg.get("content") or logprobs:
                yield TextChunk(msg.get("content") or "", logprobs)
            if msg.get("tool_calls"):
                yield ToolCallChunk(msg["tool_calls"], msg.get("function_call"))

        answer = self._answer(req.cache_salt, bool(kwargs.get("logprobs")),
                              lambda llm: llm.create_chat_completion(stream=req.stream, **kwargs), req.stream, pieces)
        async with aclosing(answer) as chunks:
            async for chunk in chunks:
                yield chunk

    def _chat_kwargs(self, req: ChatCompletionRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "messages": [m.plain() for m in req.messages],
            "max_tokens": req.max_completion_tokens or req.max_tokens,
            **_sampling(req),
            **_logit_bias(req, self.llm.n_vocab()),
        }
        if req.want_logprobs():
            top = req.top_logprobs or 0
            kwargs.update(logprobs=True, top_logprobs=max(top, 1), _top=top)
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
        return kwargs

    async def complete(self, req: CompletionRequest) -> AsyncGenerator[Chunk, None]:
        if req.suffix is not None and not self.supports_fim:
            raise EngineAPIError(400, f"{self.model_id} has no fill-in-the-middle tokens; suffix is unsupported",
                                 "unsupported_suffix", "suffix")
        if req.suffix is not None and req.echo:
            raise EngineAPIError(400, "echo cannot be combined with suffix", "invalid_request", "echo")
        prompt, suffix = req.single_prompt(), req.suffix
        kwargs: dict[str, Any] = {
            "max_tokens": req.max_tokens, "echo": req.echo,
            **_sampling(req), **_logit_bias(req, self.llm.n_vocab()),
        }
        if req.logprobs is not None:
            kwargs["logprobs"] = req.logprobs

        def run(llm: Any) -> Any:
            text = prompt if suffix is None else self.fim_tokens(prompt, suffix)  # our FIM prompt
            return llm.create_completion(prompt=text, stream=req.stream, **kwargs)

        def pieces(choice: dict[str, Any]) -> Iterator[Chunk]:
            logprobs = _tidy_completion_logprobs(choice.get("logprobs")) if req.logprobs is not None else None
            if choice.get("text") or logprobs:
                yield TextChunk(choice.get("text") or "", logprobs)

        async with aclosing(self._answer(req.cache_salt, req.logprobs is not None, run, req.stream, pieces)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def embed(self, req: EmbeddingRequest) -> Embeddings:
        def embed() -> Any:
            return self.embedder().create_embedding(req.input, model=self.model_id)

        result = await self.thread.call(embed)
        return Embeddings([d["embedding"] for d in result["data"]], int(result["usage"]["prompt_tokens"]))


def _api_error(exc: Exception) -> EngineAPIError:
    """Map a model-call failure to an OpenAI error without echoing request content."""
    if isinstance(exc, EngineAPIError):
        return exc
    if isinstance(exc, ValueError) and (m := _CONTEXT_RE.search(str(exc))):
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


def _load(args: argparse.Namespace) -> tuple[Any, str]:
    from veil.engines.models import DEFAULT_MODEL_ID, default_model_path

    model_path = Path(args.model) if args.model else default_model_path()
    model_id = args.model_id or (DEFAULT_MODEL_ID if args.model is None else model_path.stem)
    backend = LlamaBackend(model_path, model_id, args.n_ctx, args.threads)
    return (create_openai_app(backend),
            f"serving {model_id} on {args.socket} (n_ctx={args.n_ctx}, threads={args.threads})")


def main(argv: list[str] | None = None) -> None:
    """Load the model, then listen; the socket existing means the engine is ready."""
    p = cli.parser("veil.engines.llamacpp", __doc__, ["n_ctx", "threads"])
    cli.run(p.parse_args(argv), _load)


if __name__ == "__main__":
    main()
