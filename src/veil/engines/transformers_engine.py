"""Hugging Face transformers engine: any local causal LM, serving the OpenAI API on a Unix socket.

Run as ``python -m veil.engines.transformers_engine --model DIR --socket PATH [--n-ctx N]``.

Serves ``/v1/chat/completions`` and ``/v1/completions`` (stream or not, SSE framed like OpenAI),
fill-in-the-middle for code models (``suffix``, ``/infill``), tool calls for models whose chat
template defines them, and through the shared app Anthropic's Messages and OpenAI's Responses APIs,
``/v1/models`` and ``/health``, with the same request models, error shape and log hygiene as the
llama.cpp engine. The model directory is loaded offline only (no hub access, no remote code: the
model's own Python would be untrusted code), and nothing a request carries is ever logged.
"""

from __future__ import annotations

import argparse
import os
import threading
import warnings
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.engines import cli, tool_calls
from veil.engines import fim as fim_tokens
from veil.engines.base import Backend, Chunk, FinishChunk, ModelThread, TextChunk, Usage
from veil.engines.fim import FimRequest
from veil.engines.openai_api import ChatCompletionRequest, CompletionRequest, EngineAPIError, ToolPlan
from veil.engines.openai_app import create_openai_app

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
    top_k: int | None
    seed: int | None
    stops: list[str]
    ends: frozenset[int]  # token ids that end the answer: the model's end of sequence, a FIM end

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
            self.on_finalized_text(text[self.print_len :])
            self.print_len = len(text)
            if text.endswith("\n"):  # start afresh so decoding stays linear in the output
                self.token_cache, self.print_len = [], 0

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                put(("text", text))

    return _LoopStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class TransformersBackend(Backend):
    """One causal LM and its tokenizer behind a single generation thread (requests queue up).

    It keeps no state between requests (``generate`` starts from the prompt every time), so a
    request's ``cache_salt`` has nothing to scope here.
    """

    def __init__(self, model_dir: Path, model_id: str, n_ctx: int, threads: int, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(model_id)
        torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=False, dtype="auto"
        ).to(device)
        self.model.eval()
        self.device = device
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.n_ctx = min(n_ctx, limit) if isinstance(limit, int) and limit > 0 else n_ctx
        self.eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=None)
        self.thread = ModelThread("generate")
        self.template: str | None = getattr(self.tokenizer, "chat_template", None) or None
        self.tool_syntax = tool_calls.syntax_of(self.template)
        self.fim = fim_tokens.hf_tokens(self.tokenizer)

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return set(ids if isinstance(ids, list) else [ids] if ids is not None else [])

    def plan(
        self,
        input_ids: Any,
        req: ChatCompletionRequest | CompletionRequest,
        max_tokens: int | None,
        param: str,
        ends: frozenset[int] = frozenset(),
    ) -> Generation:
        """Check the request fits the context window (OpenAI's 400 if not) and fix max tokens."""
        prompt = int(input_ids.shape[1])
        room = self.n_ctx - prompt
        if room < 1 or (max_tokens is not None and max_tokens > room):
            raise EngineAPIError(
                400,
                f"this model's context window is {self.n_ctx} tokens; the request needs "
                f"{prompt} for the prompt plus {max_tokens or 1} to generate",
                "context_length_exceeded",
                param,
            )
        return Generation(
            input_ids,
            max_tokens or room,
            req.temperature,
            req.top_p,
            req.top_k,
            req.seed,
            req.stops,
            frozenset(self.eos_ids) | ends,
        )

    def _tool_plan(self, req: ChatCompletionRequest) -> ToolPlan:
        """The tools this engine can honour: the model's own choice (``auto``) or none.

        transformers has no sampling grammar, so nothing can force a call: a named function or
        ``required`` is refused rather than answered with whatever the model writes.
        """
        if not self.template:
            raise EngineAPIError(
                400, f"{self.model_id} has no chat template; use /v1/completions", "unsupported_chat", "messages"
            )
        plan = req.tool_plan()
        if plan.mode in ("named", "required"):
            raise EngineAPIError(
                400,
                "the transformers engine cannot constrain sampling, so it cannot force a tool call: "
                'use tool_choice "auto" (a model whose chat template defines tools) or "none"',
                "unsupported_tools",
                "tool_choice",
            )
        if plan.mode == "auto" and self.tool_syntax is None:
            raise EngineAPIError(
                400,
                f"{self.model_id}'s chat template defines no tool calling, so the model cannot call tools: "
                'set tool_choice to "none"',
                "unsupported_tools",
                "tool_choice",
            )
        return plan

    def chat_ids(self, req: ChatCompletionRequest, plan: ToolPlan) -> Any:
        """The prompt token ids of a chat request, rendered by the model's own template."""
        messages = [m.for_tools() if self.tool_syntax else m.plain() for m in req.messages]
        tools = plan.openai_tools() if plan.mode == "auto" else None
        try:
            text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        except Exception:  # template errors (e.g. roles it refuses) may quote the messages
            raise EngineAPIError(
                400, "the model's chat template refused these messages", "invalid_messages", "messages"
            ) from None
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    async def chat(self, req: ChatCompletionRequest) -> AsyncGenerator[Chunk, None]:
        plan = self._tool_plan(req)
        gen = self.plan(self.chat_ids(req, plan), req, req.max_completion_tokens or req.max_tokens, "messages")
        answer = self._generation(gen)
        if plan.mode == "auto":
            assert self.tool_syntax is not None
            answer = tool_calls.with_tool_calls(answer, tool_calls.ToolCallStream(self.tool_syntax, plan.names, plan.parallel))
        async with aclosing(answer) as chunks:  # closing us stops generating
            async for chunk in chunks:
                yield chunk

    async def count_tokens(self, req: ChatCompletionRequest) -> int:
        return int(self.chat_ids(req, self._tool_plan(req)).shape[1])

    def fim_prompt(self, request: FimRequest) -> list[int]:
        """The token ids the model receives for a fill-in-the-middle request (``fim.FimTokens``)."""
        assert self.fim is not None
        return fim_tokens.hf_prompt(self.tokenizer, self.fim, request)

    async def complete(self, req: CompletionRequest, fim: FimRequest | None = None) -> AsyncGenerator[Chunk, None]:
        if fim is None and req.suffix is not None:
            fim = FimRequest(req.single_prompt(), req.suffix)
        if fim is not None:
            if self.fim is None:
                raise fim_tokens.unsupported(self.model_id)
            if req.echo:
                raise EngineAPIError(400, "echo cannot be combined with suffix", "invalid_request", "echo")
            ids = self.torch.tensor([self.fim_prompt(fim)], dtype=self.torch.long)
            gen = self.plan(ids, req, req.max_tokens, "prompt", self.fim.ends)
        else:
            prompt = req.single_prompt()
            gen = self.plan(self.tokenizer(prompt, return_tensors="pt")["input_ids"], req, req.max_tokens, "prompt")
            if req.echo:
                yield TextChunk(prompt)
        async with aclosing(self._generation(gen)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _generate(self, gen: Generation, emit: Callable[[Any], None], cancelled: threading.Event) -> None:
        """Runs on the generation thread; emits ("text", str) items then ("end", finish, n)."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Cancelled(StoppingCriteria):  # type: ignore[misc]  # transformers is untyped here
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancelled.is_set()

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
                top_k=gen.top_k or None if sample else None,
                eos_token_id=sorted(gen.ends) or None,
                pad_token_id=self.pad_id,
                streamer=_make_streamer(self.tokenizer, emit),
                stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            )
        new = out[0, gen.prompt_tokens :].tolist()
        finish = "stop" if new and new[-1] in gen.ends else "length"
        emit(("end", finish, len(new) - (1 if finish == "stop" else 0)))

    async def _generation(self, gen: Generation) -> AsyncGenerator[Chunk, None]:
        """Text chunks then the finish chunk, with stop sequences cut (OpenAI leaves them out).

        Text that might be the start of a stop sequence is held back until it is known not to be
        one; once a stop sequence appears, generation is cancelled and its token count kept.
        """
        cancel = threading.Event()
        held, stopped = "", None
        keep = max((len(s) for s in gen.stops), default=1) - 1

        def produce(emit: Callable[[Any], None], cancelled: threading.Event) -> None:
            self._generate(gen, emit, cancelled)

        async with aclosing(self.thread.stream(produce, cancel)) as items:
            async for item in items:
                if item[0] == "text":
                    if stopped:  # tokens produced before the thread saw the cancel flag
                        continue
                    held += item[1]
                    hits = [(i, s) for s in gen.stops if (i := held.find(s)) >= 0]
                    if hits:
                        at, stopped = min(hits)
                        cancel.set()
                        if held[:at]:
                            yield TextChunk(held[:at])
                        held = ""
                    elif len(held) > keep:
                        yield TextChunk(held[: len(held) - keep])
                        held = held[len(held) - keep :]
                else:  # ("end", finish, completion_tokens)
                    if held:
                        yield TextChunk(held)
                    yield FinishChunk("stop" if stopped else item[1], Usage(gen.prompt_tokens, item[2]), stopped)


def _silence_libraries() -> None:
    """transformers and torch warnings carry no prompts today; keep it that way by not printing."""
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load(args: argparse.Namespace) -> tuple[Any, str]:
    os.environ.update(OFFLINE_ENV)
    _silence_libraries()
    model_id = args.model_id or Path(args.model).resolve().name
    backend = TransformersBackend(Path(args.model), model_id, args.n_ctx, args.threads, args.device)
    return (
        create_openai_app(backend),
        f"serving {model_id} (transformers, n_ctx={backend.n_ctx}, device={args.device}) on {args.socket}",
    )


def main(argv: list[str] | None = None) -> None:
    """Load the model, then listen; the socket existing means the engine is ready."""
    p = cli.parser("veil.engines.transformers_engine", __doc__, ["n_ctx", "threads", "device"], model_required=True)
    cli.run(p.parse_args(argv), _load)


if __name__ == "__main__":
    main()
