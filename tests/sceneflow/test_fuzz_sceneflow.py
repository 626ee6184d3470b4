"""Property-based tests (Hypothesis) for scene flow: loaders and equivariance.

* Generated PCD / PLY / bin / npz / feather files load back exactly (x, y, z first, whatever the field
  order); mutated ones (truncated, bytes flipped, header tokens replaced) load as finite float32
  (N, 3) arrays or raise PriorlabError -- never another exception type.
* A pair moved by a rigid transform -- offsets up to 1e6 m, rotations about z or any axis -- gives
  the same flow, rotated back: exactly (2 mm) for translations, which centring makes exact for every
  method; to 2 cm (mean) for rotations of converged fits ("free" and a small "nsfp"; "fast" is left
  out: its distance grid is axis-aligned, so rotations change its 0.1 m discretisation).

Profiles: ``sceneflow-ci`` (default; bounded, derandomized, ~25 s on 2 cores) and ``sceneflow-long``
(``HYPOTHESIS_PROFILE=long``, by hand).
"""

import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from priorlab.errors import PriorlabError
from priorlab.sceneflow import estimate_flow, load_points

settings.register_profile(
    "sceneflow-ci",
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "sceneflow-long",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LONG = os.environ.get("HYPOTHESIS_PROFILE", "") == "long"
PROFILE = settings.get_profile("sceneflow-long" if LONG else "sceneflow-ci")


def fuzz(max_examples: int):
    """The active profile, with this test's CI example budget (the long profile keeps its own)."""
    return settings(PROFILE, max_examples=PROFILE.max_examples if LONG else max_examples)


# ---------------------------------------------------------------------------------------------- files
coordinate = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@st.composite
def cloud_files(draw):
    """(format, file bytes or writer, xyz float32 (n, 3))."""
    n = draw(st.integers(1, 30))
    xyz = np.array(
        draw(st.lists(st.tuples(coordinate, coordinate, coordinate), min_size=n, max_size=n)),
        dtype=np.float32,
    )
    extra = draw(st.integers(0, 2))
    names = ["x", "y", "z"] + [f"e{i}" for i in range(extra)]
    order = draw(st.permutations(names))
    table = np.zeros((n, len(names)), np.float32)
    table[:, :3] = xyz
    table[:, 3:] = np.arange(n * extra, dtype=np.float32).reshape(n, extra)
    cols = [names.index(c) for c in order]
    fmt = draw(
        st.sampled_from(
            [
                "pcd_ascii",
                "pcd_binary",
                "ply_ascii",
                "ply_binary_little_endian",
                "ply_binary_big_endian",
                "bin",
                "npz",
                "feather",
            ]
        )
    )
    return fmt, order, table[:, cols], xyz


def _write(path_base, fmt, order, table):
    n = len(table)
    if fmt.startswith("pcd"):
        mode = fmt.split("_")[1]
        k = len(order)
        head = (
            f"VERSION 0.7\nFIELDS {' '.join(order)}\nSIZE {' '.join(['4'] * k)}\nTYPE {' '.join(['F'] * k)}\n"
            f"COUNT {' '.join(['1'] * k)}\nWIDTH {n}\nHEIGHT 1\n"
            f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {mode}\n"
        )
        body = (
            "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in table).encode()
            if mode == "ascii"
            else table.astype("<f4").tobytes()
        )
        path = path_base.with_suffix(".pcd")
        path.write_bytes(head.encode() + body)
    elif fmt.startswith("ply"):
        mode = fmt[4:]
        props = "".join(f"property float {c}\n" for c in order)
        head = f"ply\nformat {mode} 1.0\ncomment fuzz\nelement vertex {n}\n{props}end_header\n"
        if mode == "ascii":
            body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in table).encode()
        else:
            body = table.astype(("<" if "little" in mode else ">") + "f4").tobytes()
        path = path_base.with_suffix(".ply")
        path.write_bytes(head.encode() + body)
    elif fmt == "bin":
        path = path_base.with_suffix(".bin")
        path.write_bytes(table.astype("<f4").tobytes())
    elif fmt == "npz":
        path = path_base.with_suffix(".npz")
        np.savez(path, points=table)
    else:
        pd = pytest.importorskip("pandas")
        pytest.importorskip("pyarrow")
        path = path_base.with_suffix(".feather")
        pd.DataFrame({c: table[:, i] for i, c in enumerate(order)}).to_feather(path)
    return path


def _load(path, fmt, order):
    if fmt == "bin":  # raw records carry no names: the layout is the caller's; give it
        return load_points(path, bin_columns=len(order))
    return load_points(path)


@fuzz(40)
@given(spec=cloud_files())
def test_generated_files_load_back_exactly(tmp_path_factory, spec):
    fmt, order, table, xyz = spec
    path = _write(tmp_path_factory.mktemp("gen") / "c", fmt, order, table)
    got = _load(path, fmt, order)
    expected = table[:, :3] if fmt in ("bin", "npz") else xyz  # unnamed columns: the first three are x, y, z
    np.testing.assert_array_equal(got, expected)


MUTATIONS = ("truncate", "flip", "token", "insert")
TOKENS = (
    b"x",
    b"y",
    b"z",
    b"",
    b"-1",
    b"0",
    b"999999999",
    b"abc",
    b"list uchar int",
    b"double",
    b"F",
    b"8",
    b"binary",
    b"ascii",
    b"nan",
    b"x x",
    b"\n",
    b"1e3",
)


@fuzz(60)
@given(
    spec=cloud_files(),
    mutation=st.sampled_from(MUTATIONS),
    where=st.floats(0, 1),
    token=st.sampled_from(TOKENS),
    byte=st.integers(0, 255),
)
def test_mutated_files_load_or_raise_priorlab_error(tmp_path_factory, spec, mutation, where, token, byte):
    fmt, order, table, _ = spec
    if fmt in ("npz", "feather"):  # binary containers: mutate the bytes, not a text header
        mutation = "truncate" if mutation == "token" else mutation
    path = _write(tmp_path_factory.mktemp("mut") / "c", fmt, order, table)
    data = bytearray(path.read_bytes())
    i = min(int(where * len(data)), len(data) - 1)
    if mutation == "truncate":
        data = data[:i]
    elif mutation == "flip":
        data[i] = byte
    elif mutation == "insert":
        data[i:i] = bytes([byte]) * 3
    else:
        words = [j for j, b in enumerate(data[:200]) if b in b" \n"]
        j = words[int(where * (len(words) - 1))] if words else 0
        end = min([k for k in (data.find(b" ", j + 1), data.find(b"\n", j + 1)) if k >= 0] or [len(data)])
        data[j + 1 : end] = token
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            got = _load(path, fmt, order)
        except PriorlabError as e:
            assert "\n" not in str(e) and path.name in str(e)
            return
    assert got.dtype == np.float32 and got.ndim == 2 and got.shape[1] == 3 and len(got) > 0
    assert np.isfinite(got).all()


# ---------------------------------------------------------------------------------------------- equivariance
SHIFT = np.array([0.2, -0.1, 0.05])


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(1)
    pc = rng.uniform([-6, -6, 0], [6, 6, 2], (150, 3))
    return pc, pc + SHIFT


_REFERENCE: dict = {}


def _reference(pair, method, opts):
    key = (method, tuple(sorted(opts.items())))
    if key not in _REFERENCE:
        _REFERENCE[key] = estimate_flow(*pair, method, progress=False, num_threads=1, **opts).flow
    return _REFERENCE[key]


offsets = st.tuples(*[st.sampled_from([1.0, 1e3, 1e6]).flatmap(lambda m: st.floats(-m, m)) for _ in range(3)])


def _rotation(axis, angle):
    axis = np.asarray(axis, float)
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


@fuzz(8)
@given(method=st.sampled_from(["nsfp", "fast", "free"]), offset=offsets)
def test_translation_equivariance(pair, method, offset):
    opts = dict(max_iters=15, hidden=32, layers=3) if method != "free" else dict(max_iters=15)
    ref = _reference(pair, method, opts)
    t = np.array(offset)
    moved = estimate_flow(pair[0] + t, pair[1] + t, method, progress=False, num_threads=1, **opts).flow
    np.testing.assert_allclose(moved, ref, atol=2e-3)


axes = st.one_of(
    st.just((0.0, 0.0, 1.0)),
    st.tuples(*[st.floats(-1, 1) for _ in range(3)]).filter(lambda a: np.linalg.norm(a) > 0.1),
)


@fuzz(6)
@given(method=st.sampled_from(["free", "nsfp"]), axis=axes, angle=st.floats(-np.pi, np.pi), offset=offsets)
def test_rotation_equivariance_of_converged_fits(pair, method, axis, angle, offset):
    opts = dict(max_iters=150, hidden=32, layers=3) if method == "nsfp" else dict(max_iters=150)
    ref = _reference(pair, method, opts)
    R = _rotation(axis, angle)
    t = np.array(offset)
    moved = estimate_flow(
        pair[0] @ R.T + t, pair[1] @ R.T + t, method, progress=False, num_threads=1, **opts
    ).flow
    back = moved.astype(np.float64) @ R  # rotate the flow back into the reference frame
    err = np.linalg.norm(back - ref, axis=1)
    assert err.mean() < 0.02 and err.max() < 0.1, (err.mean(), err.max())
