"""While serving, the app freezes its start-up heap out of the cyclic GC and raises the young-generation
threshold (bench/overhead.py: ~70 us of collection per streamed request at c=64 with the defaults); when the
last app stops, the collector is as it was found, including a host's own freeze and a collector turned off."""

from __future__ import annotations

import gc

from tests.helpers import running_gateway
from tiergate.server.app import GC_YOUNG_THRESHOLD

CFG = {"models": [{"name": "m", "deployments": [{"provider": "sim"}]}]}


def test_serving_tunes_the_collector_and_stopping_restores_it():
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with running_gateway(CFG):
        assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
        with running_gateway(CFG):  # two apps in one process: the first one's stop does not undo it
            pass
        assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
    assert gc.get_threshold() == before and gc.get_freeze_count() <= frozen


def test_a_hosts_freeze_and_disabled_collection_are_kept():
    before = gc.get_threshold()
    gc.freeze()
    try:
        held = gc.get_freeze_count()
        assert held > 0
        with running_gateway(CFG):
            pass
        assert gc.get_freeze_count() >= held * 0.9  # not thawed (a few frozen objects may have been freed)
        gc.set_threshold(0)
        with running_gateway(CFG):
            assert gc.get_threshold()[0] == 0  # a host that turned the collector off keeps it off
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
