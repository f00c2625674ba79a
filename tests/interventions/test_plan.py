"""Planning: the window, the cells, the batches and the writes, against hand-made cases."""

import pytest

from nnct.errors import ConfigError
from nnct.interventions.plan import Cell, cells, count, first_layer, patches, schedule, slot, window_layers, written_layers
from nnct.interventions.components import components


@pytest.mark.parametrize(
    "layer, window, n_layers, expected",
    [
        (0, 10, 30, [0, 1, 2, 3, 4]),  # clipped below: l-5 .. l+4
        (29, 10, 30, [24, 25, 26, 27, 28, 29]),  # clipped above
        (15, 10, 30, list(range(10, 20))),
        (15, 1, 30, [15]),
        (15, 3, 30, [14, 15, 16]),  # odd: one each side
        (15, 4, 30, [13, 14, 15, 16]),  # even: one more below
        (1, 40, 4, [0, 1, 2, 3]),  # wider than the model
    ],
)
def test_window_layers(layer, window, n_layers, expected):
    assert list(window_layers(layer, window, n_layers)) == expected


def test_components_parse_and_order():
    assert components("attn,hidden") == ("hidden", "attn")
    assert components(" mlp ") == ("mlp",)
    with pytest.raises(ConfigError, match="resid"):
        components("hidden,resid")
    with pytest.raises(ConfigError):
        components("")


def test_written_layers_follow_the_site():
    assert list(written_layers(Cell(0, 7, "hidden"), 10, 30)) == [7]  # the residual stream: one layer
    assert list(written_layers(Cell(0, 7, "mlp"), 3, 30)) == [6, 7, 8]  # a sublayer: the window
    assert list(written_layers(Cell(0, 0, "attn"), 4, 30)) == [0, 1]


def test_cells_cover_every_token_layer_component_once():
    got = cells(3, 2, ("hidden", "mlp"))
    assert len(got) == 12 and len(set(got)) == 12
    assert {c.component for c in got} == {"hidden", "mlp"}


def test_first_layer():
    assert first_layer(Cell(0, 7, "hidden"), window=10, n_layers=30) == 8  # layer 7's output is the write
    assert first_layer(Cell(0, 29, "hidden"), window=10, n_layers=30) == 30  # every layer skipped
    assert first_layer(Cell(0, 7, "mlp"), window=10, n_layers=30) == 2
    assert first_layer(Cell(0, 3, "attn"), window=10, n_layers=30) == 0


def test_schedule_groups_by_first_layer_and_skips_the_clean_prefix():
    all_cells = cells(5, 2, ("hidden", "mlp"))  # 20 cells; mlp window 3 starts at layer 0 for both layers
    plan = schedule(all_cells, samples=3, batch_rows=7, window=3, n_layers=2, first_changed=2, n_tokens=5,
                    max_waste=float("inf"))
    assert sorted(plan.unchanged, key=str) == sorted([c for c in all_cells if c.token < 2], key=str)
    traced = [c for b in plan.batches for c in b.cells]
    assert sorted(traced + plan.unchanged, key=str) == sorted(all_cells, key=str)  # every cell once
    for b in plan.batches:
        assert len(b.cells) <= 2  # 7 rows hold two cells of 3 samples
        assert b.start == min(c.token for c in b.cells) >= 2
        assert all(first_layer(c, 3, 2) == b.first_layer for c in b.cells)
    # first layer 0: mlp@0, mlp@1 (6 cells); 1: hidden@0 (3 cells); 2 (none run): hidden@1 (3 cells)
    assert [b.first_layer for b in plan.batches] == [0] * 3 + [1] * 2 + [2] * 2
    one = schedule(all_cells, samples=3, batch_rows=2, window=3, n_layers=2, first_changed=0, n_tokens=5)
    assert all(len(b.cells) == 1 for b in one.batches) and len(one.batches) == 20  # at least one cell a batch


def test_patches_rows_and_window():
    batch = [Cell(4, 0, "hidden"), Cell(2, 1, "mlp")]
    got = patches(batch, samples=2, window=2, n_layers=3, n_positions=6)
    # hidden cell: rows 0,1 at layer 0; mlp cell (window 2 around layer 1 = layers 0, 1): rows 2,3.
    assert set(got) == {(0, "hidden"), (0, "mlp"), (1, "mlp")}
    assert got[(0, "hidden")].rows == [0, 1] and got[(0, "hidden")].tokens == [4, 4]
    assert got[(1, "mlp")].rows == [2, 3] and got[(1, "mlp")].tokens == [2, 2]
    assert not any(any(p.frozen) for p in got.values()) and all(p.heads is None for p in got.values())


def test_patches_of_heads_all_positions_and_severed_paths():
    batch = [Cell(3, 1, "head", head=2), Cell(4, 0, "head_all_pos", head=1), Cell(2, 0, "hidden-sever-mlp")]
    got = patches(batch, samples=1, window=1, n_layers=3, n_positions=6)
    # one head at (3, 1); head 1 at positions 4, 5 of layer 0; hidden at (2, 0) with the MLP at
    # token 2 frozen in layers 1 and 2
    assert (got[(1, "head")].rows, got[(1, "head")].tokens, got[(1, "head")].heads) == ([0], [3], [2])
    assert (got[(0, "head")].rows, got[(0, "head")].tokens, got[(0, "head")].heads) == ([1, 1], [4, 5], [1, 1])
    assert (got[(0, "hidden")].rows, got[(0, "hidden")].tokens, got[(0, "hidden")].frozen) == ([2], [2], [False])
    for layer in (1, 2):
        p = got[(layer, "mlp")]
        assert (p.rows, p.tokens, p.frozen, p.heads) == ([2], [2], [True], None)
    assert (0, "mlp") not in got


def test_cells_of_heads_and_all_positions():
    got = cells(5, 2, ("hidden", "head", "head_all_pos"), n_heads=3, first_changed=2)
    assert len(got) == count(("hidden", "head", "head_all_pos"), 5, 2, 3) == 5 * 2 + 5 * 2 * 3 + 2 * 3
    assert {c.token for c in got if c.component == "head_all_pos"} == {2}
    assert slot(Cell(4, 1, "head", 2), ("hidden", "head")) == ("restored_head", (4, 1, 2))
    assert slot(Cell(2, 1, "head_all_pos", 0), ("head_all_pos",)) == ("restored_head_all_pos", (1, 0))
    assert slot(Cell(4, 1, "hidden-sever-attn"), ("hidden", "hidden-sever-attn")) == ("restored", (4, 1, 1))
    # a severed hidden cell runs from the layer after it, as a hidden cell does; a head from its window's first layer
    assert first_layer(Cell(0, 1, "hidden-sever-mlp"), 3, 4) == 2 and first_layer(Cell(0, 2, "head", 0), 3, 4) == 1


def test_auto_batch_rows_whole_cells_within_budget():
    from conftest import make_adapter
    from nnct.exec.engine import auto_batch_rows

    adapter = make_adapter("llama")
    for n_tokens in (5, 25, 100, 1000):
        rows = auto_batch_rows(adapter, n_tokens, samples=10)
        assert rows >= 10 and rows % 10 == 0
    assert auto_batch_rows(adapter, 25, 10) >= auto_batch_rows(adapter, 100, 10)
    assert auto_batch_rows(adapter, 25, 10, budget=1) == 10  # never less than one cell
    assert auto_batch_rows(adapter, 25, 7, budget=1) == 7


def test_schedule_token_rows_gives_late_batches_more_cells():
    all_cells = cells(10, 1, ("hidden",))  # one first layer (1), tokens 0..9
    plan = schedule(all_cells, samples=2, batch_rows=100, window=1, n_layers=1, first_changed=0, n_tokens=10, token_rows=40,
                    max_waste=float("inf"))
    # start 0: 40 // (2 * 10) = 2 cells; start 2: 40 // 16 = 2; start 4: 40 // 12 = 3; start 7: 40 // 6 = 6 (3 left)
    assert [(b.start, len(b.cells)) for b in plan.batches] == [(0, 2), (2, 2), (4, 3), (7, 3)]
    capped = schedule(all_cells, samples=2, batch_rows=4, window=1, n_layers=1, first_changed=0, n_tokens=10, token_rows=40,
                      max_waste=float("inf"))
    assert max(len(b.cells) for b in capped.batches) == 2  # batch_rows still bounds memory


def test_schedule_bounds_the_positions_a_batch_recomputes():
    """Cells at tokens 0..9 of 10, one row each: a batch from token s with n cells runs
    n * (10 - s) positions where its cells need sum(10 - t); it stops before that passes 1.25x."""
    all_cells = cells(10, 1, ("hidden",))
    plan = schedule(all_cells, samples=1, batch_rows=100, window=1, n_layers=1, first_changed=0, n_tokens=10, max_waste=0.25)
    # from 0: 3 cells run 30 for 27 needed (1.11), a 4th would run 40 for 34 (1.18), a 5th 50 for 40 (1.25),
    # a 6th 60 for 45 (1.33): 5 cells; from 5: 2 cells run 10 for 9, a 3rd 15 for 12 (1.25), a 4th 20 for 14: 3;
    # from 8: 2 cells run 4 for 3 (1.33): 1; from 9: 1
    assert [(b.start, len(b.cells)) for b in plan.batches] == [(0, 5), (5, 3), (8, 1), (9, 1)]
    for b in plan.batches:
        run, need = len(b.cells) * (10 - b.start), sum(10 - c.token for c in b.cells)
        assert len(b.cells) == 1 or run <= 1.25 * need


def test_schedule_spends_a_pass_s_worth_of_positions_to_save_a_pass():
    """The cost model's slack: with none the plan is FLOPs' alone; a batch may recompute up to
    `pass_positions` rows x positions it did not need, and with unlimited slack only the rows
    bound a batch."""
    all_cells = cells(10, 1, ("hidden",))  # first layer 1 (of 1: none runs) for every cell
    plain = schedule(all_cells, samples=2, batch_rows=100, window=1, n_layers=2, first_changed=0, n_tokens=10)
    assert plain == schedule(all_cells, samples=2, batch_rows=100, window=1, n_layers=2, first_changed=0, n_tokens=10,
                             pass_positions=(0.0, 0.0, 0.0))
    # tokens 0..9, 2 rows each: a batch from token 0 needs 2*(10+9+...) and runs 2*10 per cell; waste
    # of k cells from token 0 is 2*(0+1+...+(k-1)) = k(k-1); 0.15 x need bounds it near k = 3
    assert len(plain.batches[0].cells) == 3
    # slack of 12 rows x positions: k(k-1) <= max(0.15 need, 12) -> k = 4 (waste 12), not 5 (20)
    slack = schedule(all_cells, samples=2, batch_rows=100, window=1, n_layers=2, first_changed=0, n_tokens=10,
                     pass_positions=(0.0, 12.0, 0.0))
    assert len(slack.batches[0].cells) == 4
    unlimited = schedule(all_cells, samples=2, batch_rows=8, window=1, n_layers=2, first_changed=0, n_tokens=10,
                         pass_positions=(0.0, float("inf"), 0.0))
    assert [len(b.cells) for b in unlimited.batches] == [4, 4, 2]  # 8 rows: 4 cells of 2 samples
    for plan in (plain, slack, unlimited):
        traced = [c for b in plan.batches for c in b.cells]
        assert sorted(traced, key=str) == sorted(all_cells, key=str)
        assert all(b.start == min(c.token for c in b.cells) for b in plan.batches)
