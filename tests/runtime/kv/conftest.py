"""One torch thread for the KV tests: batch-1 passes over a 135M (or tiny) model gain little from a
second thread and lose a lot to its synchronisation when the machine is busy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
