"""Tool calling for models whose chat template defines it: which syntax, and parsing it out.

A model trained for tools writes its calls in a syntax of its own, and its chat template both
shows it the tools and replays past calls in that syntax. Whether a model can call tools is read
from that template (it must use the ``tools`` variable) and the syntax from the markers it
renders, never from the model's name. Three syntaxes cover the open models people deploy:

* ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` per call (Qwen2.5,
  Qwen3, Hermes 2/3, SmolLM3 and most fine-tunes of them);
* ``mistral``: ``[TOOL_CALLS]`` then a JSON list of calls, or ``name[ARGS]{...}`` (newer tokenizers);
* ``llama3_json``: the whole answer is ``{"name": ..., "parameters": {...}}`` (``;``-separated for
  several), optionally after ``<|python_tag|>`` (Llama 3.1-3.3).

:class:`ToolCallStream` turns a model's streamed text into text chunks and OpenAI ``tool_calls``
deltas as the text arrives, holding back only what might be the start of a call. A call naming a
function the request did not offer, or whose arguments are not a JSON object, stays text: an agent
is never handed a call to something it did not offer. These names are also vLLM's
``--tool-call-parser`` names, so the vLLM engine enables the same syntax.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from veil.engines.base import Chunk, FinishChunk, TextChunk, ToolCallChunk


@dataclass(frozen=True)
class ToolSyntax:
    """How one family writes calls: ``opens`` starts a call, ``closes`` ends one (None: the rest)."""

    name: str
    opens: str
    closes: str | None
    template_markers: tuple[str, ...]


HERMES = ToolSyntax("hermes", "<tool_call>", "</tool_call>", ("<tool_call>",))
MISTRAL = ToolSyntax("mistral", "[TOOL_CALLS]", None, ("[TOOL_CALLS]",))
LLAMA3_JSON = ToolSyntax("llama3_json", "<|python_tag|>", None, ("<|python_tag|>", '{"name": function name, "parameters"'))
SYNTAXES = (HERMES, MISTRAL, LLAMA3_JSON)


def template_uses_tools(template: str | None) -> bool:
    """Whether a Jinja chat template reads the ``tools`` variable (parsed, not grepped)."""
    if not template:
        return False
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        names = meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse(template))
    except Exception:  # a template Jinja cannot parse defines nothing we could use
        return False
    return "tools" in names


def syntax_of(template: str | None) -> ToolSyntax | None:
    """The tool-call syntax a chat template defines, or None when it defines no tool calling."""
    if not template_uses_tools(template):
        return None
    assert template is not None
    return next((s for s in SYNTAXES if any(m in template for m in s.template_markers)), None)


def merge_deltas(deltas: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whole ``tool_calls`` entries from streamed deltas (merged by ``index``, arguments joined)."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        call = calls.setdefault(
            int(delta.get("index", len(calls))), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        call["id"] = delta.get("id") or call["id"]
        function = delta.get("function") or {}
        call["function"]["name"] = function.get("name") or call["function"]["name"]
        call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def call_entry(index: int, name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    """One whole OpenAI ``tool_calls`` entry (with its stream ``index``)."""
    return {
        "index": index,
        "id": call_id or new_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _as_call(obj: Any, offered: frozenset[str]) -> tuple[str, str] | None:
    """(name, arguments JSON) of one decoded call object, or None when it is not a valid call."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or obj["name"] not in offered:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)


def _json_values(text: str) -> list[Any] | None:
    """Every JSON value in ``text``, separated by whitespace, ``;`` or ``,``; None if any is not JSON."""
    decoder, values, i = json.JSONDecoder(), list[Any](), 0
    while True:
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i == len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        values.append(value)


def parse_calls(syntax: ToolSyntax, body: str, offered: frozenset[str]) -> list[tuple[str, str]] | None:
    """The calls in one call body (what follows ``opens``), or None when it is not all calls."""
    if syntax is MISTRAL and not body.lstrip().startswith("["):
        # Newer Mistral tokenizers: name[ARGS]{...}, repeated with [TOOL_CALLS] between calls.
        calls = []
        for part in filter(str.strip, body.split(MISTRAL.opens)):
            name, sep, args = part.partition("[ARGS]")
            call = _as_call({"name": name.strip(), "arguments": args.strip()}, offered) if sep else None
            if call is None:
                return None
            calls.append(call)
        return calls or None
    values = _json_values(body)
    if not values:
        return None
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    calls = [c for v in flat if (c := _as_call(v, offered)) is not None]
    return calls if len(calls) == len(flat) else None


def _partial_marker(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that could be the start of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolCallStream:
    """Splits a model's text into text chunks and tool-call deltas as it streams.

    ``feed`` takes each new piece of text and returns the chunks that are now certain; ``close``
    returns the rest. Each call goes out as two ``tool_calls`` deltas (id and name, then the whole
    arguments) once it is complete, in the order the model wrote them; ``parallel=False`` keeps
    only the first call. A ``llama3_json`` answer that begins with ``{`` is held until it ends,
    then becomes calls if it is all calls and text otherwise.
    """

    def __init__(self, syntax: ToolSyntax, offered: Iterable[str], parallel: bool = True) -> None:
        self.syntax = syntax
        self.offered = frozenset(offered)
        self.parallel = parallel
        self.calls = 0
        self._text = ""  # text not yet known to be plain text
        self._in_call = False
        self._started = False  # anything but whitespace seen yet (llama3_json: a bare '{' opens)

    def _emit_calls(self, calls: list[tuple[str, str]]) -> list[Chunk]:
        out: list[Chunk] = []
        for name, args in calls:
            if self.calls and not self.parallel:
                break
            entry = call_entry(self.calls, name, "")
            out.append(ToolCallChunk([entry]))
            out.append(ToolCallChunk([{"index": self.calls, "function": {"arguments": args}}]))
            self.calls += 1
        return out

    def feed(self, piece: str) -> list[Chunk]:
        self._text += piece
        out: list[Chunk] = []
        while self._text:
            if self._in_call:
                if self.syntax.closes is None:
                    return out  # the rest of the answer is calls: parsed at close()
                end = self._text.find(self.syntax.closes)
                if end < 0:
                    return out
                body, self._text = self._text[:end], self._text[end + len(self.syntax.closes) :]
                self._in_call = False
                calls = parse_calls(self.syntax, body, self.offered)
                out += self._emit_calls(calls) if calls else [TextChunk(self.syntax.opens + body + self.syntax.closes)]
                continue
            if not self._started:
                stripped = self._text.lstrip()
                if not stripped:
                    return out
                self._started = True
                if self.syntax is LLAMA3_JSON and stripped.startswith("{"):
                    self._in_call = True  # a bare JSON answer: calls, or text if it is not
                    self._text = stripped
                    continue
            start = self._text.find(self.syntax.opens)
            if start >= 0:
                if self._text[:start].strip():  # whitespace around calls is not content
                    out.append(TextChunk(self._text[:start]))
                self._text = self._text[start + len(self.syntax.opens) :]
                self._in_call = True
                continue
            keep = _partial_marker(self._text, self.syntax.opens)
            ready = self._text[: len(self._text) - keep]
            if ready.strip():  # trailing whitespace waits: it may turn out to come before a call
                cut = len(ready.rstrip())
                out.append(TextChunk(self._text[:cut]))
                self._text = self._text[cut:]
            return out
        return out

    def close(self) -> list[Chunk]:
        """What is left once the model has stopped: the last calls, or text."""
        rest, self._text = self._text, ""
        if not self._in_call:
            return [TextChunk(rest)] if rest and (rest.strip() or not self.calls) else []
        self._in_call = False
        calls = parse_calls(self.syntax, rest, self.offered)
        if calls:
            return self._emit_calls(calls)
        opened = "" if self.syntax is LLAMA3_JSON and rest.startswith("{") else self.syntax.opens
        return [TextChunk(opened + rest)]


async def with_tool_calls(chunks: AsyncGenerator[Chunk, None], parser: ToolCallStream) -> AsyncGenerator[Chunk, None]:
    """A backend's chunks with the tool calls in its text parsed out; finish ``tool_calls`` if any."""
    async with aclosing(chunks) as source:
        async for chunk in source:
            if isinstance(chunk, TextChunk):
                for out in parser.feed(chunk.text):
                    yield out
            elif isinstance(chunk, FinishChunk):
                for out in parser.close():
                    yield out
                reason = "tool_calls" if parser.calls and chunk.reason == "stop" else chunk.reason
                yield FinishChunk(reason, chunk.usage, chunk.stop_sequence)
            else:
                yield chunk


async def as_named_call(chunks: AsyncGenerator[Chunk, None], name: str, legacy: bool) -> AsyncGenerator[Chunk, None]:
    """A grammar-constrained answer that *is* the arguments of a call to ``name``, as that call.

    The id and name go out first, then the arguments as the model writes them; ``legacy`` also
    fills the old ``function_call`` field (requests that used ``functions``).
    """
    started = False
    async with aclosing(chunks) as source:
        async for chunk in source:
            if isinstance(chunk, TextChunk):
                if not started:
                    started = True
                    yield ToolCallChunk([call_entry(0, name, "")], {"name": name, "arguments": ""} if legacy else None)
                if chunk.text:
                    yield ToolCallChunk(
                        [{"index": 0, "function": {"arguments": chunk.text}}], {"arguments": chunk.text} if legacy else None
                    )
            elif isinstance(chunk, FinishChunk):
                if not started:
                    yield ToolCallChunk([call_entry(0, name, "")], {"name": name, "arguments": ""} if legacy else None)
                yield FinishChunk("tool_calls" if chunk.reason == "stop" else chunk.reason, chunk.usage)
            else:
                yield chunk


async def as_required_calls(chunks: AsyncGenerator[Chunk, None], offered: Iterable[str]) -> AsyncGenerator[Chunk, None]:
    """A grammar-constrained answer that is a JSON list of ``{"name", "arguments"}``, as calls.

    The list is only known to be whole at the end, so the calls go out then. An answer cut short
    (``max_tokens``) is not a list of calls: it goes out as the text it is, ``finish_reason``
    ``length``.
    """
    text: list[str] = []
    async with aclosing(chunks) as source:
        async for chunk in source:
            if isinstance(chunk, TextChunk):
                text.append(chunk.text)
            elif isinstance(chunk, FinishChunk):
                try:
                    calls = forced_calls("".join(text), offered)
                except ValueError:
                    if text:
                        yield TextChunk("".join(text))
                    yield FinishChunk("length", chunk.usage)
                    return
                yield ToolCallChunk(calls)
                yield FinishChunk("tool_calls", chunk.usage)
            else:
                yield chunk


def forced_calls(text: str, offered: Iterable[str]) -> list[dict[str, Any]]:
    """The calls of a grammar-constrained answer: a JSON list of ``{"name", "arguments"}``.

    Raises ValueError when the text is not that (an answer cut short by ``max_tokens``).
    """
    values = json.loads(text)
    calls = [_as_call(v, frozenset(offered)) for v in (values if isinstance(values, list) else [values])]
    if not calls or not all(calls):
        raise ValueError("not a list of calls")
    return [call_entry(i, name, args) for i, (name, args) in enumerate(c for c in calls if c is not None)]


def required_schema(tools: Iterable[Any], parallel: bool) -> dict[str, Any]:
    """The JSON schema of "one or more calls to these functions", for a sampling grammar."""
    one_of = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters or {"type": "object", "properties": {}}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return {"type": "array", "items": {"oneOf": one_of}, "minItems": 1, **({} if parallel else {"maxItems": 1})}
