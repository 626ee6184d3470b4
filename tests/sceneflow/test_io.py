"""Point-cloud readers (every format, written here by hand), flow files, AV2 pairs, real samples."""

import numpy as np
import pytest

from priorlab.errors import PriorlabError
from priorlab.sceneflow import load_av2_pair, load_flow, load_points, save_flow
from priorlab.sceneflow.preprocess import ground_mask_from_height_map


def _cloud(n=50, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-40, 40, (n, 3)).astype(np.float32)
    inten = rng.integers(0, 255, n).astype(np.float32)
    return xyz, inten


# ------------------------------------------------------------------------------------------ writers
def write_pcd(path, xyz, inten, mode):
    n = len(xyz)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\n"
        f"TYPE F F F F\nCOUNT 1 1 1 1\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS "
        f"{n}\nDATA {mode}\n"
    )
    table = np.column_stack([xyz, inten]).astype("<f4")
    with open(path, "wb") as f:
        f.write(header.encode())
        if mode == "ascii":
            for row in table:
                f.write((" ".join(repr(float(v)) for v in row) + "\n").encode())
        else:
            f.write(table.tobytes())


def write_ply(path, xyz, inten, fmt):
    n = len(xyz)
    header = (
        f"ply\nformat {fmt} 1.0\ncomment made in a test\nelement vertex {n}\nproperty float x\n"
        "property float y\nproperty float z\nproperty uchar intensity\nelement face 0\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode())
        if fmt == "ascii":
            for p, i in zip(xyz, inten):
                f.write(f"{float(p[0])!r} {float(p[1])!r} {float(p[2])!r} {int(i)}\n".encode())
        else:
            e = "<" if fmt == "binary_little_endian" else ">"
            rec = np.zeros(n, dtype=[("x", e + "f4"), ("y", e + "f4"), ("z", e + "f4"), ("i", "u1")])
            rec["x"], rec["y"], rec["z"], rec["i"] = xyz[:, 0], xyz[:, 1], xyz[:, 2], inten
            f.write(rec.tobytes())


# ------------------------------------------------------------------------------------------ round trips
def test_npy_and_npz_round_trip(tmp_path):
    xyz, inten = _cloud()
    np.save(tmp_path / "a.npy", np.column_stack([xyz, inten]))
    out = load_points(tmp_path / "a.npy")
    assert out.dtype == np.float32 and out.shape == (50, 3)
    np.testing.assert_array_equal(out, xyz)
    assert load_points(tmp_path / "a.npy", columns=4)[:, 3].tolist() == inten.tolist()
    for key in ("pc", "points", "pc0"):
        np.savez(tmp_path / f"{key}.npz", **{key: xyz, "flow": xyz * 0})
        np.testing.assert_array_equal(load_points(tmp_path / f"{key}.npz"), xyz)
    np.savez(tmp_path / "only.npz", whatever=xyz.astype(np.float64))
    np.testing.assert_allclose(load_points(tmp_path / "only.npz"), xyz)
    np.savez(tmp_path / "two.npz", a=xyz, b=xyz)
    with pytest.raises(PriorlabError, match="key="):
        load_points(tmp_path / "two.npz")
    np.testing.assert_array_equal(load_points(tmp_path / "two.npz", key="b"), xyz)


@pytest.mark.parametrize("ncol", [4, 5])
def test_bin_columns_detected(tmp_path, ncol):
    xyz, inten = _cloud(
        60
    )  # 60 points: 240 floats (4-col) or 300 floats (5-col) -- both divisible by 4 and 5
    cols = [xyz, inten[:, None] / (255.0 if ncol == 4 else 1.0)]
    if ncol == 5:
        cols.append((np.arange(60) % 32).astype(np.float32)[:, None])
    arr = np.hstack(cols).astype("<f4")
    (tmp_path / "scan.bin").write_bytes(arr.tobytes())
    out = load_points(tmp_path / "scan.bin", columns=ncol)
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(load_points(tmp_path / "scan.bin", bin_columns=ncol), xyz)


def test_bin_explicit_and_bad(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 6)
    with pytest.raises(PriorlabError, match="multiple of 4"):
        load_points(tmp_path / "odd.bin")
    (tmp_path / "seven.bin").write_bytes(np.ones(7, "<f4").tobytes())
    with pytest.raises(PriorlabError, match="bin_columns"):
        load_points(tmp_path / "seven.bin")
    with pytest.raises(PriorlabError, match="bin_columns=4"):
        load_points(tmp_path / "seven.bin", bin_columns=4)


@pytest.mark.parametrize("mode", ["ascii", "binary"])
def test_pcd(tmp_path, mode):
    xyz, inten = _cloud()
    write_pcd(tmp_path / "c.pcd", xyz, inten, mode)
    out = load_points(tmp_path / "c.pcd", columns=4)
    np.testing.assert_allclose(out[:, :3], xyz, rtol=1e-6)
    np.testing.assert_allclose(out[:, 3], inten)


def test_pcd_unsupported_and_truncated(tmp_path):
    xyz, inten = _cloud()
    write_pcd(tmp_path / "c.pcd", xyz, inten, "binary")
    data = (tmp_path / "c.pcd").read_bytes()
    (tmp_path / "t.pcd").write_bytes(data[:-10])
    with pytest.raises(PriorlabError, match="truncated"):
        load_points(tmp_path / "t.pcd")
    (tmp_path / "z.pcd").write_bytes(data.replace(b"DATA binary", b"DATA binary_compressed"))
    with pytest.raises(PriorlabError, match="binary_compressed"):
        load_points(tmp_path / "z.pcd")


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply(tmp_path, fmt):
    xyz, inten = _cloud()
    write_ply(tmp_path / "c.ply", xyz, inten, fmt)
    out = load_points(tmp_path / "c.ply", columns=4)
    np.testing.assert_allclose(out[:, :3], xyz, rtol=1e-6)
    np.testing.assert_allclose(out[:, 3], inten)


def test_feather(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    xyz, inten = _cloud()
    pd.DataFrame(
        {
            "x": xyz[:, 0].astype(np.float16),
            "y": xyz[:, 1].astype(np.float16),
            "z": xyz[:, 2].astype(np.float16),
            "intensity": inten.astype(np.uint8),
        }
    ).to_feather(tmp_path / "s.feather")
    out = load_points(tmp_path / "s.feather", columns=4)
    np.testing.assert_allclose(out[:, :3], xyz.astype(np.float16).astype(np.float32))
    pd.DataFrame({"a": [1.0]}).to_feather(tmp_path / "bad.feather")
    with pytest.raises(PriorlabError, match="x, y, z"):
        load_points(tmp_path / "bad.feather")


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs(tmp_path):
    with pytest.raises(PriorlabError, match="not found"):
        load_points(tmp_path / "missing.npy")
    (tmp_path / "a.xyz").write_text("1 2 3\n")
    with pytest.raises(PriorlabError, match="unknown point-cloud extension"):
        load_points(tmp_path / "a.xyz")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(PriorlabError, match="no points"):
        load_points(tmp_path / "empty.npy")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(PriorlabError, match="empty"):
        load_points(tmp_path / "empty.bin")
    bad = np.ones((5, 3), np.float32)
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(PriorlabError, match="drop_invalid=True"):
        load_points(tmp_path / "nan.npy")
    assert load_points(tmp_path / "nan.npy", drop_invalid=True).shape == (4, 3)
    np.save(tmp_path / "flat.npy", np.ones(9, np.float32))
    with pytest.raises(PriorlabError, match="2-D"):
        load_points(tmp_path / "flat.npy")
    np.save(tmp_path / "two.npy", np.ones((4, 2), np.float32))
    with pytest.raises(PriorlabError, match="x, y, z"):
        load_points(tmp_path / "two.npy")
    np.save(tmp_path / "ok.npy", np.ones((4, 3), np.float32))
    with pytest.raises(PriorlabError, match="columns"):
        load_points(tmp_path / "ok.npy", columns=4)
    with pytest.raises(PriorlabError, match="columns must be"):
        load_points(tmp_path / "ok.npy", columns=2)
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(PriorlabError):
        load_points(tmp_path / "junk.npy")
    (tmp_path / "junk.ply").write_bytes(b"hello")
    with pytest.raises(PriorlabError, match="PLY"):
        load_points(tmp_path / "junk.ply")
    (tmp_path / "junk.pcd").write_bytes(b"hello world")
    with pytest.raises(PriorlabError, match="PCD"):
        load_points(tmp_path / "junk.pcd")
    with pytest.raises(PriorlabError, match="directory"):
        load_points(tmp_path)


def test_every_message_is_one_line(tmp_path):
    (tmp_path / "a.foo").write_text("x")
    with pytest.raises(PriorlabError) as e:
        load_points(tmp_path / "a.foo")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ flow files
def test_flow_round_trip(tmp_path):
    flow = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    p = save_flow(tmp_path / "out" / "f.npz", flow, iterations=12, method="nsfp")
    d = load_flow(p)
    np.testing.assert_array_equal(d["flow"], flow)
    assert int(d["iterations"]) == 12 and str(d["method"]) == "nsfp"
    with pytest.raises(PriorlabError, match=r"\.npz"):
        save_flow(tmp_path / "f.npy", flow)
    with pytest.raises(PriorlabError, match=r"\(N, 3\)"):
        save_flow(tmp_path / "g.npz", flow[:, :2])
    np.savez(tmp_path / "noflow.npz", a=flow)
    with pytest.raises(PriorlabError, match="no 'flow'"):
        load_flow(tmp_path / "noflow.npz")


# ------------------------------------------------------------------------------------------ real samples
def test_real_format_samples(sample):
    kitti = load_points(sample("format_samples/kitti_object_000008.bin"), columns=4)
    assert kitti.shape == (17238, 4) and kitti[:, 3].max() <= 1.0
    nus = load_points(
        sample("format_samples/nuscenes_n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"),
        columns=5,
    )
    assert nus.shape == (34688, 5) and nus[:, 4].max() <= 31 and np.all(nus[:, 4] == np.round(nus[:, 4]))
    ply = load_points(
        sample("format_samples/argoverse1_d60558d2-d1aa-34ee-a902-e061e346e02a__PC_315971347819783000.ply"),
        columns=5,
    )
    assert ply.shape == (91083, 5) and ply[:, 4].max() <= 31
    pcd = load_points(sample("fast_gicp_pcd_pair/251370668.pcd"), columns=4)
    assert pcd.shape == (69088, 4)
    assert load_points(sample("opensceneflow_test_pair/test_pc0.npy")).shape == (88132, 3)
    assert load_points(sample("kitti_velodyne_seq6_patchworkpp/000000.bin")).shape == (124668, 3)


def test_real_av2_pair_raw_matches_npz(sample):
    pytest.importorskip("pyarrow")
    npz = load_av2_pair(sample("av2_api_val_pair/pair_7fab2350_315966265259836000.npz"))
    raw = load_av2_pair(sample("av2_api_val_pair/raw/7fab2350-7eaf-3b7e-a39d-6937a4c1bede"))
    for k in ("pc0", "pc1", "flow", "classes", "dynamic", "is_ground0", "eval_mask", "ego_motion"):
        np.testing.assert_array_equal(raw[k], npz[k])
    assert raw["pc0"].shape == (99229, 3) and raw["eval_mask"].sum() == 78506
    # flow convention: background flow == ego-motion flow
    bg = (raw["classes"] == 0) & ~raw["dynamic"]
    np.testing.assert_allclose(raw["flow"][bg], raw["ego_flow"][bg], atol=1e-4)
    # the map ground-height raster reproduces the official ground labels
    g = ground_mask_from_height_map(
        raw["pc0"], raw["ground_height"], raw["ground_height_sim2"], city_SE3_ego=raw["city_SE3_ego0"]
    )
    assert (g == raw["is_ground0"]).mean() > 0.999


def test_av2_pair_bad_path(tmp_path):
    with pytest.raises(PriorlabError, match="neither an AV2 log"):
        load_av2_pair(tmp_path)
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(PriorlabError, match="missing pc0"):
        load_av2_pair(tmp_path / "x.npz")
