"""Tokenizers without transformers: the `tokenizers` library on the model's tokenizer/tokenizer.json.

`LightTokenizer` offers what engine/words/prompt.py reads from a transformers tokenizer (bos/eos/pad/unk ids, calling it
on a word, the vocabulary), so both give the same ids: transformers' fast tokenizers run this same file. A folder
without tokenizer.json (e.g. a CLIP tokenizer saved as vocab.json + merges.txt) needs transformers.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.errors import AttuneError

SPECIALS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class LightTokenizer:
    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.backend_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # a saved file may carry padding/truncation settings; tokenize_prompt lays out the 77 positions itself
        self.backend_tokenizer.no_padding()
        self.backend_tokenizer.no_truncation()
        names: dict[str, str] = {}
        for file in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins, as in transformers
            try:
                data = json.loads((folder / file).read_text())
            except (OSError, ValueError):
                continue
            for key in SPECIALS:
                text = _token_text(data.get(key))
                if text is not None:
                    names[key] = text
        self.model_max_length = 77
        try:
            self.model_max_length = int(json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self.special_tokens = names
        for key in SPECIALS:
            text = names.get(key)
            setattr(self, f"{key}_id", self.backend_tokenizer.token_to_id(text) if text is not None else None)
        self.all_special_tokens = [t for t in names.values() if t is not None]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab()

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size()


def load_tokenizer(folder: str | Path):
    """The tokenizer in `folder` (a model's tokenizer/ folder): LightTokenizer when tokenizer.json is there, else
    transformers' AutoTokenizer (when installed)."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        try:
            return LightTokenizer(folder)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise AttuneError(f"Could not load the tokenizer in {folder}: {type(e).__name__}: {first}") from None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise AttuneError(
            f"{folder} has no tokenizer.json, and reading its other tokenizer files needs transformers: "
            "pip install -r requirements-torch.txt"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise AttuneError(f"Could not load the tokenizer in {folder}: {type(e).__name__}: {first}") from None


def word_level_vocab(tokenizer) -> set[str] | None:
    """The words of a word-level tokenizer (specials left out); None for sub-word tokenizers (BPE)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        model_type = json.loads(backend.to_str())["model"]["type"]
    except Exception:
        return None
    if model_type != "WordLevel":
        return None
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    return {w for w in tokenizer.get_vocab() if w not in specials}
