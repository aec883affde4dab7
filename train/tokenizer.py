"""Word-level tokenizer for the built-in model: one token per word, so a word's attention is one map."""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors, normalizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>"]
MAX_LENGTH = 77


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A lowercase, whitespace+punctuation split, word-level tokenizer with bos/eos/pad and 77 positions."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in sorted({w.lower() for w in words}):
        if word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token="<|unk|>",
        pad_token="<|pad|>",
        model_max_length=MAX_LENGTH,
    )


def save_word_tokenizer(words: list[str], folder: str | Path) -> PreTrainedTokenizerFast:
    tokenizer = build_word_tokenizer(words)
    tokenizer.save_pretrained(str(folder))
    return tokenizer
