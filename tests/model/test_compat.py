"""nnct.compat: a library that lost an internal nnct relies on fails when a model loads,
naming the versions, instead of giving a wrong number later."""

import pytest

from conftest import make_adapter
from nnct import compat
from nnct.errors import IncompatibleLibrary


@pytest.fixture
def fresh_check():
    compat._library_problems.cache_clear()
    yield
    compat._library_problems.cache_clear()


def test_a_missing_internal_fails_at_load_naming_the_versions(monkeypatch, fresh_check):
    import nnsight.modeling.huggingface as nhf

    monkeypatch.delattr(nhf, "_ID_CACHE")
    with pytest.raises(IncompatibleLibrary) as err:
        make_adapter("llama")
    message = str(err.value)
    assert "_ID_CACHE" in message and "tested: nnsight 0.8.1, transformers 5.24" in message and "installed: nnsight" in message


def test_nnsight_must_leave_the_mask_to_a_model_given_a_cache(monkeypatch, fresh_check):
    """The one internal whose loss gives wrong numbers rather than an error (compat's docstring)."""
    import nnsight.modeling.processing as processing

    def encode_pretokenized(encoding):  # a release that masks the new tokens whatever it is given
        return encoding

    monkeypatch.setattr(processing, "encode_pretokenized", encode_pretokenized)
    with pytest.raises(IncompatibleLibrary, match="attention mask"):
        compat.check()


def test_the_installed_libraries_pass():
    compat.check()
    adapter = make_adapter("gpt2")
    compat.check(adapter.nn, adapter.hf)
    with pytest.raises(IncompatibleLibrary, match="Envoy._module"):
        compat.check(adapter.nn, make_adapter("llama").hf)


def test_a_trace_with_a_cache_raises_no_deprecation_warning():
    """nnct 0.5 handed caches over under a name transformers deprecates: hundreds of warnings
    per suite. The engine's restored runs read the base run's cache."""
    import warnings

    from examples import prepared

    adapter = make_adapter("llama")
    example = prepared(adapter)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        example.trace(adapter, components=("hidden",), window=1)
