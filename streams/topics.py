"""Every topic of the pipeline, declared in one place: read this file to see the whole flow.

```
 scanner ─FileDiscovered─▶ t1.batch ───────┐
 upload  ─FileDiscovered─▶ t1.interactive ─┴▶ tier-1 agent ─AssetBrowsable/AssetFailed─▶ assets ─▶ catalog
                                               └─FileDiscovered-like work─▶ t2.<lane> ─▶ tier 2 (later issue)
 scanner ─BatchScanned─▶ progress ◀─ProgressEvent─ catalog        (ingest --wait reads progress)
```

Names carry the configured prefix. Keys: the file's path before tier 1, the asset id after it, the batch id on
``progress``. Agents import these names; they never make up topic names of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings

LANES = ("interactive", "batch")


@dataclass(frozen=True)
class Topics:
    """The topic names for one prefix."""

    prefix: str

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

    def dlq(self, tier: int) -> str:
        return self._n(f"t{tier}.dlq")

    def all(self) -> list[str]:
        """Every topic the pipeline uses, for creating them up front."""
        return [
            self.t1_interactive, self.t1_batch, self.t2_interactive, self.t2_batch, self.t3_background,
            self.assets, self.progress, self.dlq(1), self.dlq(2), self.dlq(3),
        ]


def topics_for(settings: Settings) -> Topics:
    return Topics(settings.topic_prefix)
