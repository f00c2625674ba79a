"""Noise: METHOD.md's rule parsing and its draw, seeded on the CPU."""

import pytest
import torch

from nnct.errors import ConfigError
from nnct.noise import draw, parse


def test_rules_and_levels():
    assert parse("s3").level(0.5) == 1.5
    assert parse("s2.5").level(2.0) == 5.0
    assert parse("s0").level(1.0) == 0.0
    assert parse("0.25").level(None) == 0.25 and parse(0.25).rule == "0.25"
    with pytest.raises(ConfigError):
        parse("s3").level(None)


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "three", "s", "3s"])
def test_bad_levels(bad):
    with pytest.raises(ConfigError):
        parse(bad)


def test_draw_is_methods_formula():
    g = torch.Generator("cpu").manual_seed(7)
    expected = torch.randn(4, 2, 8, generator=g, dtype=torch.float32) * 0.5
    got = draw(7, 4, 2, 8, 0.5)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.equal(got, expected)
    assert not torch.equal(draw(8, 4, 2, 8, 0.5), expected)
