"""Fill-in-the-middle (code completion): which family a model is, from its own vocabulary.

A code model fills the gap between a prefix and a suffix when its prompt is framed by the control
tokens it was trained with. Each family spells them differently, and two put the suffix first; a
model's *name* says nothing reliable about which it has (fine-tunes, merges and re-uploads keep
the vocabulary but not the name), so every engine looks the tokens up in the model's own
vocabulary and nowhere else. A model without a complete set gets a clear refusal, never a prompt
built from the wrong tokens (which silently produces garbage).

The same detection and prompt layout serve every engine: llama.cpp (GGUF vocabulary), transformers
(the tokenizer's vocabulary) and vLLM (the tokenizer in the model directory, in the middleware that
builds the prompt vLLM itself refuses to build). Text from the request is tokenised with special
tokens *not* parsed, so a prefix that contains ``<fim_suffix>`` stays text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from veil.engines.openai_api import EngineAPIError


@dataclass(frozen=True)
class FimFamily:
    """One family's FIM tokens (each a tuple of spellings, first match wins) and layout.

    ``middle`` is empty for families that start the middle right after the prefix (Codestral);
    ``suffix_first`` puts the suffix block before the prefix block (Codestral's layout); ``ends``
    are the tokens that close a middle besides the model's end-of-sequence; ``file_sep`` and
    ``repo_name`` frame other files of the repository given as context (``/infill``'s
    ``input_extra``), for the families trained with repository-level context. ``bare_suffix``:
    the suffix is tokenised without the leading space a SentencePiece tokenizer adds (CodeLlama's
    ``<SUF>{suffix}``, where the prefix keeps it: ``<PRE> {prefix}``).
    """

    name: str
    prefix: tuple[str, ...]
    suffix: tuple[str, ...]
    middle: tuple[str, ...] = ()
    suffix_first: bool = False
    ends: tuple[str, ...] = ()
    file_sep: tuple[str, ...] = ()
    repo_name: tuple[str, ...] = ()
    bare_suffix: bool = False


#: The families Veil recognises, in detection order (the first with a complete set wins).
FAMILIES: tuple[FimFamily, ...] = (
    FimFamily(
        "qwen2.5-coder",
        ("<|fim_prefix|>",),
        ("<|fim_suffix|>",),
        ("<|fim_middle|>",),
        ends=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>"),
        file_sep=("<|file_sep|>",),
        repo_name=("<|repo_name|>",),
    ),
    FimFamily(
        "starcoder",
        ("<fim_prefix>",),
        ("<fim_suffix>",),
        ("<fim_middle>",),
        ends=("<|endoftext|>", "<fim_pad>", "<file_sep>"),
        file_sep=("<file_sep>",),
        repo_name=("<repo_name>", "<reponame>"),
    ),
    FimFamily("santacoder", ("<fim-prefix>",), ("<fim-suffix>",), ("<fim-middle>",), ends=("<|endoftext|>", "<fim-pad>")),
    FimFamily(
        "deepseek-coder", ("<｜fim▁begin｜>",), ("<｜fim▁hole｜>",), ("<｜fim▁end｜>",), ends=("<｜end▁of▁sentence｜>", "<|EOT|>")
    ),
    FimFamily(
        "codellama", ("▁<PRE>", "<PRE>"), ("▁<SUF>", "<SUF>"), ("▁<MID>", "<MID>"), ends=("▁<EOT>", "<EOT>"), bare_suffix=True
    ),
    FimFamily("codestral", ("[PREFIX]",), ("[SUFFIX]",), suffix_first=True, ends=("</s>",)),
)


@dataclass(frozen=True)
class FimTokens:
    """A family resolved against one vocabulary: the token ids to build prompts and stop with."""

    family: str
    prefix: int
    suffix: int
    middle: int | None
    suffix_first: bool
    ends: frozenset[int]
    file_sep: int | None
    repo_name: int | None
    bare_suffix: bool = False

    def prompt(self, tokenize: Callable[[str], list[int]], request: FimRequest, bos: Iterable[int] = ()) -> list[int]:
        """The token ids the model receives for ``request``.

        ``tokenize`` must treat its text as plain text (no special tokens parsed) and add nothing.
        Layout (PSM): ``[bos] [repo context] PRE prefix SUF suffix MID [middle start]``; SPM
        families (Codestral) put ``SUF suffix`` before ``PRE prefix`` and have no MID token.
        """

        def text(s: str) -> list[int]:
            return tokenize(s) if s else []

        context: list[int] = []
        for filename, body in request.extra:
            if self.file_sep is not None:
                context += [self.file_sep, *text(f"{filename}\n{body}")]
            else:  # no repository tokens: the other files go before the prefix as plain text
                context += text(f"{filename}\n{body}\n\n")
        if context and self.file_sep is not None:
            repo = [self.repo_name, *text("repository\n")] if self.repo_name is not None else []
            context = [*repo, *context, self.file_sep]
        suffix_ids = without_space_prefix(tokenize, request.suffix) if self.bare_suffix else text(request.suffix)
        pre, suf = [self.prefix, *text(request.prefix)], [self.suffix, *suffix_ids]
        framed = [*suf, *pre] if self.suffix_first else [*pre, *suf]
        mid = [self.middle] if self.middle is not None else []
        return [*bos, *context, *framed, *mid, *text(request.middle)]


@dataclass(frozen=True)
class FimRequest:
    """What an editor asked to fill: text before and after the cursor, and optional context.

    ``extra``: other files as (filename, text) pairs (llama.cpp's ``input_extra``); ``middle``:
    text the middle must start with (``/infill``'s ``prompt``), which the answer does not repeat.
    """

    prefix: str
    suffix: str
    extra: tuple[tuple[str, str], ...] = ()
    middle: str = ""


def detect(vocabulary: Mapping[str, int]) -> FimTokens | None:
    """The first family whose prefix, suffix (and middle) tokens are all in ``vocabulary``.

    ``vocabulary`` maps token text to id; it need hold only the texts in :data:`CANDIDATE_TEXTS`.
    """

    def find(spellings: tuple[str, ...]) -> int | None:
        return next((vocabulary[s] for s in spellings if s in vocabulary), None)

    for fam in FAMILIES:
        pre, suf = find(fam.prefix), find(fam.suffix)
        mid = find(fam.middle) if fam.middle else None
        if pre is None or suf is None or (fam.middle and mid is None):
            continue
        ends = frozenset(vocabulary[t] for t in fam.ends if t in vocabulary)
        return FimTokens(
            fam.name, pre, suf, mid, fam.suffix_first, ends, find(fam.file_sep), find(fam.repo_name), fam.bare_suffix
        )
    return None


_SENTINEL = "\u263a"  # a character no tokenizer merges with code


def without_space_prefix(tokenize: Callable[[str], list[int]], text: str) -> list[int]:
    """``text``'s tokens without the space a SentencePiece tokenizer puts before a text's start.

    Tokenises a sentinel character followed by the text and drops the sentinel's own tokens, but
    only when they are exactly the start of the result (else the plain tokens: nothing to strip).
    """
    if not text:
        return []
    sentinel, both = tokenize(_SENTINEL), tokenize(_SENTINEL + text)
    return both[len(sentinel) :] if both[: len(sentinel)] == sentinel else tokenize(text)


#: Every token text any family uses: what an engine must look up in its vocabulary.
CANDIDATE_TEXTS: frozenset[str] = frozenset(
    t for fam in FAMILIES for t in (*fam.prefix, *fam.suffix, *fam.middle, *fam.ends, *fam.file_sep, *fam.repo_name)
)


def hf_text_ids(tokenizer: Any, text: str) -> list[int]:
    """Request text as a Hugging Face tokenizer's ids, special tokens *not* parsed: a prompt cannot
    smuggle them in."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def hf_tokens(tokenizer: Any) -> FimTokens | None:
    """The FIM family of a Hugging Face tokenizer's vocabulary (transformers and vLLM engines)."""
    vocab = tokenizer.get_vocab()
    return detect({t: vocab[t] for t in CANDIDATE_TEXTS if t in vocab})


def hf_prompt(tokenizer: Any, tokens: FimTokens, request: FimRequest) -> list[int]:
    """The token ids a Hugging Face tokenizer's model receives for ``request`` (BOS if it adds one)."""
    bos = tokenizer.bos_token_id
    add_bos = bool(getattr(tokenizer, "add_bos_token", False)) and bos is not None
    return tokens.prompt(lambda text: hf_text_ids(tokenizer, text), request, [bos] if add_bos else [])


def unsupported(model_id: str, param: str = "suffix") -> EngineAPIError:
    """The refusal for a fill-in-the-middle request to a model without FIM tokens."""
    return EngineAPIError(
        400,
        f"{model_id} has no fill-in-the-middle tokens in its vocabulary; {param} is unsupported "
        "(supported families: " + ", ".join(f.name for f in FAMILIES) + ")",
        "unsupported_suffix",
        param,
    )
