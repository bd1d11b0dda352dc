"""lib.parallel.run_jobs and lib.potts_jobs.train_mlm_jobs: the process pool gives the loop's results."""

from __future__ import annotations

import pytest
import torch

from lib import potts as P
from lib import potts_jobs as PJ
from lib.parallel import run_jobs


def _affine(shared: float, a: float, b: float) -> float:
    return shared * a + b


def _fail(shared: object, x: int) -> int:
    if x == 2:
        raise RuntimeError("job 2 fails")
    return x


def test_run_jobs_matches_loop_in_order() -> None:
    jobs = [(float(a), float(-a)) for a in range(7)]
    loop = run_jobs(_affine, jobs, shared=3.0, workers=1)
    assert loop == [3.0 * a - a for a in range(7)]
    assert run_jobs(_affine, jobs, shared=3.0, workers=2) == loop


def test_run_jobs_raises_the_job_error() -> None:
    with pytest.raises(RuntimeError, match="job 2 fails"):
        run_jobs(_fail, [(i,) for i in range(4)], workers=2)


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [
        ({"jobs": [], "workers": 1}, ValueError),
        ({"jobs": [(1.0, 2.0)], "workers": 0}, ValueError),
        ({"jobs": [(1.0, 2.0)], "workers": True}, ValueError),
        ({"jobs": [[1.0, 2.0]], "workers": 1}, TypeError),
        ({"jobs": "ab", "workers": 1}, TypeError),
    ],
)
def test_run_jobs_bad_input(kwargs: dict, err: type) -> None:
    with pytest.raises(err):
        run_jobs(_affine, shared=1.0, **kwargs)


def _data(L: int = 5, C: int = 3, R: int = 2, M: int = 64):
    g = torch.Generator().manual_seed(0)
    teacher = P.PottsModel(
        P.chain_couplings(L, generator=g),
        P.random_colour_couplings(C, generator=g),
        1.0,
    )
    s = P.heat_bath(
        teacher, R * M + 40, 30, generator=torch.Generator().manual_seed(1)
    )[-1]
    return s[: R * M].reshape(R, M, L), s[R * M :], C


def test_train_mlm_jobs_pool_is_bitwise_the_loop() -> None:
    tr, va, C = _data()
    protocol = {
        "batch_size": 32,
        "max_steps": 60,
        "eval_every": 10,
        "patience": 2,
        "warmup": 5,
        "lr_drops": 1,
    }
    vk = (("d_model", 8), ("n_layers", 2), ("n_heads", 2), ("d_ff", 16))
    jobs = [
        PJ.MLMJob("factored", 3, 0, (1e-2, 3e-2), 11),
        PJ.MLMJob("vanilla", 4, 1, (1e-2,), 12, vk),
        PJ.MLMJob("vanilla", 5, 0, (3e-3, 1e-2), 13, vk),
    ]
    loop = PJ.train_mlm_jobs(jobs, tr, va, C, workers=1, **protocol)
    pool = PJ.train_mlm_jobs(jobs, tr, va, C, workers=2, **protocol)
    for (m1, r1, s1), (m2, r2, s2) in zip(loop, pool):
        assert r1 == r2 and s1 == s2
        for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2)
    # the loop is the one-model routine it wraps, job by job
    m, r, s = P.train_mlm_select_lr(
        lambda: PJ.make_mlm_model("vanilla", 5, C, init_seed=5, **dict(vk)),
        tr[0],
        va,
        lrs=(3e-3, 1e-2),
        seed=13,
        **protocol,
    )
    assert r == loop[2][1] and s == loop[2][2]
    assert all(
        torch.equal(a, b)
        for a, b in zip(m.state_dict().values(), loop[2][0].state_dict().values())
    )


def test_train_mlm_jobs_bad_input() -> None:
    tr, va, C = _data()
    job = PJ.MLMJob("factored", 0, 0, (1e-2,), 1)
    with pytest.raises(ValueError, match="R, M, L"):
        PJ.train_mlm_jobs([job], tr[0], va, C)
    with pytest.raises(ValueError, match="training sets"):
        PJ.train_mlm_jobs([PJ.MLMJob("factored", 0, 5, (1e-2,), 1)], tr, va, C)
    with pytest.raises(TypeError, match="MLMJob"):
        PJ.train_mlm_jobs([("factored", 0)], tr, va, C)
    with pytest.raises(ValueError, match="empty"):
        PJ.train_mlm_jobs([], tr, va, C)
    with pytest.raises(ValueError, match="sites"):
        PJ.train_mlm_jobs([job], tr, va[:, :3], C)
    with pytest.raises(ValueError, match="kind"):
        PJ.make_mlm_model("lstm", 5, C, init_seed=0)
