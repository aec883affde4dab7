"""Optional prompt optimiser: a causal LM that rewrites a prompt, as PromptCharm does with Promptist.

Protocol (PromptCharm / the Promptist demo): the input is the prompt followed by " Rephrase:", the LM decodes with
beam search (8 beams, at most 77 new tokens, no sampling, length penalty -1 as in the demo), and the first beam's
new tokens are the suggestion (so the input is never echoed back). Nothing here changes a prompt: the app shows the
suggestion as a word diff and the user accepts or rejects it.

transformers is imported inside the functions: the app's path stays free of it until someone asks for a suggestion.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.errors import AttuneError

DEFAULT_LM = "microsoft/Promptist"
GPT2_TOKENIZER = "gpt2"  # Promptist ships no tokenizer files; its demo uses GPT-2's
SUFFIX = " Rephrase:"
NUM_BEAMS = 8
MAX_NEW_TOKENS = 77
LENGTH_PENALTY = -1.0
MAX_PROMPT_CHARS = 2000

_cache: dict[str, tuple[object, object]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Suggestion:
    prompt: str
    suggestion: str
    lm: str

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "suggestion": self.suggestion, "lm": self.lm}


def configured_lm() -> str | None:
    """ATTUNE_PROMPT_LM: the optimiser's folder or hub id; unset means the app shows no optimiser."""
    value = (os.environ.get("ATTUNE_PROMPT_LM") or "").strip()
    return value or None


def offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP check, so a machine without network fails in seconds instead of after the hub client's retries."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _load(lm: str):
    """(tokenizer, model) for a local folder or a hub id; cached per id. One clear line when it cannot load."""
    with _lock:
        if lm in _cache:
            return _cache[lm]
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise AttuneError("The prompt optimiser needs the transformers package (pip install transformers).") from None
        local = Path(lm).expanduser()
        is_folder = local.is_dir()
        if not is_folder and (lm.startswith((".", "/", "~")) or lm.count("/") != 1):
            raise AttuneError(f"The prompt optimiser '{lm}' is neither a local folder nor a hub id (owner/name).")
        source = str(local) if is_folder else lm
        model, only_local = None, True
        try:  # a folder, or a hub id already in the local cache
            model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
        except Exception as error:
            if is_folder:
                raise AttuneError(f"The prompt optimiser '{lm}' could not be loaded ({type(error).__name__}).") from None
        if model is None:
            if offline():
                raise AttuneError(f"The prompt optimiser '{lm}' could not be loaded (offline, and it is not in the "
                                  "local cache).") from None
            if not hub_reachable():
                raise AttuneError(f"The prompt optimiser '{lm}' could not be loaded (the hub is not reachable, and it "
                                  "is not in the local cache).") from None
            only_local = False
            try:
                model = AutoModelForCausalLM.from_pretrained(source)
            except Exception as error:
                raise AttuneError(f"The prompt optimiser '{lm}' could not be loaded ({type(error).__name__}).") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=only_local)
        except Exception:
            try:  # Promptist's repo has weights only: GPT-2's tokenizer, from the cache, else from the hub
                try:
                    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER, local_files_only=True)
                except Exception:
                    if offline() or not hub_reachable():
                        raise
                    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
            except Exception:
                raise AttuneError(f"The prompt optimiser '{lm}' has no tokenizer, and GPT-2's could not be loaded.") from None
        model.eval()
        _cache[lm] = (tokenizer, model)
        return tokenizer, model


def suggest(prompt: str, lm: str | None = None) -> Suggestion:
    """The optimiser's rewrite of the prompt (the first of NUM_BEAMS beams)."""
    prompt = " ".join(str(prompt or "").split())
    if not prompt:
        raise AttuneError("Type a prompt first: the optimiser rewrites an existing prompt.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise AttuneError(f"The prompt is too long for the optimiser ({len(prompt)} characters; at most {MAX_PROMPT_CHARS}).")
    lm = (lm or configured_lm() or DEFAULT_LM).strip()
    tokenizer, model = _load(lm)
    import torch

    inputs = tokenizer(prompt + SUFFIX, return_tensors="pt")
    input_ids = inputs["input_ids"]
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    room = MAX_NEW_TOKENS if not limit else min(MAX_NEW_TOKENS, int(limit) - input_ids.shape[1])
    if room < 1:
        raise AttuneError(f"The prompt is too long for the optimiser ({input_ids.shape[1]} tokens; it reads {limit}).")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(model.config, "eos_token_id", None)
    with _lock, torch.no_grad():  # one generation at a time per process: beam search is memory hungry
        output = model.generate(
            input_ids, attention_mask=inputs.get("attention_mask"), do_sample=False, num_beams=NUM_BEAMS,
            num_return_sequences=1, max_new_tokens=room, length_penalty=LENGTH_PENALTY,
            eos_token_id=eos, pad_token_id=eos,
        )
    new_tokens = output[0][input_ids.shape[1]:]
    text = " ".join(tokenizer.decode(new_tokens, skip_special_tokens=True).split())
    return Suggestion(prompt=prompt, suggestion=text, lm=lm)


def unavailable_reason() -> str | None:
    """Why the app's optimiser button cannot work, in one line; None when a model is configured."""
    if configured_lm() is None:
        return ("No prompt optimiser is configured: set ATTUNE_PROMPT_LM to a local folder or a hub id "
                f"(for example {DEFAULT_LM}, which needs the network once).")
    return None
