"""Loading: diffusers folders, safetensors only, cached weights hash, tokenizers, schedulers."""
import shutil

import pytest
import torch

from engine.model import loading as model_mod
from engine.errors import AttuneError
from engine.model.loading import HASH_CACHE_FILE, load_components, weights_hash
from engine.sampling.schedulers import SCHEDULERS, make_scheduler


@pytest.fixture(scope="module")
def components(tiny_model_dir):
    return load_components(tiny_model_dir)


def test_load_tiny_folder(components, tiny_model_dir):
    c = components
    assert c.model_id == str(tiny_model_dir)
    assert c.unet_in_channels == 4
    assert c.vae_scale_factor == 8
    assert c.latent_channels == 4
    assert len(c.weights_hash) == 16 and int(c.weights_hash, 16) >= 0
    assert c.scheduler_config["_class_name"] == "DDIMScheduler"
    assert not c.unet.training and not any(p.requires_grad for p in c.unet.parameters())
    assert c.dtype == torch.float32


def test_known_words_for_word_level_tokenizer(components):
    assert {"moon", "wolf", "sky", ","} <= components.known_words
    assert not any(w.startswith("<|") for w in components.known_words)


def test_known_words_none_for_bpe():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    assert model_mod._word_level_vocab(bpe) is None


def test_inpaint_folder_has_nine_channels(tiny_inpaint_model_dir):
    assert load_components(tiny_inpaint_model_dir).unet_in_channels == 9


def _copy(src, dst):
    shutil.copytree(src, dst)
    (dst / HASH_CACHE_FILE).unlink(missing_ok=True)
    return dst


def test_weights_hash_is_cached_and_tracks_changes(tiny_model_dir, tmp_path, monkeypatch):
    folder = _copy(tiny_model_dir, tmp_path / "m")
    h1 = weights_hash(folder)
    assert (folder / HASH_CACHE_FILE).exists()
    # A second call in a fresh process state reads the on-disk cache, not the weights.
    model_mod._hash_memo.clear()

    def boom(*a, **k):
        raise AssertionError("weights were hashed again")

    monkeypatch.setattr(model_mod.hashlib, "sha256", boom)
    assert weights_hash(folder) == h1
    monkeypatch.undo()
    # Changing a weights file changes the hash.
    st = next((folder / "vae").glob("*.safetensors"))
    data = bytearray(st.read_bytes())
    data[-1] ^= 0xFF
    st.write_bytes(bytes(data))
    assert weights_hash(folder) != h1


def test_pickle_only_folder_is_refused(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "pickled")
    for st in (folder / "unet").glob("*.safetensors"):
        st.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(AttuneError, match=r"pickle weights.*safetensors"):
        load_components(folder)


def test_folder_without_weights(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "empty-vae")
    for st in (folder / "vae").glob("*.safetensors"):
        st.unlink()
    with pytest.raises(AttuneError, match="has no weights"):
        load_components(folder)


def test_fp16_variant_only_is_loaded(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "variant")
    for part in ("unet", "vae", "text_encoder"):
        for st in (folder / part).glob("*.safetensors"):
            st.rename(st.with_name(st.stem + ".fp16.safetensors"))
    c = load_components(folder)
    assert c.unet_in_channels == 4


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda tmp: tmp / "does-not-exist", "not found"),
        (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt", "is a file"),
        (lambda tmp: (tmp / "emptydir").mkdir() or tmp / "emptydir", "missing tokenizer"),
    ],
)
def test_bad_model_paths(tmp_path, setup, message):
    with pytest.raises(AttuneError, match=message):
        load_components(setup(tmp_path))


def test_builtin_model_missing_message(tmp_path, monkeypatch):
    monkeypatch.setattr(model_mod, "default_model_path", lambda: tmp_path / "tiny-scenes")
    with pytest.raises(AttuneError, match="built-in model"):
        load_components(None)


def test_schedulers(components):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    from engine.sampling import np_schedulers
    from engine.sampling.schedulers import make_reference_scheduler

    kinds = {name: make_scheduler(name, components.scheduler_config) for name in SCHEDULERS}
    assert isinstance(kinds["ddim"], np_schedulers.DDIMScheduler)  # the numpy mirrors (tests/test_np_schedulers.py)
    assert isinstance(kinds["euler"], np_schedulers.EulerDiscreteScheduler)
    assert isinstance(kinds["dpm++"], np_schedulers.DPMSolverMultistepScheduler)
    refs = {name: make_reference_scheduler(name, components.scheduler_config) for name in SCHEDULERS}
    assert isinstance(refs["ddim"], DDIMScheduler)
    assert isinstance(refs["euler"], EulerDiscreteScheduler)
    assert isinstance(refs["dpm++"], DPMSolverMultistepScheduler)
    assert refs["dpm++"].config.algorithm_type == "dpmsolver++"
    # Built from the folder's config.
    assert refs["euler"].config.beta_schedule == components.scheduler_config["beta_schedule"]
    assert kinds["euler"].config["beta_schedule"] == components.scheduler_config["beta_schedule"]
    with pytest.raises(AttuneError, match="Unknown scheduler 'plms'"):
        make_scheduler("plms", components.scheduler_config)


def test_hub_id_offline_gives_a_clear_message(monkeypatch):
    import huggingface_hub

    calls = []

    def offline(repo_id, **kw):
        calls.append(kw.get("local_files_only", False))
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(AttuneError, match=r"could not be fetched from the Hugging Face hub.*\(OSError\)") as info:
        load_components("someone/some-model")
    assert calls == [False, True]  # tried the network, then the local cache
    assert "\n" not in str(info.value)


def test_hub_id_uses_safetensors_patterns(monkeypatch, tiny_model_dir):
    import huggingface_hub

    seen = {}

    def fake(repo_id, **kw):
        seen.update(kw, repo_id=repo_id)
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    c = load_components("someone/some-model")
    assert c.model_id == "someone/some-model" and c.unet_in_channels == 4
    assert not any(p.endswith((".bin", ".ckpt")) for p in seen["allow_patterns"])
