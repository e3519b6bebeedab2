"""The count of a model's forward passes running at once, and the thread shares it picks."""

from __future__ import annotations

import threading

from inference_engine.models.passes import RunningPasses, share_for, thread_shares


def test_passes_count_themselves_while_they_run() -> None:
    passes = RunningPasses()
    with passes.running() as first:
        assert first == 1
        with passes.running() as second:
            assert second == 2
    with passes.running() as again:
        assert again == 1


def test_the_count_is_released_when_a_pass_fails() -> None:
    passes = RunningPasses()
    try:
        with passes.running():
            raise RuntimeError("forward failed")
    except RuntimeError:
        pass
    with passes.running() as count:
        assert count == 1


def test_concurrent_passes_see_each_other() -> None:
    passes, inside, release = RunningPasses(), threading.Barrier(3), threading.Event()
    seen: list[int] = []

    def run() -> None:
        with passes.running() as count:
            seen.append(count)
            inside.wait(5)
            release.wait(5)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(5)
    assert sorted(seen) == [1, 2, 3]


def test_thread_shares_split_the_budget_evenly_and_never_below_one() -> None:
    assert thread_shares(2, 1) == [2]
    assert thread_shares(2, 2) == [2, 1]
    assert thread_shares(8, 4) == [8, 4, 2]  # 8 // 3 is 2 as well
    assert thread_shares(1, 3) == [1]
    assert [share_for(4, n) for n in (0, 1, 2, 3, 4, 5)] == [4, 4, 2, 1, 1, 1]
