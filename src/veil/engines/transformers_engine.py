"""Hugging Face transformers engine: any local causal LM, serving the OpenAI API on a Unix socket.

Run as ``python -m veil.engines.transformers_engine --model DIR --socket PATH [--n-ctx N]``.

Serves ``/v1/chat/completions`` and ``/v1/completions`` (stream or not, SSE framed like OpenAI),
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

from veil.engines import cli
from veil.engines.base import Backend, Chunk, FinishChunk, ModelThread, TextChunk, Usage
from veil.engines.openai_api import ChatCompletionRequest, CompletionRequest, EngineAPIError
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
    seed: int | None
    stops: list[str]

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


class TransformersBackend(Backend):
    """One causal LM and its tokenizer behind a single generation thread (requests queue up).

    It keeps no state between requests (``generate`` starts from the prompt every time), so a
    request's ``cache_salt`` has nothing to scope here.
    """

    def __init__(self, model_dir: Path, model_id: str, n_ctx: int, threads: int,
                 device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(model_id)
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
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.n_ctx = min(n_ctx, limit) if isinstance(limit, int) and limit > 0 else n_ctx
        self.eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=None)
        self.thread = ModelThread("generate")

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return set(ids if isinstance(ids, list) else [ids] if ids is not None else [])

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

    async def chat(self, req: ChatCompletionRequest) -> AsyncGenerator[Chunk, None]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineAPIError(400, f"{self.model_id} has no chat template; use /v1/completions",
                                 "unsupported_chat", "messages")
        messages = [m.plain() for m in req.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # template errors (e.g. roles it refuses) may quote the messages
            raise EngineAPIError(400, "the model's chat template refused these messages",
                                 "invalid_messages", "messages") from None
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        gen = self.plan(ids, req, req.max_completion_tokens or req.max_tokens, "messages")
        async with aclosing(self._generation(gen)) as chunks:  # closing us stops generating
            async for chunk in chunks:
                yield chunk

    async def complete(self, req: CompletionRequest) -> AsyncGenerator[Chunk, None]:
        if req.suffix is not None:
            raise EngineAPIError(400, "this engine has no fill-in-the-middle support; suffix is unsupported",
                                 "unsupported_suffix", "suffix")
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
                top_k=None,
                pad_token_id=self.pad_id,
                streamer=_make_streamer(self.tokenizer, emit),
                stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            )
        new = out[0, gen.prompt_tokens:].tolist()
        finish = "stop" if new and new[-1] in self.eos_ids else "length"
        emit(("end", finish, len(new) - (1 if finish == "stop" else 0)))

    async def _generation(self, gen: Generation) -> AsyncGenerator[Chunk, None]:
        """Text chunks then the finish chunk, with stop sequences cut (OpenAI leaves them out).

        Text that might be the start of a stop sequence is held back until it is known not to be
        one; once a stop sequence appears, generation is cancelled and its token count kept.
        """
        cancel = threading.Event()
        held, stopped = "", False
        keep = max((len(s) for s in gen.stops), default=1) - 1

        def produce(emit: Callable[[Any], None], cancelled: threading.Event) -> None:
            self._generate(gen, emit, cancelled)

        async with aclosing(self.thread.stream(produce, cancel)) as items:
            async for item in items:
                if item[0] == "text":
                    if stopped:  # tokens produced before the thread saw the cancel flag
                        continue
                    held += item[1]
                    hits = [i for s in gen.stops if (i := held.find(s)) >= 0]
                    if hits:
                        stopped = True
                        cancel.set()
                        if held[: min(hits)]:
                            yield TextChunk(held[: min(hits)])
                        held = ""
                    elif len(held) > keep:
                        yield TextChunk(held[: len(held) - keep])
                        held = held[len(held) - keep:]
                else:  # ("end", finish, completion_tokens)
                    if held:
                        yield TextChunk(held)
                    yield FinishChunk("stop" if stopped else item[1], Usage(gen.prompt_tokens, item[2]))


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
    return (create_openai_app(backend),
            f"serving {model_id} (transformers, n_ctx={backend.n_ctx}, device={args.device}) on {args.socket}")


def main(argv: list[str] | None = None) -> None:
    """Load the model, then listen; the socket existing means the engine is ready."""
    p = cli.parser("veil.engines.transformers_engine", __doc__, ["n_ctx", "threads", "device"], model_required=True)
    cli.run(p.parse_args(argv), _load)


if __name__ == "__main__":
    main()
