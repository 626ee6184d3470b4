"""Issue 16 (scene flow): real-world coordinates, degenerate fits, loader and pose checks, CLI outputs.

Each test here failed before the fix it names.
"""

import sys
import warnings

import numpy as np
import pytest

from priorlab.errors import PriorlabError
from priorlab.sceneflow import estimate_flow, load_points
from priorlab.sceneflow.cli import main
from priorlab.sceneflow.estimate import DegenerateFitWarning
from priorlab.sceneflow.trajectory import as_poses

SHIFT = np.array([0.5, -0.3, 0.1])
CHEAP = {
    "nsfp": dict(max_iters=40, hidden=32, layers=3),
    "fast": dict(max_iters=40, hidden=32, layers=3),
    "free": dict(max_iters=40),
}


@pytest.fixture(scope="module")
def cloud():
    rng = np.random.default_rng(0)
    return rng.uniform([-6, -6, 0], [6, 6, 2], (300, 3))  # float64


@pytest.mark.parametrize("method", ["nsfp", "fast", "free"])
def test_far_from_origin_gives_the_same_flow(cloud, method):
    # was: nsfp flows of 1e4-1e5 m with final_loss 0 at 1 km; fast ~30 m
    near = estimate_flow(cloud, cloud + SHIFT, method, progress=False, num_threads=1, **CHEAP[method])
    for offset in (1e3, 1e6):
        o = np.array([offset, -0.7 * offset, 0.01 * offset])
        far = estimate_flow(
            cloud + o, cloud + SHIFT + o, method, progress=False, num_threads=1, **CHEAP[method]
        )
        np.testing.assert_allclose(far.flow, near.flow, atol=2e-3)
        np.testing.assert_allclose(far.info["centre"], cloud.mean(0) + o, rtol=1e-12)
        if far.field is not None:  # the field takes world coordinates too
            np.testing.assert_allclose(far.field(cloud[:5] + o), near.field(cloud[:5]), atol=2e-3)


def test_raw_coordinates_far_away_are_flagged_not_converged(cloud):
    # the failure mode centring removes is reported here: at the start (error) or on collapse (warning)
    o = np.array([1e3, 0.0, 0.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = estimate_flow(
                cloud + o,
                cloud + o + SHIFT,
                "nsfp",
                centre=False,
                max_iters=20,
                progress=False,
                num_threads=1,
                hidden=32,
                layers=3,
            )
        except PriorlabError as e:
            assert "degenerate fit" in str(e)
            return
    assert res.info["stop_reason"] == "degenerate"
    assert any(issubclass(w.category, DegenerateFitWarning) for w in caught)


def test_float32_far_input_warns(cloud):
    far32 = (cloud + 1e6).astype(np.float32)
    with pytest.warns(UserWarning, match="float64"):
        estimate_flow(far32, far32 + np.float32(0.5), "free", max_iters=2, progress=False)


@pytest.mark.parametrize("method", ["nsfp", "free"])
def test_every_term_truncated_at_start_raises(method):
    # was: 300 copies of one point shifted by (1, 1, 1) came back as ~0 flow, "early_stopping"
    p = np.tile([[3.0, -2.0, 1.0]], (300, 1))
    with pytest.raises(PriorlabError, match="degenerate fit.*truncate"):
        estimate_flow(p, p + 1.0, method, max_iters=50, progress=False)


def test_fast_fits_the_single_point_case():
    p = np.tile([[3.0, -2.0, 1.0]], (50, 1))
    res = estimate_flow(p, p + 1.0, "fast", max_iters=300, progress=False, num_threads=1)
    np.testing.assert_allclose(res.flow.mean(0), [1, 1, 1], atol=0.1)


def test_collapse_mid_run_stops_as_degenerate(cloud):
    with pytest.warns(DegenerateFitWarning, match="iteration 1"):
        res = estimate_flow(cloud, cloud + SHIFT, "free", max_iters=20, lr=100.0, progress=False)
    assert res.info["stop_reason"] == "degenerate" and res.best_iteration == 0
    assert res.final_loss > 0 and np.abs(res.flow).max() == 0  # the start, not the meaningless loss-0 state


def test_barely_overlapping_clouds_warn():
    line = np.stack([np.linspace(0, 100, 1000), np.zeros(1000), np.zeros(1000)], 1)
    target = np.concatenate([line + [0, 50, 0], line[:1]])
    with pytest.warns(DegenerateFitWarning, match="nearly degenerate"):
        res = estimate_flow(line, target, "free", max_iters=2, progress=False)
    assert 0 < res.info["kept_share_start"] < 0.01


def test_zero_gradient_at_start_raises(cloud, monkeypatch):
    from priorlab.sceneflow import fast

    monkeypatch.setattr(fast.FastProblem, "loss", lambda self: (self.net(self.pc1) * 0).sum() + 1.0)
    with pytest.raises(PriorlabError, match="gradient is exactly zero"):
        estimate_flow(cloud, cloud + SHIFT, "fast", max_iters=5, progress=False)


def test_centring_is_a_reparametrisation_not_a_no_op(cloud):
    a = estimate_flow(cloud, cloud + SHIFT, "nsfp", progress=False, num_threads=1, **CHEAP["nsfp"])
    b = estimate_flow(
        cloud, cloud + SHIFT, "nsfp", centre=False, progress=False, num_threads=1, **CHEAP["nsfp"]
    )
    assert not np.allclose(a.flow, b.flow) and np.allclose(b.info["centre"], 0)
    with pytest.raises(PriorlabError, match="centre"):
        estimate_flow(cloud, cloud, "free", centre="yes", progress=False)


# ---------------------------------------------------------------------------------------------- poses
@pytest.mark.parametrize(
    "block, needle",
    [
        (2 * np.eye(3), "scaled or sheared"),
        (np.zeros((3, 3)), "singular"),
        (np.diag([1.0, 1.0, -1.0]), "reflection"),
    ],
)
def test_non_rigid_poses_are_rejected(block, needle):
    P = np.tile(np.eye(4), (2, 1, 1))
    P[1, :3, :3] = block
    with pytest.raises(PriorlabError, match=f"pose 1 .*{needle}"):
        as_poses(P, 2)
    P = np.tile(np.eye(4), (2, 1, 1))
    P[0, 3] = [0, 0, 1, 1]
    with pytest.raises(PriorlabError, match="bottom row"):
        as_poses(P, 2)


def test_poses_with_rounding_noise_are_accepted():
    c, s = np.cos(0.3), np.sin(0.3)
    P = np.tile(np.eye(4), (2, 1, 1))
    P[1, :3, :3] = np.round([[c, -s, 0], [s, c, 0], [0, 0, 1]], 6)
    assert as_poses(P, 2).shape == (2, 4, 4)


# ---------------------------------------------------------------------------------------------- loaders
PLY_HEAD = "ply\nformat ascii 1.0\nelement vertex 2\n{props}end_header\n1 2 3\n4 5 6\n"


@pytest.mark.parametrize(
    "header, needle",
    [
        (
            "ply\nformat ascii 1.0\nelement vertex two\nproperty float x\nproperty float y\n"
            "property float z\nend_header\n1 2 3\n",
            "COUNT",
        ),
        (PLY_HEAD.format(props="property float x\nproperty float y\nproperty float\n"), "without a name"),
        (PLY_HEAD.format(props="property float x\nproperty float x\nproperty float z\n"), "appears twice"),
    ],
)
def test_ply_header_errors_name_the_line(tmp_path, header, needle):
    f = tmp_path / "bad.ply"
    f.write_text(header)
    with pytest.raises(PriorlabError, match=needle) as e:
        load_points(f)
    assert "bad.ply" in str(e.value) and "\n" not in str(e.value)


def test_pcd_duplicated_fields_are_rejected(tmp_path):
    f = tmp_path / "dup.pcd"
    f.write_text(
        "VERSION 0.7\nFIELDS x x y z\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\nWIDTH 1\nHEIGHT 1\n"
        "POINTS 1\nDATA ascii\n1 2 3 4\n"
    )
    with pytest.raises(PriorlabError, match="dup.pcd.*x appear more than once"):
        load_points(f)


def test_feather_with_string_coordinates_is_rejected(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    f = tmp_path / "s.feather"
    pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 1.0], "z": ["a", "b"]}).to_feather(f)
    with pytest.raises(PriorlabError, match="s.feather.*'z'.*not numbers"):
        load_points(f)


@pytest.mark.parametrize("ext", [".las", ".laz"])
def test_las_and_laz_round_trip(tmp_path, ext):
    laspy = pytest.importorskip("laspy")
    if ext == ".laz" and not laspy.LazBackend.detect_available():
        pytest.skip("no LAZ backend (lazrs) installed")
    xyz = np.array([[500000.125, 4100000.5, 12.25], [500001.0, 4100002.0, 13.0]])
    las = laspy.create(point_format=1, file_version="1.2")
    las.header.scales = [0.001, 0.001, 0.001]
    las.header.offsets = [500000.0, 4100000.0, 0.0]
    las.x, las.y, las.z = xyz.T
    las.intensity = np.array([7, 9], np.uint16)
    las.write(tmp_path / f"c{ext}")
    pts = load_points(tmp_path / f"c{ext}", columns=4, dtype=np.float64)
    np.testing.assert_allclose(pts[:, :3], xyz, atol=1e-9)
    np.testing.assert_array_equal(pts[:, 3], [7, 9])
    with pytest.warns(UserWarning, match="float64"):  # UTM northings lose ~0.25 m in float32
        load_points(tmp_path / f"c{ext}")


def test_las_without_laspy_names_the_extra(tmp_path, monkeypatch):
    f = tmp_path / "c.las"
    f.write_bytes(b"LASF")
    monkeypatch.setitem(sys.modules, "laspy", None)
    with pytest.raises(PriorlabError, match=r"pip install 'priorlab\[las\]'"):
        load_points(f)


def test_corrupt_las_is_one_priorlab_error(tmp_path):
    pytest.importorskip("laspy")
    f = tmp_path / "c.las"
    f.write_bytes(b"LASF" + bytes(50))
    with pytest.raises(PriorlabError, match="c.las: unreadable LAS"):
        load_points(f)


def test_float64_loading_keeps_map_coordinates(tmp_path):
    xyz = np.array([[1e6 + 0.013, 2e6 - 0.021, 5.0]])
    np.save(tmp_path / "m.npy", xyz)
    np.testing.assert_array_equal(load_points(tmp_path / "m.npy", dtype=np.float64), xyz)
    with pytest.warns(UserWarning, match="dtype=np.float64"):
        load_points(tmp_path / "m.npy")
    with pytest.raises(PriorlabError, match="dtype"):
        load_points(tmp_path / "m.npy", dtype=np.int32)


# ---------------------------------------------------------------------------------------------- CLI
FIT = ["--max-iters", "20", "--points", "0", "--threads", "1", "--quiet", "--method", "free"]


def test_cli_checks_the_output_before_fitting(cloud, tmp_path, capsys, monkeypatch):
    import priorlab.sceneflow.estimate as est

    np.save(tmp_path / "a.npy", cloud)
    np.save(tmp_path / "b.npy", cloud + SHIFT)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(est, "estimate_flow", lambda *a, **k: pytest.fail("fitted before checking --out"))
    rc = main(
        [
            "flow",
            "estimate",
            str(tmp_path / "a.npy"),
            str(tmp_path / "b.npy"),
            "--out",
            str(tmp_path / "file" / "sub" / "flow.npz"),
            *FIT,
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out: cannot write into") and "\n" not in err


def test_cli_nan_rows_name_the_flag_and_drop_invalid_works(cloud, tmp_path, capsys):
    bad = cloud.copy()
    bad[3] = np.nan
    np.save(tmp_path / "a.npy", bad)
    np.save(tmp_path / "b.npy", cloud + SHIFT)
    argv = [
        "flow",
        "estimate",
        str(tmp_path / "a.npy"),
        str(tmp_path / "b.npy"),
        "--out",
        str(tmp_path / "f.npz"),
        *FIT,
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--drop-invalid" in err and "drop_invalid=True" not in err
    assert main(argv + ["--drop-invalid"]) == 0
    assert np.load(tmp_path / "f.npz")["flow"].shape == (len(cloud) - 1, 3)


def test_cli_map_coordinates(cloud, tmp_path, capsys):
    # was: "mean 767692288 m, final loss 0", exit 0
    o = np.array([1e6, 2e6, 30.0])
    np.save(tmp_path / "a.npy", cloud + o)
    np.save(tmp_path / "b.npy", cloud + o + SHIFT)
    np.save(tmp_path / "a0.npy", cloud)
    np.save(tmp_path / "b0.npy", cloud + SHIFT)
    args = ["--max-iters", "30", "--points", "0", "--threads", "1", "--quiet"]
    assert (
        main(
            [
                "flow",
                "estimate",
                str(tmp_path / "a.npy"),
                str(tmp_path / "b.npy"),
                "--out",
                str(tmp_path / "far.npz"),
                *args,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "flow",
                "estimate",
                str(tmp_path / "a0.npy"),
                str(tmp_path / "b0.npy"),
                "--out",
                str(tmp_path / "near.npz"),
                *args,
            ]
        )
        == 0
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "far.npz")["flow"], np.load(tmp_path / "near.npz")["flow"], atol=2e-3
    )


def test_warnings_do_not_fire_for_ordinary_input(cloud):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimate_flow(
            cloud.astype(np.float32), (cloud + SHIFT).astype(np.float32), "free", max_iters=3, progress=False
        )
