"""Corruptions: docs/method.md's noise rule and its draw, seeded on the CPU; the RunInput each
corruption becomes, and the first position where it differs from the clean prompt."""

import pytest
import torch

from nnct.errors import ConfigError
from nnct.interventions.corruption import draw, noise_input, parse, prompt_input


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


def test_noise_input_keeps_the_clean_ids_and_edits_the_span():
    noise = torch.ones(3, 2, 4)
    inp = noise_input((0, 5, 6, 7, 8), (2, 3), noise, replace=True)
    assert inp.ids.tolist() == [[0, 5, 6, 7, 8]] and inp.rows == 3
    assert inp.positions == (2, 3) and inp.replace and inp.values is noise
    assert inp.changed((0, 5, 6, 7, 8)) == 2


def test_prompt_input_changes_where_the_prompts_differ():
    inp = prompt_input((0, 5, 9, 7, 9))
    assert inp.rows == 1 and inp.values is None and inp.positions == ()
    assert inp.changed((0, 5, 6, 7, 8)) == 2
    assert inp.changed((0, 5, 9, 7, 9)) == 5  # identical: nothing changes before the end
