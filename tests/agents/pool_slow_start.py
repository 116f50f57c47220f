"""Preloaded into a test pool's forkserver: every pool process is held before its initializer for a minute, so a
test can freeze processes that have not set anything up yet (as the lane governor may, by chance)."""

import time

import agents.pool

_init = agents.pool._init_process


def _held_init(*args) -> None:
    time.sleep(60)
    _init(*args)


agents.pool._init_process = _held_init  # what a pool process looks up by name, in this forkserver's children
