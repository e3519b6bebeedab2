"""When would a new input be answered? The prediction deadline-aware admission acts on.

Every peer admits a request first and finds out later, in the queue, that it missed its
deadline: it then holds a queue slot, maybe decoding CPU, and at worst a place in a forward
pass, only to fail with 504. Here the batcher predicts, before taking an input, when it would
finish, from what is ahead of it and the measured forward time per batch size
(:class:`~.forward.ForwardTimes`):

* the batches running now finish when their expected time is up;
* the inputs ahead of it (queued, in the fair queue's order, or in a batch still forming) leave
  in full batches, each on the first instance free (inputs still being decoded are not counted:
  they queue when they are ready, and are counted then);
* its own batch then runs: at the size it would have with the inputs ahead of it in it, or
  full when at least a full batch is ahead (more inputs arrive behind it meanwhile);
* between one batch and the next on an instance the loop spends a measured *turnaround*
  (answering the batch, logging it, taking the next off the queue): small against a forward
  pass of a large model, a good part of one for a small model, and paid once per batch ahead.

A new input whose deadline is earlier than that is refused at once (503 with ``Retry-After``:
the time until the backlog ahead would have shrunk enough) instead of queueing to time out.
The prediction ignores the batch delay (a backlog closes batches at once) and inputs still to
arrive (they queue behind it); every admitted input's prediction is compared with when it was
actually answered, and the error is exported, so an operator can see how far to trust it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from inference_engine.batching.forward import ALPHA, ForwardTimes


class CompletionForecast:
    """Predicts the answer time of a new input for one batcher."""

    def __init__(self, forward: ForwardTimes, max_batch_size: int, instances: int) -> None:
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.instances = max(1, instances)
        self.turnaround_s = 0.0

    def turned_around(self, seconds: float) -> None:
        """The loop took ``seconds`` from the end of one batch to the start of the next, with
        inputs waiting all along (so none of it was waiting for work)."""
        self.turnaround_s += ALPHA * (seconds - self.turnaround_s)

    def seconds_until_answer(self, ahead: int, running: Iterable[tuple[int, float]]) -> float | None:
        """Seconds from now until an input with ``ahead`` inputs in front of it is answered.

        ``running``: ``(batch size, seconds it has run)`` of each batch in a forward pass now.
        None while no forward pass has been measured. Checked before an input is decoded, this
        leaves out the decoding (the work ahead goes on meanwhile); the check at queueing,
        after it, has the whole picture.
        """
        full = self.forward.estimate(self.max_batch_size)
        if full is None:
            return None
        free_at = [0.0] * self.instances
        for index, (size, elapsed) in enumerate(running):
            expected = self.forward.estimate(size) or full
            free = max(expected - elapsed, 0.0) + self.turnaround_s
            free_at[index % self.instances] = max(free_at[index % self.instances], free)
        heapq.heapify(free_at)
        whole_batches, place = divmod(max(ahead, 0), self.max_batch_size)
        for _ in range(whole_batches):
            heapq.heappush(free_at, heapq.heappop(free_at) + full + self.turnaround_s)
        # Behind a backlog its batch fills up with what arrives meanwhile: a full pass. Without
        # one, the batch closes with what is there (eager closing): the inputs ahead and itself.
        mine = full if whole_batches else (self.forward.estimate(place + 1) or full)
        return heapq.heappop(free_at) + mine
