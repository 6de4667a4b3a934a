import numpy as np
import pytest

from art_some.estimators.memory import MemoryCertifier

CLASSES = (-1, 0, 1, 2)
TOL = 1e-12


def random_stream(seed, n=400, abstain_radius_zero=True):
    """Random 2-D points in the unit square with classes in {-1, 0, 1, 2} and radii up to 0.3."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0.0, 1.0, size=(n, 2))
    labels = rng.choice(CLASSES, size=n)
    radii = rng.uniform(0.0, 0.3, size=n)
    if abstain_radius_zero:
        radii[labels == -1] = 0.0  # what a smoothed classifier reports when it abstains
    return points, labels, radii


def reference(points, labels, radii):
    """The rule written out with plain loops, for comparison."""
    memory, out = [], []
    for x, c, r in zip(points, labels.tolist(), radii.tolist()):
        conflicts = []
        for x_i, c_i, r_i in memory:
            d = float(np.sqrt(np.sum((x - x_i) ** 2)))
            if d < r_i + r and c_i != c:
                conflicts.append((d - r_i, c_i, r_i - d))
        if conflicts:
            m, c_j, inner = min(conflicts, key=lambda t: t[0])
            c, r = (c_j, inner) if m < 0 else (c, m)
        memory.append((x, c, r))
        out.append((c, r, bool(conflicts)))
    return out


def pairwise(inputs):
    return np.linalg.norm(inputs[:, None, :] - inputs[None, :, :], axis=-1)


def assert_invariant(cert, dist=None):
    """Other-class pairs in the memory satisfy d >= R_i + R_k; ``dist`` may hold their distances precomputed."""
    inputs, labels, radii = cert.entries
    dist = pairwise(inputs) if dist is None else dist
    other = labels[:, None] != labels[None, :]
    slack = dist - (radii[:, None] + radii[None, :])
    assert np.all(slack[other] >= -TOL)


STREAMS = [(seed, zero) for seed in (0, 1, 2) for zero in (True, False)]


@pytest.mark.parametrize("seed,abstain_radius_zero", STREAMS)
def test_matches_reference_rule(seed, abstain_radius_zero):
    points, labels, radii = random_stream(seed, abstain_radius_zero=abstain_radius_zero)
    got = MemoryCertifier().process(points, labels, radii)
    want = reference(points, labels, radii)
    np.testing.assert_array_equal(got[0], [w[0] for w in want])
    np.testing.assert_allclose(got[1], [w[1] for w in want], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(got[2], [w[2] for w in want])
    # The stream must exercise both branches of step 4, or the comparison proves little.
    relabelled = got[0] != labels
    assert relabelled.sum() >= 10 and (got[2] & ~relabelled).sum() >= 10 and (~got[2]).sum() >= 10


@pytest.mark.parametrize("seed,abstain_radius_zero", STREAMS)
def test_a_other_class_balls_never_intersect(seed, abstain_radius_zero):
    points, labels, radii = random_stream(seed, abstain_radius_zero=abstain_radius_zero)
    dist = pairwise(points)  # the memory holds the inputs unchanged, so their distances can be computed once
    cert = MemoryCertifier()
    for k, (x, c, r) in enumerate(zip(points, labels, radii), start=1):
        cert.query(x, c, r)
        assert_invariant(cert, dist[:k, :k])
    np.testing.assert_array_equal(cert.entries[0], points)
    assert_invariant(cert)


def test_b_query_inside_other_class_ball_takes_its_class_and_inner_radius():
    cert = MemoryCertifier()
    cert.query([0.0, 0.0], 1, 1.0)
    cert.query([3.0, 0.0], 2, 1.0)
    cert.query([0.0, 3.0], -1, 0.0)
    # d = 0.5 from ball (0, 0), far from the others: the answer is (1, 1 - 0.5) whatever was asked.
    assert cert.query([0.3, 0.4], 0, 2.0) == (1, pytest.approx(0.5, abs=1e-15), True)
    assert cert.query([-0.6, 0.0], -1, 0.0) == (1, pytest.approx(0.4, abs=1e-15), True)
    assert cert.query([0.0, 0.0], 2, 0.1) == (1, 1.0, True)  # the memorised centre itself


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_b_random_queries_inside_memorised_balls(seed):
    rng = np.random.default_rng(100 + seed)
    base = MemoryCertifier()
    base.process(*random_stream(seed, n=60))  # a sparse memory, so that many probes sit in a single ball
    inputs, labels, radii = base.entries
    checked = 0
    for _ in range(200):
        cert = MemoryCertifier()  # a fresh copy each time, so the probes do not pile up in the memory
        cert.load_state_dict(base.state_dict())
        j = rng.choice(np.flatnonzero(radii > 0.05))
        direction = rng.normal(size=2)
        x = inputs[j] + rng.uniform(0.0, 0.95) * radii[j] * direction / np.linalg.norm(direction)
        c = rng.choice([k for k in CLASSES if k != labels[j]])
        d = np.linalg.norm(inputs - x, axis=1)
        inside = d < radii
        # Every ball holding x has class c_j (invariant); the deepest one sets the radius.
        assert np.all(labels[inside] == labels[j])
        label, radius, changed = cert.query(x, c, rng.uniform(0.0, 0.3))
        assert (label, changed) == (labels[j], True)
        assert radius == pytest.approx(np.max(radii[inside] - d[inside]), rel=1e-12)
        if inside.sum() == 1:
            assert radius == pytest.approx(radii[j] - d[j], rel=1e-12)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_conflict_free_queries_unchanged(seed):
    points, labels, radii = random_stream(seed)
    cert = MemoryCertifier()
    unchanged = 0
    for x, c, r in zip(points, labels, radii):
        inputs, mem_labels, mem_radii = cert.entries
        conflict = len(inputs) and np.any(
            (np.linalg.norm(inputs - x, axis=1) < mem_radii + r) & (mem_labels != c)
        )
        result = cert.query(x, c, r)
        if not conflict:
            assert result == (c, r, False)
            unchanged += 1
        else:
            assert result[2] is True
    assert unchanged >= 50
    # A query far from everything is returned as given.
    assert cert.query([10.0, 10.0], 2, 0.7) == (2, 0.7, False)


def test_d_same_class_overlaps_untouched():
    cert = MemoryCertifier()
    assert cert.query([0.0, 0.0], 0, 1.0) == (0, 1.0, False)
    assert cert.query([0.5, 0.0], 0, 1.0) == (0, 1.0, False)
    assert cert.query([0.0, 0.0], 0, 3.0) == (0, 3.0, False)  # same point, bigger ball
    assert cert.query([-1.0, 0.0], -1, 0.0) == (0, pytest.approx(2.0), True)  # inside the 3.0 ball


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_d_random_memory_keeps_same_class_overlaps(seed):
    cert = MemoryCertifier()
    cert.process(*random_stream(seed))
    inputs, labels, radii = cert.entries
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    overlap = pairwise(inputs) < radii[:, None] + radii[None, :]
    assert np.sum(same & overlap) >= 20


@pytest.mark.parametrize("seed,abstain_radius_zero", STREAMS)
def test_e_issued_certificates_hold_for_later_queries(seed, abstain_radius_zero):
    points, labels, radii = random_stream(seed, abstain_radius_zero=abstain_radius_zero)
    cert = MemoryCertifier()
    issued_x, issued_c, issued_r = np.empty((0, 2)), np.empty(0, dtype=int), np.empty(0)
    covered = 0
    for x, c, r in zip(points, labels, radii):
        label, radius, _ = cert.query(x, c, r)
        # Stay clear of ball boundaries, where the rounding of two distance computations could differ.
        inside = np.linalg.norm(issued_x - x, axis=1) < issued_r - 1e-9
        assert np.all(issued_c[inside] == label)
        covered += inside.any()
        issued_x = np.vstack([issued_x, x])
        issued_c, issued_r = np.append(issued_c, label), np.append(issued_r, radius)
    assert covered >= 50
    # A consequence of the invariant: no answered input lies inside another class's ball, earlier or later.
    dist = pairwise(issued_x)
    other = issued_c[:, None] != issued_c[None, :]
    assert np.all((dist - issued_r[None, :])[other] >= -TOL)


def test_f_query_order_changes_outputs():
    # A = (0, 0) says class 0 with radius 2; B = (0.5, 0) says class 1 with radius 1. Whoever comes first wins:
    # A first: B lies inside A's ball, so B becomes class 0 with radius 2 - 0.5 = 1.5.
    # B first: A lies inside B's ball, so A becomes class 1 with radius 1 - 0.5 = 0.5.
    x, labels, radii = np.array([[0.0, 0.0], [0.5, 0.0]]), np.array([0, 1]), np.array([2.0, 1.0])
    out = MemoryCertifier().process(x, labels, radii, order=[0, 1])
    np.testing.assert_array_equal(out[0], [0, 0])
    np.testing.assert_array_equal(out[1], [2.0, 1.5])
    np.testing.assert_array_equal(out[2], [False, True])
    out = MemoryCertifier().process(x, labels, radii, order=[1, 0])
    np.testing.assert_array_equal(out[0], [1, 1])
    np.testing.assert_array_equal(out[1], [0.5, 1.0])
    np.testing.assert_array_equal(out[2], [True, False])
    # Disjoint centres, overlapping balls (d = 1.5 < 1 + 1): the later one shrinks to 1.5 - 1 = 0.5.
    x, labels, radii = np.array([[0.0, 0.0], [1.5, 0.0]]), np.array([0, 1]), np.array([1.0, 1.0])
    out = MemoryCertifier().process(x, labels, radii, order=[0, 1])
    np.testing.assert_array_equal(out[0], [0, 1])
    np.testing.assert_array_equal(out[1], [1.0, 0.5])
    out = MemoryCertifier().process(x, labels, radii, order=[1, 0])
    np.testing.assert_array_equal(out[0], [0, 1])
    np.testing.assert_array_equal(out[1], [0.5, 1.0])


def test_zero_radius_entries_are_obstacles():
    # An abstention (-1, 0) memorised at (1, 0) keeps a later class-0 ball from covering it.
    cert = MemoryCertifier()
    cert.query([1.0, 0.0], -1, 0.0)
    assert cert.query([0.0, 0.0], 0, 2.0) == (0, 1.0, True)
    # Touching balls (d = R_i + R) are not in conflict.
    assert cert.query([3.0, 0.0], 1, 2.0) == (1, 2.0, False)


@pytest.mark.parametrize("seed", [0, 1])
def test_process_order_equals_sequential_queries(seed):
    points, labels, radii = random_stream(seed, n=200)
    order = np.random.default_rng(seed).permutation(200)
    batch = MemoryCertifier()
    got = batch.process(points, labels, radii, order=order)
    assert got[0].dtype == np.int64 and got[1].dtype == np.float64 and got[2].dtype == bool
    seq = MemoryCertifier()
    want = {int(i): seq.query(points[i], labels[i], radii[i]) for i in order}
    for i in range(200):
        assert (got[0][i], got[1][i], bool(got[2][i])) == want[i]
    for a, b in zip(batch.entries, seq.entries):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(batch.entries[0], points[order])  # memory is in query order


def test_process_flattens_inputs_and_continues_memory():
    points, labels, radii = random_stream(3, n=60)
    images = points.reshape(60, 1, 2, 1)
    flat = MemoryCertifier().process(points, labels, radii)
    cert = MemoryCertifier()
    first = cert.process(images[:30], labels[:30], radii[:30])
    second = cert.process(images[30:], labels[30:], radii[30:])
    for whole, a, b in zip(flat, first, second):
        np.testing.assert_array_equal(whole, np.concatenate([a, b]))
    twin = MemoryCertifier()
    twin.process(points, labels, radii)
    assert cert.query(images[5, 0], 2, 0.2) == twin.query(points[5], 2, 0.2)  # query flattens too
    assert len(cert) == 61
    cert.reset()
    assert len(cert) == 0 and cert.entries[0].shape == (0, 0)
    cert.query([1.0, 2.0, 3.0], 0, 1.0)  # a new dimension after reset is fine


def test_entries_are_read_only_copies():
    cert = MemoryCertifier()
    cert.query([0.0, 0.0], 0, 1.0)
    inputs, labels, radii = cert.entries
    with pytest.raises(ValueError):
        radii[0] = 5.0
    state = cert.state_dict()
    state["radii"][0] = 5.0
    assert cert.entries[2][0] == 1.0


@pytest.mark.parametrize("abstain_radius_zero", [True, False])
def test_state_dict_round_trip_continues_identically(abstain_radius_zero):
    points, labels, radii = random_stream(7, n=300, abstain_radius_zero=abstain_radius_zero)
    whole = MemoryCertifier()
    expected = whole.process(points, labels, radii)
    first = MemoryCertifier()
    first.process(points[:137], labels[:137], radii[:137])
    resumed = MemoryCertifier()
    resumed.load_state_dict(first.state_dict())
    assert len(resumed) == 137
    rest = resumed.process(points[137:], labels[137:], radii[137:])
    for a, b in zip(expected, rest):
        np.testing.assert_array_equal(a[137:], b)
    for a, b in zip(whole.entries, resumed.entries):
        np.testing.assert_array_equal(a, b)
    empty = MemoryCertifier()
    empty.load_state_dict(MemoryCertifier().state_dict())
    assert len(empty) == 0 and empty.query([0.0], 1, 1.0) == (1, 1.0, False)


def test_bad_arguments_raise_value_error_naming_them():
    x, labels, radii = np.zeros((3, 2)), np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3])
    cert = MemoryCertifier()
    cert.query([5.0, 5.0], 0, 1.0)
    bad_process = [
        ("labels", dict(labels=labels[:2])),
        ("radii", dict(radii=radii[:2])),
        ("radii", dict(radii=[0.1, -0.2, 0.3])),
        ("radii", dict(radii=[0.1, np.nan, 0.3])),
        ("labels", dict(labels=[0, -2, 1])),
        ("labels", dict(labels=[0, 0.5, 1])),
        ("order", dict(order=[0, 0, 1])),
        ("order", dict(order=[0, 1])),
        ("order", dict(order=[0.0, 1.0, 2.0])),
        ("x", dict(x=np.full((3, 2), np.inf))),
        ("x", dict(x=np.zeros(3))),
        ("x", dict(x=np.zeros((3, 4)))),  # the memory holds 2-D inputs
    ]
    for name, change in bad_process:
        args = dict(x=x, labels=labels, radii=radii) | change
        with pytest.raises(ValueError, match=name):
            cert.process(**args)
        assert len(cert) == 1  # checked before anything was memorised
    bad_query = [
        ("radius", ([0.0, 0.0], 0, -0.1)),
        ("radius", ([0.0, 0.0], 0, np.inf)),
        ("radius", ([0.0, 0.0], 0, [0.1])),
        ("label", ([0.0, 0.0], -2, 0.1)),
        ("label", ([0.0, 0.0], 1.5, 0.1)),
        ("x", ([np.nan, 0.0], 0, 0.1)),
        ("x", ([0.0, 0.0, 0.0], 0, 0.1)),
    ]
    for name, args in bad_query:
        with pytest.raises(ValueError, match=name):
            cert.query(*args)
    assert len(cert) == 1
    with pytest.raises(ValueError, match="state"):
        cert.load_state_dict({"inputs": np.zeros((2, 2)), "labels": [0, 1]})
    with pytest.raises(ValueError, match="state"):
        cert.load_state_dict({"inputs": np.zeros((2, 2)), "labels": [0, 1], "radii": [0.1]})
