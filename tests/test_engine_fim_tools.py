"""Fill-in-the-middle families and tool-call syntaxes, detected and parsed without a model.

The families are detected from vocabularies (text -> id maps, as every engine builds them from its
model), the syntaxes from chat templates; the parser is fed text split at every awkward place.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from veil.engines import fim, tool_calls
from veil.engines.base import Chunk, FinishChunk, TextChunk, ToolCallChunk

BASE = {"<|endoftext|>": 0, "</s>": 1, "<s>": 2}


def _vocab(*texts: str) -> dict[str, int]:
    return {**BASE, **{t: 100 + i for i, t in enumerate(texts)}}


def _chars(text: str) -> list[int]:
    return [ord(c) for c in text]


REQUEST = fim.FimRequest("def add(a, b):\n", "\n    return c\n")


@pytest.mark.parametrize(
    ("texts", "family", "layout"),
    [
        (("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"), "starcoder", "PSM"),
        (("<fim-prefix>", "<fim-suffix>", "<fim-middle>"), "santacoder", "PSM"),
        (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>"), "qwen2.5-coder", "PSM"),
        (("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"), "deepseek-coder", "PSM"),
        (("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"), "codellama", "PSM"),
        (("[PREFIX]", "[SUFFIX]"), "codestral", "SPM"),
    ],
)
def test_every_family_is_found_in_its_vocabulary(texts: tuple[str, ...], family: str, layout: str) -> None:
    vocab = _vocab(*texts)
    tokens = fim.detect(vocab)
    assert tokens is not None and tokens.family == family
    pre, suf = vocab[texts[0]], vocab[texts[1]]
    ids = tokens.prompt(_chars, REQUEST, bos=[2])
    if layout == "PSM":
        mid = vocab[texts[2]]
        assert ids == [2, pre, *_chars(REQUEST.prefix), suf, *_chars(REQUEST.suffix), mid]
    else:  # Codestral: suffix first, and the middle starts right after the prefix
        assert ids == [2, suf, *_chars(REQUEST.suffix), pre, *_chars(REQUEST.prefix)]
    assert tokens.ends <= set(vocab.values())


def test_no_family_without_a_complete_set_and_the_refusal_names_the_families() -> None:
    assert fim.detect(BASE) is None
    assert fim.detect(_vocab("<fim_prefix>", "<fim_suffix>")) is None  # no middle token: not StarCoder
    assert fim.detect(_vocab("<repo_name>", "<file_sep>", "<filename>")) is None  # SmolLM2's specials
    err = fim.unsupported("SmolLM2")
    assert err.status == 400 and err.code == "unsupported_suffix" and err.param == "suffix"
    assert "starcoder" in err.message and "codestral" in err.message


def test_end_of_middle_and_repository_context() -> None:
    vocab = _vocab("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<file_sep>", "<repo_name>")
    tokens = fim.detect(vocab)
    assert tokens is not None
    assert tokens.ends == {vocab["<|endoftext|>"], vocab["<fim_pad>"], vocab["<file_sep>"]}
    req = fim.FimRequest("x = ", "\n", extra=(("util.py", "y = 1"),), middle="1")
    ids = tokens.prompt(_chars, req)
    sep, repo = vocab["<file_sep>"], vocab["<repo_name>"]
    assert ids == [
        repo,
        *_chars("repository\n"),
        sep,
        *_chars("util.py\ny = 1"),
        sep,
        vocab["<fim_prefix>"],
        *_chars("x = "),
        vocab["<fim_suffix>"],
        *_chars("\n"),
        vocab["<fim_middle>"],
        *_chars("1"),
    ]
    plain = fim.detect(_vocab("<fim-prefix>", "<fim-suffix>", "<fim-middle>"))
    assert plain is not None and plain.file_sep is None  # SantaCoder: other files as plain text
    assert plain.prompt(_chars, req)[: len("util.py\ny = 1\n\n")] == _chars("util.py\ny = 1\n\n")


def test_codellama_suffix_loses_the_sentencepiece_space() -> None:
    def spm(text: str) -> list[int]:  # a SentencePiece-like tokenizer: a space before every text
        return _chars(" " + text)

    vocab = _vocab("▁<PRE>", "▁<SUF>", "▁<MID>")
    tokens = fim.detect(vocab)
    assert tokens is not None and tokens.bare_suffix
    ids = tokens.prompt(spm, fim.FimRequest("a", "b"))
    assert ids == [vocab["▁<PRE>"], *_chars(" a"), vocab["▁<SUF>"], ord("b"), vocab["▁<MID>"]]


HERMES_TEMPLATE = (
    "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% endfor %}"
)


def test_syntax_is_read_from_the_template() -> None:
    assert tool_calls.syntax_of(HERMES_TEMPLATE) is tool_calls.HERMES
    assert tool_calls.syntax_of("{{ messages }}[TOOL_CALLS]{{ tools }}") is tool_calls.MISTRAL
    assert tool_calls.syntax_of("{{ tools }} <|python_tag|>") is tool_calls.LLAMA3_JSON
    # Mentioning a marker is not defining tools: the template must use the variable.
    assert tool_calls.syntax_of("{% for m in messages %}<tool_call>{% endfor %}") is None
    assert tool_calls.syntax_of("{{ tools }} and no known call syntax") is None
    assert tool_calls.syntax_of("{% if %}") is None and tool_calls.syntax_of(None) is None


def _run(stream: tool_calls.ToolCallStream, pieces: list[str]) -> list[Chunk]:
    out: list[Chunk] = []
    for piece in pieces:
        out += stream.feed(piece)
    return out + stream.close()


def _split(chunks: list[Chunk]) -> tuple[str, list[dict[str, Any]]]:
    text = "".join(c.text for c in chunks if isinstance(c, TextChunk))
    calls = tool_calls.merge_deltas(d for c in chunks if isinstance(c, ToolCallChunk) for d in c.tool_calls)
    return text, calls


CALLS = (
    'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    '\n<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}</tool_call>'
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_hermes_calls_are_parsed_however_the_text_is_split(size: int) -> None:
    stream = tool_calls.ToolCallStream(tool_calls.HERMES, {"get_weather", "get_time"})
    text, calls = _split(_run(stream, [CALLS[i : i + size] for i in range(0, len(CALLS), size)]))
    assert text.strip() == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"zone": "CET"}]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)


def test_text_is_released_as_soon_as_it_cannot_be_a_call() -> None:
    stream = tool_calls.ToolCallStream(tool_calls.HERMES, {"f"})
    assert stream.feed("Hello <to") == [TextChunk("Hello")]  # "<to" might open a call: held, and the
    assert stream.feed("day") == [TextChunk(" <today")]  # space before it, which is no content before a call
    assert stream.feed(" ") == [] and stream.close() == [TextChunk(" ")]  # (no call came: it is text)


def test_what_is_not_a_valid_call_stays_text() -> None:
    offered = {"get_weather"}
    for body in (
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not offered
        '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',  # not an object
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "get_weather"',
    ):  # cut short
        text, calls = _split(_run(tool_calls.ToolCallStream(tool_calls.HERMES, offered), [body]))
        assert calls == [] and text == body


def test_parallel_false_keeps_the_first_call() -> None:
    stream = tool_calls.ToolCallStream(tool_calls.HERMES, {"get_weather", "get_time"}, parallel=False)
    assert [c["function"]["name"] for c in _split(_run(stream, [CALLS]))[1]] == ["get_weather"]


def test_mistral_and_llama3_syntaxes() -> None:
    offered = {"a", "b"}
    mistral = '[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]'
    assert [
        c["function"]["name"] for c in _split(_run(tool_calls.ToolCallStream(tool_calls.MISTRAL, offered), [mistral]))[1]
    ] == ["a", "b"]
    newer = '[TOOL_CALLS]a[ARGS]{"x": 1}[TOOL_CALLS]b[ARGS]{}'
    assert len(_split(_run(tool_calls.ToolCallStream(tool_calls.MISTRAL, offered), [newer]))[1]) == 2
    llama = '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
    text, calls = _split(_run(tool_calls.ToolCallStream(tool_calls.LLAMA3_JSON, offered), [llama[:5], llama[5:]]))
    assert text == "" and [json.loads(c["function"]["arguments"]) for c in calls] == [{"x": 1}, {}]
    answer = '{"answer": 4}'  # JSON that is not a call is the model's text
    assert _split(_run(tool_calls.ToolCallStream(tool_calls.LLAMA3_JSON, offered), [answer])) == (answer, [])


def test_required_schema_and_forced_calls() -> None:
    from veil.engines.openai_api import FunctionDefinition

    tools = [
        FunctionDefinition(name="a", parameters={"type": "object", "properties": {"x": {"type": "integer"}}}),
        FunctionDefinition(name="b"),
    ]
    schema = tool_calls.required_schema(tools, parallel=False)
    assert schema["minItems"] == 1 and schema["maxItems"] == 1
    assert [o["properties"]["name"]["const"] for o in schema["items"]["oneOf"]] == ["a", "b"]
    calls = tool_calls.forced_calls('[{"name": "b", "arguments": {}}]', {"a", "b"})
    assert calls[0]["function"] == {"name": "b", "arguments": "{}"}
    with pytest.raises(ValueError):
        tool_calls.forced_calls('[{"name": "b", "argu', {"a", "b"})


def test_finish_becomes_tool_calls_only_when_calls_were_made() -> None:
    import asyncio

    from veil.engines.base import Usage

    async def source(text: str):  # type: ignore[no-untyped-def]
        yield TextChunk(text)
        yield FinishChunk("stop", Usage(3, 4))

    async def finish(text: str) -> str:
        parser = tool_calls.ToolCallStream(tool_calls.HERMES, {"f"})
        got = [c async for c in tool_calls.with_tool_calls(source(text), parser)]
        return next(c.reason for c in got if isinstance(c, FinishChunk))

    assert asyncio.run(finish('<tool_call>{"name": "f", "arguments": {}}</tool_call>')) == "tool_calls"
    assert asyncio.run(finish("plain text")) == "stop"
