"""Scene-flow metrics on hand-made pairs with answers worked out by hand."""

import math

import numpy as np
import pytest

from priorlab.errors import PriorlabError
from priorlab.sceneflow import bucketed_epe, load_av2_pair, scene_flow_metrics, threeway_epe


def test_scene_flow_metrics_hand_made():
    gt = np.array([[1.0, 0, 0], [1.0, 0, 0], [0.1, 0, 0], [0, 2.0, 0]])
    pred = np.array(
        [
            [1.0, 0, 0],  # e = 0                      -> acc5, acc10
            [1.08, 0, 0],  # e = .08, rel .08            -> acc10 only
            [0.1, 0.06, 0],  # e = .06, rel .6             -> acc10 (abs), outlier (rel)
            [0, 2.5, 0],
        ]
    )  # e = .5,  rel .25            -> outlier
    m = scene_flow_metrics(pred, gt)
    assert set(m) == {"EPE3D", "Acc5", "Acc10", "Outliers", "angle_error"}
    assert math.isclose(m["EPE3D"], (0 + 0.08 + 0.06 + 0.5) / 4, rel_tol=1e-9)
    assert m["Acc5"] == 0.25
    assert m["Acc10"] == 0.75
    assert m["Outliers"] == 0.5
    ang = np.arctan2(0.06, 0.1)
    expected_angle = (np.arccos(1 - 1e-7) * 3 + ang) / 4  # clamped to 1 - 1e-7 as in the official code
    assert math.isclose(m["angle_error"], expected_angle, rel_tol=1e-6)


def test_relative_criterion_and_mask():
    gt = np.array([[3.0, 0, 0], [0, 0, 0]])
    pred = np.array([[3.12, 0, 0], [0.2, 0, 0]])  # e = .12 but rel = .04 < .05 -> accurate
    m = scene_flow_metrics(pred, gt, mask=np.array([True, False]))
    assert m["Acc5"] == 1.0 and m["Acc10"] == 1.0 and m["Outliers"] == 0.0
    assert math.isclose(m["EPE3D"], 0.12, rel_tol=1e-9)
    # zero ground truth: relative error explodes -> outlier even for a small absolute error
    z = scene_flow_metrics(np.array([[0.01, 0, 0]]), np.array([[0.0, 0, 0]]))
    assert z["Acc5"] == 1.0 and z["Outliers"] == 1.0
    # official NSFP quirk: a zero vector's NaN cosine becomes 0, i.e. an angle of pi/2
    assert math.isclose(z["angle_error"], math.pi / 2)


def test_av2_space_time_angle():
    gt = np.array([[0.0, 0, 0]])
    pred = np.array([[0.1, 0, 0]])
    m = scene_flow_metrics(pred, gt, angle="av2")
    assert math.isclose(m["angle_error"], math.pi / 4, rel_tol=1e-9)  # (0.1, 0.1) vs (0, 0.1) in space-time


def test_metric_input_errors():
    with pytest.raises(PriorlabError, match="pred has 2 vectors but gt has 3"):
        scene_flow_metrics(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(PriorlabError, match=r"\(N, 3\)"):
        scene_flow_metrics(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(PriorlabError, match="no points"):
        scene_flow_metrics(np.zeros((2, 3)), np.zeros((2, 3)), mask=np.zeros(2, bool))
    with pytest.raises(PriorlabError, match="boolean"):
        scene_flow_metrics(np.zeros((2, 3)), np.zeros((2, 3)), mask=np.array([1, 0]))
    with pytest.raises(PriorlabError, match="NaN"):
        scene_flow_metrics(np.full((2, 3), np.nan), np.zeros((2, 3)))
    with pytest.raises(PriorlabError, match="angle"):
        scene_flow_metrics(np.zeros((2, 3)), np.zeros((2, 3)), angle="deg")


def test_threeway_epe_hand_made():
    gt = np.zeros((6, 3))
    pred = np.zeros((6, 3))
    pred[:, 0] = [0.1, 0.3, 0.2, 0.4, 1.0, 5.0]
    classes = np.array([19, 19, 17, 0, 0, 0], np.uint8)
    dynamic = np.array([True, True, False, False, True, False])
    mask = np.array([True, True, True, True, True, False])
    r = threeway_epe(pred, gt, classes, dynamic, mask=mask, return_counts=True)
    assert (
        math.isclose(r["EPE_FD"], 0.2) and math.isclose(r["EPE_FS"], 0.2) and math.isclose(r["EPE_BS"], 0.4)
    )
    assert math.isclose(r["EPE_3way"], (0.2 + 0.2 + 0.4) / 3)
    assert (r["n_FD"], r["n_FS"], r["n_BS"]) == (2, 1, 1)  # background-dynamic point is not scored
    r2 = threeway_epe(pred, gt, np.zeros(6, int), dynamic)
    assert math.isnan(r2["EPE_FD"]) and math.isnan(r2["EPE_3way"])
    with pytest.raises(PriorlabError, match="one entry per point"):
        threeway_epe(pred, gt, classes[:5], dynamic)
    with pytest.raises(PriorlabError, match="boolean"):
        threeway_epe(pred, gt, classes, dynamic.astype(int))


def test_bucketed_epe_hand_made():
    # speeds (m/frame): background 0 (static) ; cars 0.5 and 0.5 (same bucket) ; pedestrian 0.1 ; sign ignored
    gt = np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0.1, 0, 0], [1.0, 0, 0], [0, 0, 0]], float)
    pred = gt.copy()
    pred[0, 0] += 0.02  # BACKGROUND static EPE 0.02
    pred[1, 0] += 0.1  # CAR bucket: mean EPE (0.1 + 0.3) / 2 = 0.2, mean speed 0.5 -> 0.4
    pred[2, 1] += 0.3
    pred[3, 0] += 0.05  # PEDESTRIAN: 0.05 / 0.1 = 0.5
    pred[4, 0] += 9.0  # SIGN: not in any meta-category
    classes = np.array([0, 19, 19, 17, 21, 19])
    points = np.array([[1, 1, 0]] * 5 + [[40, 0, 0]], float)  # last point outside the 35 m box
    r = bucketed_epe(pred, gt, classes, points=points)
    c = r["classes"]
    assert math.isclose(c["BACKGROUND"]["static_EPE"], 0.02)
    assert math.isnan(c["BACKGROUND"]["dynamic_normalized_EPE"])
    assert math.isclose(c["CAR"]["dynamic_normalized_EPE"], 0.4)
    assert math.isnan(c["CAR"]["static_EPE"])  # the static car is outside the box
    assert math.isclose(c["PEDESTRIAN"]["dynamic_normalized_EPE"], 0.5)
    assert math.isclose(r["mean_static_EPE"], 0.02)
    assert math.isclose(r["mean_dynamic_normalized_EPE"], (0.4 + 0.5) / 2)
    assert len(r["bucket_edges"]) == 52 and r["bucket_edges"][1] == pytest.approx(0.04)
    assert sum(c["CAR"]["counts"]) == 2
    # ego-motion: the same numbers when both flows carry an extra ego flow that is passed in
    ego = np.tile([0.7, 0.0, 0.0], (6, 1))
    r2 = bucketed_epe(pred + ego, gt + ego, classes, points=points, ego_flow=ego)
    assert math.isclose(r2["mean_dynamic_normalized_EPE"], r["mean_dynamic_normalized_EPE"])
    with pytest.raises(PriorlabError, match="pred has 6 vectors but gt has 5"):
        bucketed_epe(pred, gt[:5], classes, points=points)
    with pytest.raises(PriorlabError, match="points"):
        bucketed_epe(pred, gt, classes, points=points[:5])


def test_real_pair_reference_numbers(sample):
    """README reference: zero flow EPE 0.1475, ego-motion-only flow EPE 0.0161 on the eval mask."""
    pair = load_av2_pair(sample("av2_api_val_pair/pair_7fab2350_315966265259836000.npz"))
    m = pair["eval_mask"]
    zero = scene_flow_metrics(np.zeros_like(pair["flow"]), pair["flow"], mask=m)
    ego = scene_flow_metrics(pair["ego_flow"], pair["flow"], mask=m)
    assert zero["EPE3D"] == pytest.approx(0.1475, abs=5e-4) and zero["Acc5"] == pytest.approx(0.165, abs=1e-3)
    assert ego["EPE3D"] == pytest.approx(0.0161, abs=5e-4) and ego["Acc5"] == pytest.approx(0.977, abs=1e-3)
    three = threeway_epe(pair["ego_flow"], pair["flow"], pair["classes"], pair["dynamic"], mask=m)
    assert three["EPE_BS"] < 0.01 and three["EPE_FD"] > 0.3
