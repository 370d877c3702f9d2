import json

import pytest
import torch
from tests.conftest import gpt2_hidden_states

from modules.engine.activation_cache import (ActivationCache, ActivationCacheError, ActivationCacheWriter,
                                            parse_site_key, save_activations, site_key)


@pytest.fixture(scope="module")
def hidden():
    """Residual stream of a tiny random GPT-2: {"resid_post.{layer}": [n, seq, d]}."""
    ids, states = gpt2_hidden_states(8, 6)
    # hidden_states[l + 1] is the output of block l (the last one after the final norm).
    return {site_key("resid_post", layer): states[layer + 1] for layer in range(2)} | {"tokens": ids}


def save(path, acts, **kw):
    return save_activations(path, acts, model="tiny-gpt2", tokenizer="tiny-tok", dataset_hash="abc123", **kw)


def one_line(err):
    return "\n" not in str(err.value)


def test_site_keys():
    assert site_key("head_out", 2, 1) == "head_out.2.1" and site_key("resid_post", 3) == "resid_post.3"
    assert parse_site_key("head_out.2.1") == ("head_out", 2, 1)
    assert parse_site_key("resid_post.0") == ("resid_post", 0, None)
    assert parse_site_key("logits") == ("logits", None, None)
    for bad in ["resid post.1", "resid.-1", "x.1.2.3", "3.resid"]:
        with pytest.raises(ValueError, match="must look like"):
            parse_site_key(bad)
    with pytest.raises(ValueError, match="head needs a layer"):
        site_key("head_out", head=1)


def test_roundtrip_shards_and_metadata(tmp_path, hidden):
    path = save(tmp_path / "cache", hidden, examples_per_shard=3, extra={"split": "test"})
    cache = ActivationCache(path, expect={"model": "tiny-gpt2", "dataset_hash": "abc123"}, verify=True)
    assert len(cache.metadata["shards"]) == 3 and cache.n_examples == 8
    assert set(cache) == set(hidden) and "resid_post.1" in cache and "resid_post.7" not in cache
    for key, value in hidden.items():
        assert cache.shape(key) == tuple(value.shape)
        assert torch.equal(cache[key], value)
    meta = cache.metadata
    assert (meta["model"], meta["tokenizer"], meta["dataset_hash"], meta["extra"]) == \
        ("tiny-gpt2", "tiny-tok", "abc123", {"split": "test"})
    assert meta["sites"]["resid_post.0"] == {"shape": [6, 32], "dtype": "float32"}
    assert meta["sites"]["tokens"]["dtype"] == "int64" and meta["engine_version"]
    # Only the finished directory is left: no temp siblings.
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
    with pytest.raises(KeyError, match="not in activation cache"):
        cache["resid_post.9"]


def test_same_inputs_same_bytes(tmp_path, hidden):
    save(tmp_path / "a", hidden, examples_per_shard=4)
    save(tmp_path / "b", hidden, examples_per_shard=4)
    for name in ["metadata.json", "shard-00000.safetensors", "shard-00001.safetensors"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_dtype_cast(tmp_path, hidden):
    acts = {k: v for k, v in hidden.items() if k != "tokens"}
    cache = ActivationCache(save(tmp_path / "c", acts, dtype=torch.float16))
    assert cache["resid_post.0"].dtype == torch.float16
    assert torch.equal(cache["resid_post.0"], hidden["resid_post.0"].half())


def test_streaming_writer_and_interrupted_write(tmp_path, hidden):
    path = tmp_path / "stream"
    with ActivationCacheWriter(path, model="m", tokenizer="t", dataset_hash="h") as writer:
        writer.add({k: v[:5] for k, v in hidden.items()})
        writer.add({k: v[5:] for k, v in hidden.items()})
    assert torch.equal(ActivationCache(path)["resid_post.1"], hidden["resid_post.1"])
    # An exception mid-write leaves nothing behind, and the old cache untouched.
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationCacheWriter(path, model="m2", tokenizer="t", dataset_hash="h", overwrite=True) as writer:
            writer.add({k: v[:5] for k, v in hidden.items()})
            raise RuntimeError("boom")
    assert ActivationCache(path).metadata["model"] == "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stream"]
    # A writer killed before close (no __exit__) never creates the target directory.
    killed = ActivationCacheWriter(tmp_path / "killed", model="m", tokenizer="t", dataset_hash="h")
    killed.add({k: v[:5] for k, v in hidden.items()})
    with pytest.raises(ActivationCacheError, match="does not exist") as err:
        ActivationCache(tmp_path / "killed")
    assert one_line(err)
    killed.abort()


def test_overwrite_and_bad_batches(tmp_path, hidden):
    path = save(tmp_path / "c", hidden)
    with pytest.raises(ActivationCacheError, match="already exists"):
        save(path, hidden)
    save(path, {"resid_post.0": hidden["resid_post.0"][:2]}, overwrite=True)
    assert ActivationCache(path).n_examples == 2 and set(ActivationCache(path)) == {"resid_post.0"}
    with ActivationCacheWriter(tmp_path / "d", model="m", tokenizer="t", dataset_hash="h") as writer:
        writer.add({"resid_post.0": hidden["resid_post.0"][:2]})
        with pytest.raises(ValueError, match="differ from the first batch"):
            writer.add({"resid_post.1": hidden["resid_post.1"][:2]})
        with pytest.raises(ValueError, match="same leading example axis"):
            writer.add({"resid_post.0": hidden["resid_post.0"][:2], "tokens": hidden["tokens"][:3]})
        with pytest.raises(ValueError, match="earlier batches"):
            writer.add({"resid_post.0": hidden["resid_post.0"][:2, :3]})
        with pytest.raises(ValueError, match="must look like"):
            writer.add({"bad key": hidden["tokens"]})


def test_validation_errors(tmp_path, hidden):
    path = save(tmp_path / "c", hidden, examples_per_shard=4)
    with pytest.raises(ActivationCacheError, match="dataset_hash='abc123', expected 'zzz'") as err:
        ActivationCache(path, expect={"dataset_hash": "zzz"})
    assert one_line(err)
    with pytest.raises(ValueError, match="unknown field"):
        ActivationCache(path, expect={"colour": "red"})

    shard = path / "shard-00001.safetensors"
    good = shard.read_bytes()
    # Flip one byte of tensor data: same size and a valid header, so only the sha256 check sees it.
    shard.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    ActivationCache(path)
    with pytest.raises(ActivationCacheError, match="sha256"):
        ActivationCache(path, verify=True)
    # Garbage header of the same size: caught when the site is read.
    shard.write_bytes(b"\xff" * 16 + good[16:])
    with pytest.raises(ActivationCacheError, match="shard-00001.safetensors is corrupt") as err:
        ActivationCache(path)["resid_post.0"]
    assert one_line(err)
    shard.write_bytes(good[:-10])
    with pytest.raises(ActivationCacheError, match="truncated"):
        ActivationCache(path)
    shard.unlink()
    with pytest.raises(ActivationCacheError, match="shard-00001.safetensors is missing"):
        ActivationCache(path)

    meta = path / "metadata.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(ActivationCacheError, match="metadata.json is corrupt") as err:
        ActivationCache(path)
    assert one_line(err)
    meta.write_text(json.dumps({"format": 99, "shards": [], "sites": {}}))
    with pytest.raises(ActivationCacheError, match="format 99"):
        ActivationCache(path)
    meta.unlink()
    with pytest.raises(ActivationCacheError, match="no metadata.json"):
        ActivationCache(path)
