"""Every topic of the pipeline, declared in one place: read this file to see the whole flow.

```
 scanner ─FileDiscovered─▶ t1.batch ───────┐
 upload  ─FileDiscovered─▶ t1.interactive ─┴▶ tier-1 agent ─AssetBrowsable/AssetFailed─▶ assets ─▶ catalog
                                               └─FileDiscovered-like work─▶ t2.<lane> ─▶ tier 2 (later issue)
 scanner ─BatchScanned─▶ progress ◀─ProgressEvent─ catalog        (ingest --wait reads progress)
 a failure ─▶ t<tier>.retry.<n> (due time in headers) ─▶ retrier ─▶ back to its source topic
           └─▶ t<tier>.dlq (DeadLetter envelope) once permanent or out of attempts ─▶ `damflow dlq replay`
```

Names carry the configured prefix. Keys: the file's path before tier 1, the asset id after it, the batch id on
``progress``. Agents import these names; they never make up topic names of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings

LANES = ("interactive", "batch")
TIERS = (1, 2, 3)


@dataclass(frozen=True)
class Topics:
    """The topic names for one prefix."""

    prefix: str
    #: Retry levels per tier: ``t<tier>.retry.<n>`` holds events waiting for their n-th retry (max_attempts - 1).
    retry_levels: int = 2

    def _n(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # tier 1: hash + thumbnails -> browsable
    @property
    def t1_interactive(self) -> str:
        return self._n("t1.interactive")

    @property
    def t1_batch(self) -> str:
        return self._n("t1.batch")

    # tier 2: metadata + index -> searchable
    @property
    def t2_interactive(self) -> str:
        return self._n("t2.interactive")

    @property
    def t2_batch(self) -> str:
        return self._n("t2.batch")

    # tier 3: embeddings, quality, sessions -> similar-findable
    @property
    def t3_background(self) -> str:
        return self._n("t3.background")

    # results and observability
    @property
    def assets(self) -> str:
        return self._n("assets")

    @property
    def progress(self) -> str:
        return self._n("progress")

    def tier1(self, lane: str) -> str:
        return self._n(f"t1.{lane}")

    def tier2(self, lane: str) -> str:
        return self._n(f"t2.{lane}")

    def work(self, tier: int) -> tuple[str, ...]:
        """The topics tier ``tier``'s agents consume, its batch (or only) lane last: where its retried and replayed
        events go back to."""
        return {1: (self.t1_interactive, self.t1_batch), 2: (self.t2_interactive, self.t2_batch),
                3: (self.t3_background,)}[tier]

    def tier_of(self, topic: str) -> int | None:
        """The tier of one of the tiers' topics (``t<tier>.…``: work, retries, dead letters); None for another."""
        head = topic.removeprefix(self.prefix).split(".")[0]
        return next((n for n in TIERS if head == f"t{n}"), None)

    def dlq(self, tier: int) -> str:
        return self._n(f"t{tier}.dlq")

    def retry(self, tier: int, attempt: int) -> str:
        """Where an event waits after its ``attempt``-th failure (one topic per level keeps due times ordered)."""
        return self._n(f"t{tier}.retry.{attempt}")

    def retries(self) -> list[str]:
        return [self.retry(t, n) for t in TIERS for n in range(1, self.retry_levels + 1)]

    def dlqs(self) -> list[str]:
        return [self.dlq(t) for t in TIERS]

    def configs(self) -> dict[str, dict[str, str]]:
        """Topic settings beyond the broker's defaults, by topic. Dead letters stay until they are dealt with:
        Kafka and Redpanda delete records after 7 days by default, and ``damflow dlq`` lists and replays from
        these topics (the embedded broker keeps every record anyway)."""
        return {name: {"retention.ms": "-1"} for name in self.dlqs()}

    def all(self) -> list[str]:
        """Every topic the pipeline uses, for creating them up front."""
        return [
            self.t1_interactive, self.t1_batch, self.t2_interactive, self.t2_batch, self.t3_background,
            self.assets, self.progress, *self.dlqs(), *self.retries(),
        ]


def topics_for(settings: Settings) -> Topics:
    return Topics(settings.topic_prefix, retry_levels=settings.max_attempts - 1)
