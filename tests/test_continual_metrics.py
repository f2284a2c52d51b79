"""Continual-learning metrics against values worked out by hand (llmrl/continual/metrics.py)."""

from __future__ import annotations

import pytest

from llmrl.continual.metrics import normalise, stream_metrics

#: Row 0 the untouched model; row i after stage i; column j stage j + 1.
R = [[0.1, 0.2, 0.0],
     [0.9, 0.3, 0.1],
     [0.5, 0.8, 0.4],
     [0.6, 0.7, 0.9]]


def test_three_stages_by_hand():
    m = stream_metrics(R)
    assert m.acc == pytest.approx((0.6 + 0.7 + 0.9) / 3)
    assert m.bwt == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 2)  # -0.2: stages 1 and 2 lost ground
    assert m.fwt == pytest.approx(((0.3 - 0.2) + (0.4 - 0.0)) / 2)  # 0.25: earlier stages helped the next
    assert m.forgetting == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7)) / 2)  # best earlier score minus final
    assert m.plasticity == pytest.approx([0.9, 0.8, 0.9])


def test_forgetting_measures_from_the_best_earlier_score_bwt_from_the_diagonal():
    # stage 1 peaks after stage 2 (0.9), not right after it was learned (0.5)
    r = [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.9, 1.0, 0.0], [0.6, 0.8, 1.0]]
    m = stream_metrics(r)
    assert m.bwt == pytest.approx(((0.6 - 0.5) + (0.8 - 1.0)) / 2)
    assert m.forgetting == pytest.approx(((0.9 - 0.6) + (1.0 - 0.8)) / 2)
    # a stage that ends above every earlier score counts as negative forgetting, as in the definition
    assert stream_metrics([[0.0, 0.0], [0.5, 0.0], [0.7, 1.0]]).forgetting == pytest.approx(-0.2)


def test_one_stage_has_no_transfer_and_bad_shapes_are_refused():
    m = stream_metrics([[0.2], [0.7]])
    assert (m.acc, m.bwt, m.fwt, m.forgetting, m.plasticity) == (0.7, None, None, None, [0.7])
    with pytest.raises(ValueError, match=r"\(T\+1\) x T"):
        stream_metrics([[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match=r"\(T\+1\) x T"):
        stream_metrics([[0.1]])


def test_normalise_per_stage():
    raw = [[10.0, -200.0], [500.0, -110.0]]
    got = normalise(raw, low=[10.0, -200.0], high=[500.0, -100.0])
    assert got == [[0.0, 0.0], [1.0, pytest.approx(0.9)]]
    with pytest.raises(ValueError, match="equal"):
        normalise(raw, low=[1.0, 2.0], high=[1.0, 3.0])
    with pytest.raises(ValueError, match="one low and one high"):
        normalise(raw, low=[1.0], high=[2.0])
