"""Metrics pinned by hand-computed values."""
import math

import numpy as np
import pytest

from medpt.metrics import compute_classification_metrics


def _onehot_logits(pred, c, scale=5.0):
    z = np.zeros((len(pred), c))
    z[np.arange(len(pred)), pred] = scale
    return z


def test_three_class_hand_computed():
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    m = compute_classification_metrics(y, _onehot_logits(pred, 3), ["a", "b", "c"])
    assert m["acc"] == pytest.approx(100 * 4 / 6)
    # F1: class0 p=1/2 r=1/2 -> .5; class1 p=2/3 r=1 -> .8; class2 p=1 r=1/2 -> 2/3
    assert m["macro_f1"] == pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3)
    # kappa: po = 4/6; pe = (2*2 + 2*3 + 2*1)/36 = 12/36
    assert m["kappa"] == pytest.approx(100 * (4 / 6 - 1 / 3) / (1 - 1 / 3))
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert [pc["acc"] for pc in m["per_class"]] == pytest.approx([50.0, 100.0, 50.0])
    assert m["auc_classes"] == 3


def test_binary_auc_hand_computed():
    # probabilities of class 1 after softmax are monotone in the logit difference
    y = [0, 0, 1, 1]
    s = np.array([0.1, 0.6, 0.4, 0.9])  # pairs (pos > neg): (0.4>0.1),(0.9>0.1),(0.9>0.6) = 3 of 4
    logits = np.stack([np.zeros(4), s], axis=1)
    m = compute_classification_metrics(y, logits)
    assert m["auc"] == pytest.approx(75.0)


def test_absent_class_left_out_of_auc_and_counts_zero_in_f1():
    y = [0, 0, 1, 1]          # class 2 absent from the test labels
    logits = np.array([[3, 1, 0], [2, 1, 0], [0, 2, 1], [1, 3, 0]], dtype=float)
    m = compute_classification_metrics(y, logits)
    assert m["auc_classes"] == 2
    assert m["acc"] == 100.0
    # class 2 never true nor predicted -> F1 0 over the full label set: (1 + 1 + 0) / 3
    assert m["macro_f1"] == pytest.approx(100 * 2 / 3)
    assert math.isnan(m["per_class"][2]["acc"]) and m["per_class"][2]["n"] == 0


def test_quadratic_kappa_hand_computed():
    y = [0, 1, 2]
    pred = [0, 2, 2]
    m = compute_classification_metrics(y, _onehot_logits(pred, 3))
    # weights w_ij = (i-j)^2/4; observed: one (1,2) error -> sum w*O = 1/4 / 3
    # expected E = outer(row, col)/n with rows (1,1,1), cols (1,0,2): sum w*E = (1*0+... )
    rows, cols = np.array([1, 1, 1]), np.array([1, 0, 2])
    w = np.array([[(i - j) ** 2 / 4 for j in range(3)] for i in range(3)])
    o = np.zeros((3, 3)); o[0, 0] = o[1, 2] = o[2, 2] = 1
    e = np.outer(rows, cols) / 3
    assert m["kappa_quadratic"] == pytest.approx(100 * (1 - (w * o).sum() / (w * e).sum()))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="labels must lie"):
        compute_classification_metrics([0, 3], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        compute_classification_metrics([0, 1], np.zeros((3, 3)))
