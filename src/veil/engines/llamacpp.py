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

from veil.engines import cli, tool_calls
from veil.engines import fim as fim_tokens
from veil.engines.base import (
    Backend,
    Chunk,
    Embeddings,
    FinishChunk,
    ModelThread,
    TextChunk,
    Usage,
)
from veil.engines.fim import FimRequest
from veil.engines.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    EngineAPIError,
    ToolPlan,
)
from veil.engines.openai_app import create_openai_app

_CONTEXT_RE = re.compile(r"Requested tokens \(\d+\) exceed context window of \d+")


class _Counter:
    """Usage of one llama-cpp-python call, counted at ``Llama.generate``.

    llama-cpp-python reports usage only for whole answers and never says how much of the prompt
    came from its prefix cache, so we count what it feeds to and gets from ``generate`` (prompt
    tokens as evaluated; sampled tokens except end-of-generation), and the prefix it will reuse.
    The sampled tokens are kept to tell which stop sequence ended the answer (llama-cpp-python
    cuts it out of the text and says only ``stop``). The instance attribute shadows the method
    only inside the ``with``, on the model thread.
    """

    def __init__(self, llm: Any, ends: frozenset[int] = frozenset()) -> None:
        self.llm = llm
        self.ends = ends  # more tokens that end an answer without being part of it (a FIM end of middle)
        self.prompt = self.cached = 0
        self.sampled: list[int] = []

    def __enter__(self) -> _Counter:
        from llama_cpp import Llama, llama_vocab_is_eog

        llm, generate, vocab = self.llm, self.llm.generate, self.llm._model.vocab

        def counting(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            tokens = list(tokens)
            self.prompt = len(tokens)
            prefix = Llama.longest_token_prefix(llm._input_ids.tolist(), tokens) if llm.n_tokens else 0
            self.cached = prefix if prefix < len(tokens) else max(len(tokens) - 1, 0)
            for token in generate(tokens, *args, **kwargs):
                if not llama_vocab_is_eog(vocab, token) and token not in self.ends:
                    self.sampled.append(token)
                yield token

        llm.generate = counting
        return self

    def __exit__(self, *exc: object) -> None:
        del self.llm.generate  # the class's method again

    def usage(self) -> Usage:
        return Usage(self.prompt, len(self.sampled), self.cached)

    def stop_sequence(self, stops: list[str]) -> str | None:
        """The stop sequence in the sampled text, the first in ``stops`` that llama-cpp-python
        would have cut at; None when none is there (the model's own end or a length limit)."""
        if not stops:
            return None
        text = self.llm.detokenize(self.sampled).decode("utf-8", errors="ignore")
        return next((s for s in stops if s in text), None)


class _StopAt:
    """A stopping criterion: the last token is one of ``ids`` (a FIM family's end of middle)."""

    def __init__(self, ids: frozenset[int]) -> None:
        self.ids = ids

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        return len(input_ids) > 0 and int(input_ids[-1]) in self.ids


class LlamaBackend(Backend):
    """One generation model, and lazily loaded scoring and embedding twins of the same file.

    What the model can do is read from the file once, at load: its chat template (and whether
    that template defines tool calling, and in which syntax), and its fill-in-the-middle tokens.
    Every chat prompt is rendered from that template here, the same way for answers and for
    token counts, with llama-cpp-python's Jinja formatter (a sandboxed Jinja environment).
    """

    def __init__(self, model_path: Path, model_id: str, n_ctx: int, threads: int) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        super().__init__(model_id)
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.threads = threads
        self.llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=threads, verbose=False)
        self._embedder: Any = None
        self._scorer: Any = None
        self.thread = ModelThread("llama")
        self.scope: str | None = None  # the cache scope (a tenant's salt) the contexts hold state for
        self.template: str | None = self.llm.metadata.get("tokenizer.chat_template")
        self.formatter: Any = None
        self.eos_text = ""
        if self.template:
            m = self.llm._model
            eos, bos = self.llm.token_eos(), self.llm.token_bos()
            self.eos_text = m.token_get_text(eos) if eos >= 0 else ""
            self.formatter = Jinja2ChatFormatter(
                template=self.template,
                eos_token=self.eos_text,
                bos_token=m.token_get_text(bos) if bos >= 0 else "",
                stop_token_ids=[eos] if eos >= 0 else None,
            )
        self.tool_syntax = tool_calls.syntax_of(self.template)
        self.fim = fim_tokens.detect(self.vocabulary(fim_tokens.CANDIDATE_TEXTS))

    # -- model capabilities ----------------------------------------------------------------------

    def vocabulary(self, texts: frozenset[str]) -> dict[str, int]:
        """Text -> id of the tokens of the model's vocabulary whose text is one of ``texts``."""
        from llama_cpp import llama_vocab_get_text

        vocab, found = self.llm._model.vocab, dict[str, int]()
        for i in range(self.llm.n_vocab()):
            text = llama_vocab_get_text(vocab, i).decode("utf-8", errors="replace")
            if text in texts:
                found.setdefault(text, i)
        return found

    @property
    def supports_fim(self) -> bool:
        """Whether the vocabulary has a family's fill-in-the-middle tokens (``suffix``, ``/infill``)."""
        return self.fim is not None

    def _text_tokens(self, text: str) -> list[int]:
        """Request text as tokens, special tokens *not* parsed: a prompt cannot smuggle them in."""
        return self.llm.tokenize(text.encode(), add_bos=False, special=False) if text else []

    def fim_prompt(self, request: FimRequest) -> list[int]:
        """The tokens the model receives for a fill-in-the-middle request (see ``fim.FimTokens``).

        Built here because llama-cpp-python 0.3.x hard-codes the FIM token ids to 0 when given
        ``suffix`` (a TODO in its source), which would silently produce garbage.
        """
        assert self.fim is not None
        bos = self.llm.token_bos()
        add_bos = self.llm._model.add_bos_token() and bos >= 0
        return self.fim.prompt(self._text_tokens, request, [bos] if add_bos else [])

    def chat_prompt(self, req: ChatCompletionRequest, plan: ToolPlan) -> tuple[list[int], list[str]]:
        """The prompt tokens of a chat request (model thread), and the template's stop texts.

        The template gets the tools unless the plan is ``none``; a template that defines tool
        calling also gets past calls and tool results in their structured form.
        """
        messages = [m.for_tools() if self.tool_syntax else m.plain() for m in req.messages]
        tools = plan.openai_tools() if plan.mode != "none" else None
        try:
            result = self.formatter(messages=messages, tools=tools)
        except Exception:  # template errors (e.g. roles it refuses) may quote the messages
            raise EngineAPIError(
                400, "the model's chat template refused these messages", "invalid_messages", "messages"
            ) from None
        tokens = self.llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
        return tokens, [s for s in (result.stop if isinstance(result.stop, list) else [result.stop]) if s]

    def scorer(self) -> Any:
        """A twin context with ``logits_all=True``, which llama-cpp-python needs for logprobs.

        Kept apart because keeping every position's logits costs n_ctx x vocabulary floats
        (about 200 MB for SmolLM2 at n_ctx 1024) and slows prompt evaluation; loaded on the
        first request that asks for logprobs. The weights are memory-mapped, so shared.
        """
        if self._scorer is None:
            from llama_cpp import Llama

            self._scorer = Llama(
                model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.threads, logits_all=True, verbose=False
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

    async def _answer(
        self,
        scope: str | None,
        scored: bool,
        call: Callable[[Any], Any],
        stream: bool,
        pieces: Callable[[dict[str, Any]], Iterator[Chunk]],
        stops: list[str],
        ends: frozenset[int] = frozenset(),
    ) -> AsyncGenerator[Chunk, None]:
        """On the model thread, in cache scope ``scope``: ``call(llm)`` on the generation context
        (or its scoring twin when ``scored``: logprobs need every position's logits). Each
        llama-cpp-python choice (whole, or one per streamed chunk) becomes chunks through
        ``pieces``, then the finish chunk with the counted usage and the stop sequence hit."""

        def produce(emit: Callable[[Any], None], cancelled: threading.Event) -> None:
            self.enter_scope(scope)
            llm = self.scorer() if scored else self.llm  # loaded here, never on the event loop
            with _Counter(llm, ends) as counter:
                if not stream:
                    emit(call(llm))
                else:
                    for item in call(llm):
                        if cancelled.is_set():
                            break
                        emit(item)
            emit((counter.usage(), counter.stop_sequence(stops)))

        finish = "stop"
        try:
            async with aclosing(self.thread.stream(produce)) as items:  # closing us stops the model
                async for item in items:
                    if isinstance(item, tuple):
                        usage, hit = item
                        yield FinishChunk(finish, usage, hit if finish == "stop" else None)
                        return
                    choice = item["choices"][0]
                    for chunk in pieces(choice):
                        yield chunk
                    finish = choice.get("finish_reason") or finish
        except ValueError as exc:
            raise _api_error(exc) from None

    # -- the OpenAI surface ---------------------------------------------------------------------

    def _plan(self, req: ChatCompletionRequest) -> tuple[ToolPlan, dict[str, Any] | None, str]:
        """The request's tool plan and the JSON schema (or JSON mode) its answer must follow."""
        if self.formatter is None:
            raise EngineAPIError(
                400, f"{self.model_id} has no chat template; use /v1/completions", "unsupported_chat", "messages"
            )
        plan = req.tool_plan()
        if plan.mode == "required" and len(plan.tools) == 1:
            plan = ToolPlan("named", plan.tools, False, plan.legacy)
        if plan.mode == "auto" and self.tool_syntax is None:
            raise EngineAPIError(
                400,
                f"{self.model_id}'s chat template defines no tool calling, so the model cannot decide "
                'whether to call a tool: set tool_choice to "required", a named function, or "none"',
                "unsupported_tools",
                "tool_choice",
            )
        if plan.mode == "named":
            schema = plan.tools[0].parameters or {"type": "object", "properties": {}}
            _check_schema(schema, "tools")
            return plan, schema, "tools"
        if plan.mode == "required":
            schema = tool_calls.required_schema(plan.tools, plan.parallel)
            _check_schema(schema, "tools")
            return plan, schema, "tools"
        response_format = req.llama_response_format()
        if response_format is None:
            return plan, None, ""
        json_schema: dict[str, Any] | None = response_format.get("schema")
        if json_schema is not None:
            _check_schema(json_schema, "response_format")
        return plan, json_schema, "json"

    async def chat(self, req: ChatCompletionRequest) -> AsyncGenerator[Chunk, None]:
        plan, schema, constraint = self._plan(req)
        top = req.top_logprobs or 0 if req.want_logprobs() else None
        stops = req.stops
        kwargs: dict[str, Any] = {
            "max_tokens": req.max_completion_tokens or req.max_tokens,
            **_sampling(req),
            **_logit_bias(req, self.llm.n_vocab()),
            "logprobs": max(top, 1) if top is not None else None,
        }

        def run(llm: Any) -> Any:
            tokens, template_stops = self.chat_prompt(req, plan)
            grammar = _grammar(schema) if constraint else None  # the end-of-turn token is end-of-generation
            return llm.create_completion(
                prompt=tokens, stream=req.stream, grammar=grammar, **{**kwargs, "stop": [*stops, *template_stops]}
            )

        def pieces(choice: dict[str, Any]) -> Iterator[Chunk]:
            logprobs = _chat_logprobs(choice.get("logprobs"), top) if top is not None else None
            if choice.get("text") or logprobs:
                yield TextChunk(choice.get("text") or "", logprobs)

        answer = self._answer(req.cache_salt, top is not None, run, req.stream, pieces, stops)
        if plan.mode == "named":
            answer = tool_calls.as_named_call(answer, plan.tools[0].name, plan.legacy)
        elif plan.mode == "required":
            answer = tool_calls.as_required_calls(answer, plan.names)
        elif plan.mode == "auto":
            assert self.tool_syntax is not None
            answer = tool_calls.with_tool_calls(answer, tool_calls.ToolCallStream(self.tool_syntax, plan.names, plan.parallel))
        async with aclosing(answer) as chunks:
            async for chunk in chunks:
                yield chunk

    async def count_tokens(self, req: ChatCompletionRequest) -> int:
        plan, _, _ = self._plan(req)
        tokens, _ = await self.thread.call(lambda: self.chat_prompt(req, plan))
        return len(tokens)

    async def complete(self, req: CompletionRequest, fim: FimRequest | None = None) -> AsyncGenerator[Chunk, None]:
        if fim is None and req.suffix is not None:
            fim = FimRequest(req.single_prompt(), req.suffix)
        if fim is not None and self.fim is None:
            raise fim_tokens.unsupported(self.model_id)
        if fim is not None and req.echo:
            raise EngineAPIError(400, "echo cannot be combined with suffix", "invalid_request", "echo")
        prompt = req.single_prompt() if fim is None else ""
        kwargs: dict[str, Any] = {
            "max_tokens": req.max_tokens,
            "echo": req.echo,
            **_sampling(req),
            **_logit_bias(req, self.llm.n_vocab()),
        }
        if req.logprobs is not None:
            kwargs["logprobs"] = req.logprobs

        def run(llm: Any) -> Any:
            if fim is None:
                return llm.create_completion(prompt=prompt, stream=req.stream, **kwargs)
            assert self.fim is not None  # our FIM prompt, stopped at the family's end of middle
            from llama_cpp import StoppingCriteriaList

            return llm.create_completion(
                prompt=self.fim_prompt(fim),
                stream=req.stream,
                stopping_criteria=StoppingCriteriaList([_StopAt(self.fim.ends)]),
                **kwargs,
            )

        def pieces(choice: dict[str, Any]) -> Iterator[Chunk]:
            logprobs = _tidy_completion_logprobs(choice.get("logprobs")) if req.logprobs is not None else None
            if choice.get("text") or logprobs:
                yield TextChunk(choice.get("text") or "", logprobs)

        ends = self.fim.ends if fim is not None and self.fim is not None else frozenset()
        answer = self._answer(req.cache_salt, req.logprobs is not None, run, req.stream, pieces, req.stops, ends)
        async with aclosing(answer) as chunks:
            async for chunk in chunks:
                yield chunk

    async def embed(self, req: EmbeddingRequest) -> Embeddings:
        def embed() -> Any:
            return self.embedder().create_embedding(req.input, model=self.model_id)

        result = await self.thread.call(embed)
        return Embeddings([d["embedding"] for d in result["data"]], int(result["usage"]["prompt_tokens"]))


def _grammar(schema: dict[str, Any] | None) -> Any:
    """A sampling grammar for ``schema`` (None: any JSON object). Never verbose: it would print
    the schema, which can be as private as the prompt."""
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if schema is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)


def _chat_logprobs(lp: Any, top: int) -> Any:
    """A completion's logprobs (parallel lists) in the chat form, tidied (see _tidy_chat_logprobs)."""
    if not isinstance(lp, dict) or not isinstance(lp.get("tokens"), list):
        return None
    content = [
        {
            "token": token,
            "logprob": logprob,
            "bytes": None,
            "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in (tops or {}).items()],
        }
        for token, logprob, tops in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])
    ]
    return _tidy_chat_logprobs({"content": content, "refusal": None}, top)


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
            400,
            f"this JSON schema cannot be enforced by a llama.cpp grammar ({type(exc).__name__})",
            "unsupported_schema",
            param,
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
            {"token": t["token"], "logprob": _finite(t["logprob"]), "bytes": list(t["token"].encode())} for t in tops[:top]
        ]
    return lp


def _tidy_completion_logprobs(lp: Any) -> Any:
    if not isinstance(lp, dict):
        return lp
    if isinstance(lp.get("token_logprobs"), list):
        lp["token_logprobs"] = [None if v is None else _finite(v) for v in lp["token_logprobs"]]
    if isinstance(lp.get("top_logprobs"), list):
        lp["top_logprobs"] = [None if d is None else {k: _finite(v) for k, v in d.items()} for d in lp["top_logprobs"]]
    return lp


def _sampling(req: Any) -> dict[str, Any]:
    return {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": 40 if req.top_k is None else req.top_k,  # llama-cpp-python's default
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
                400,
                f"logit_bias takes token ids below {n_vocab} mapped to values in [-100, 100]",
                "invalid_request",
                "logit_bias",
            )
        bias[int(key)] = float(value)
    return {"logit_bias": bias}


def _load(args: argparse.Namespace) -> tuple[Any, str]:
    from veil.engines.models import DEFAULT_MODEL_ID, default_model_path

    model_path = Path(args.model) if args.model else default_model_path()
    model_id = args.model_id or (DEFAULT_MODEL_ID if args.model is None else model_path.stem)
    backend = LlamaBackend(model_path, model_id, args.n_ctx, args.threads)
    return (create_openai_app(backend), f"serving {model_id} on {args.socket} (n_ctx={args.n_ctx}, threads={args.threads})")


def main(argv: list[str] | None = None) -> None:
    """Load the model, then listen; the socket existing means the engine is ready."""
    p = cli.parser("veil.engines.llamacpp", __doc__, ["n_ctx", "threads"])
    cli.run(p.parse_args(argv), _load)


if __name__ == "__main__":
    main()
