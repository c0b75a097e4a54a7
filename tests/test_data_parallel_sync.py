"""The data-parallel weight check compares every bit, not a summary: one differing ulp in one element
of one process fails the run loudly."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent("""
    import os
    import sys
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from extensions_lib.train.loop import Dist

    rank, init, flip = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "flip"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    params = [torch.linspace(0.5, 1.5, 1000).reshape(10, 100), torch.ones(7, dtype=torch.bfloat16)]
    if flip and rank == 1:      # the smallest possible difference: the next float after one element
        params[0][3, 41] = torch.nextafter(params[0][3, 41], torch.tensor(2.0))
    try:
        Dist(2, rank).assert_in_sync(params)
        print("IN SYNC")
    except RuntimeError as e:
        print("REFUSED:", e)
    sys.stdout.flush()
    # both processes are past every collective; leave without destroy_process_group, which on
    # torch 2.1 with a file rendezvous could hang under load once the peer had gone
    dist.barrier()
    os._exit(0)
""")


@pytest.mark.parametrize("flip", [False, True])
def test_assert_in_sync_sees_a_single_ulp(tmp_path, flip):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), init, "flip" if flip else "same"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for rank in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for out, err in outs:
        expected = "REFUSED: data-parallel processes diverged" if flip else "IN SYNC"
        assert expected in out, (out, err[-2000:])
