"""Tiny models the tests build themselves: a GGUF for llama.cpp and a GPT-BigCode for transformers.

Nothing can be downloaded here, and a random model's output is noise, so these models are
*bigram machines*: one layer whose attention and MLP weights are zero, one-hot token embeddings,
and an output matrix that maps each token to the next one of a script (``CHAINS``). The next token
therefore depends only on the last one, deterministically even when sampling (the chosen logit
is far above the rest), and each has a runner-up for ``logit_bias`` to pick. The vocabulary holds
what a test needs, with the token types real models give them (control, user-defined, bytes):

* fill-in-the-middle tokens of one family, and the middle a code model would write;
* a Hermes-style chat template that defines tool calling, and an answer that calls two tools.

The GGUF is written with the ``gguf`` package (llama architecture, SentencePiece vocabulary with
byte fallback, so any prompt text tokenises); the GPT-BigCode with ``tokenizers`` + transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: The FIM tokens each family puts in its vocabulary (prefix, suffix, middle or "", then the rest).
FAMILY_TOKENS: dict[str, tuple[str, ...]] = {
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<file_sep>", "<repo_name>"),
    "santacoder": ("<fim-prefix>", "<fim-suffix>", "<fim-middle>", "<fim-pad>"),
    "qwen2.5-coder": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"),
    "deepseek-coder": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    "codellama": ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"),
    "codestral": ("[PREFIX]", "[SUFFIX]", ""),
}

#: A ChatML template with Hermes-style tools, written for these tests (the shape Qwen2.5 uses).
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "You may call functions. Their signatures are in <tools></tools>:\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n"
    'Answer with <tool_call>{"name": ..., "arguments": ...}</tool_call> per call.<|im_end|>\n'
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'system' %}"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    '{%- for call in m.tool_calls or [] %}\n<tool_call>\n{"name": "{{ call.function.name }}", '
    '"arguments": {{ call.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n'
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: The middle the code model writes, and what it would write after its end-of-middle token.
#: (Every scripted token is at most 32 bytes: llama-cpp-python decodes longer ones as nothing.)
MIDDLE = "    return a + b"
AFTER_END = " # after the end"
#: The tool calls the chat model makes (two, so parallel calls show), and its answer without them.
FIRST_CALL = ('{"name": "get_weather", ', '"arguments": {"city": ', '"Paris"}}')
SECOND_CALL = (" <tool_call>", '{"name": "get_time", ', '"arguments": {}}</tool_call>')
TEXT_ANSWER = ("Hello", " from", " Veil.")


@dataclass(frozen=True)
class TinyModel:
    path: Path
    vocab: dict[str, int]  # token text (as a decoder writes it) -> id

    def id(self, text: str) -> int:
        return self.vocab[text]


def _chains(middle_token: str, end_of_middle: str, turn_end: str) -> list[tuple[str, str, str | None]]:
    """(token, next, runner-up) for every scripted transition; every other token ends the text."""
    hello, frm, veil = TEXT_ANSWER
    calls = ["<tool_call>", *FIRST_CALL, "</tool_call>", *SECOND_CALL, turn_end]
    return [
        ("\n", "<tool_call>", hello),  # the chat prompt ends with "assistant\n"
        *[(a, b, None) for a, b in zip(calls, calls[1:])],
        (hello, frm, None),
        (frm, veil, None),
        (veil, turn_end, None),
        (middle_token, MIDDLE, None),
        (MIDDLE, end_of_middle, None),
        (end_of_middle, AFTER_END, None),
        (AFTER_END, AFTER_END, None),
    ]


def write_gguf(path: Path, family: str = "starcoder", *, add_bos: bool = False) -> TinyModel:
    """A llama-architecture GGUF with ``family``'s FIM tokens and the Hermes tool template."""
    import numpy as np
    from gguf import GGUFWriter, TokenType

    fim = [t for t in FAMILY_TOKENS[family] if t]
    end_of_middle = {"starcoder": "<file_sep>", "qwen2.5-coder": "<|file_sep|>", "codellama": "▁<EOT>"}.get(
        family, "<|endoftext|>"
    )
    tokens: list[tuple[str, TokenType]] = [
        ("<unk>", TokenType.UNKNOWN),
        ("<s>", TokenType.CONTROL),
        ("</s>", TokenType.CONTROL),
        ("<|endoftext|>", TokenType.CONTROL),
        ("<|im_start|>", TokenType.CONTROL),
        ("<|im_end|>", TokenType.CONTROL),
    ]
    tokens += [(t, TokenType.CONTROL) for t in fim]
    tokens += [("<tool_call>", TokenType.USER_DEFINED), ("</tool_call>", TokenType.USER_DEFINED)]
    tokens += [(f"<0x{b:02X}>", TokenType.BYTE) for b in range(256)]
    texts = {MIDDLE, AFTER_END, *FIRST_CALL, *SECOND_CALL, *TEXT_ANSWER}
    tokens += [(t.replace(" ", "▁"), TokenType.NORMAL) for t in sorted(texts)]
    ids = {text: i for i, (text, _) in enumerate(tokens)}

    def id_of(text: str) -> int:  # how a script names a token: its text, a byte, or a control token
        if text == "\n":
            return ids["<0x0A>"]
        return ids[text] if text in ids else ids[text.replace(" ", "▁")]

    n_vocab = len(tokens)
    n_embd = (n_vocab + 63) // 64 * 64
    embed = np.zeros((n_vocab, n_embd), dtype=np.float32)
    embed[np.arange(n_vocab), np.arange(n_vocab)] = 1.0
    out = np.zeros((n_vocab, n_embd), dtype=np.float32)
    out[id_of("<|endoftext|>"), :n_vocab] = 0.3  # every unscripted token ends the text
    middle_token = fim[2] if len(fim) > 2 and family != "codestral" else fim[0]
    for token, nxt, runner_up in _chains(middle_token, end_of_middle, "<|im_end|>"):
        out[:, id_of(token)] = 0.0
        out[id_of(nxt), id_of(token)] = 3.0
        if runner_up is not None:
            out[id_of(runner_up), id_of(token)] = 1.5
    ffn, heads = 32, 4
    w = GGUFWriter(str(path), "llama")
    w.add_name("veil-tiny-bigram")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(n_embd // heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("llama")
    w.add_token_list([t for t, _ in tokens])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([int(k) for _, k in tokens])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(ids["<|endoftext|>"])
    w.add_eot_token_id(ids["<|im_end|>"])
    w.add_add_bos_token(add_bos)
    w.add_add_space_prefix(family == "codellama")
    w.add_chat_template(HERMES_TEMPLATE)
    zeros = np.zeros
    w.add_tensor("token_embd.weight", embed)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", zeros((n_embd, n_embd), dtype=np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", zeros((ffn, n_embd), dtype=np.float32))
    w.add_tensor("blk.0.ffn_up.weight", zeros((ffn, n_embd), dtype=np.float32))
    w.add_tensor("blk.0.ffn_down.weight", zeros((n_embd, ffn), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", out)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return TinyModel(path, {text.replace("▁", " ") if k == TokenType.NORMAL else text: i for i, (text, k) in enumerate(tokens)})


def write_gpt_bigcode(path: Path, fim_tokens: tuple[str, ...] = FAMILY_TOKENS["santacoder"]) -> TinyModel:
    """A GPT-BigCode (SantaCoder's architecture) directory with FIM tokens and the Hermes tool
    template, for transformers. The middle ends at ``<|endoftext|>``, as in SantaCoder; a chat
    turn at ``<|im_end|>``."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", *fim_tokens, "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["def add(a, b):\n    return a + b\n", "x = 1\nprint(x)\n"] * 20, trainer)
    scripted = [MIDDLE, AFTER_END, "<tool_call>", "</tool_call>", *FIRST_CALL, *SECOND_CALL, *TEXT_ANSWER]
    tok.add_tokens([AddedToken(t, normalized=False) for t in scripted])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=[*fim_tokens, "<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = HERMES_TEMPLATE
    fast.save_pretrained(path)
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=HERMES_TEMPLATE)
    cfg_file.write_text(json.dumps(cfg, indent=2))
    vocab = fast.get_vocab()
    n_vocab = len(vocab)
    n_embd = (n_vocab + 63) // 64 * 64
    eos, turn_end = vocab["<|endoftext|>"], vocab["<|im_end|>"]
    config = GPTBigCodeConfig(
        vocab_size=n_vocab,
        n_embd=n_embd,
        n_layer=1,
        n_head=4,
        n_positions=1024,
        multi_query=True,
        tie_word_embeddings=False,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPTBigCodeForCausalLM(config)
    model.generation_config.eos_token_id = [eos, turn_end]
    newline = vocab["Ċ"]  # byte-level BPE's newline: the chat prompt ends with "assistant\n"
    steps = [
        (vocab[fim_tokens[2]], vocab[MIDDLE], None),
        (vocab[MIDDLE], eos, None),
        (eos, vocab[AFTER_END], None),
        (newline, vocab["<tool_call>"], vocab[TEXT_ANSWER[0]]),
    ]
    calls = ["<tool_call>", *FIRST_CALL, "</tool_call>", *SECOND_CALL, "<|im_end|>"]
    steps += [(vocab[a], vocab[b], None) for a, b in zip(calls, calls[1:])]
    answer = [*TEXT_ANSWER, "<|im_end|>"]
    steps += [(vocab[a], vocab[b], None) for a, b in zip(answer, answer[1:])]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.wte.weight[torch.arange(n_vocab), torch.arange(n_vocab)] = 1.0
        model.transformer.ln_f.weight.fill_(1.0)
        for block in model.transformer.h:
            block.ln_1.weight.fill_(1.0)
            block.ln_2.weight.fill_(1.0)
        head = model.lm_head.weight  # [n_vocab, n_embd]
        head[eos, :n_vocab] = 0.3  # every unscripted token ends the text
        for token, nxt, runner_up in steps:
            head[:, token] = 0.0
            head[nxt, token] = 6.0
            if runner_up is not None:
                head[runner_up, token] = 3.0
    model.save_pretrained(path)
    return TinyModel(path, dict(vocab))
