"""The examples in the public API's docstrings run as written (the API reference chapter shows them)."""
import doctest
import importlib

import pytest

MODULES = ["memvir.memory", "memvir.losses", "memvir.registry", "memvir.pml", "memvir.metrics", "memvir.data",
           "memvir.data.glyphs"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (output above)"


def test_the_public_api_has_examples():
    counts = {n: doctest.testmod(importlib.import_module(n)).attempted for n in ("memvir.memory", "memvir.registry",
                                                                               "memvir.metrics")}
    assert all(counts.values()), counts  # an example removed by mistake shows here
