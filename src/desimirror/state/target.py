"""Where a mirror goes, as its state keeps it: the bucket and key layout the first upload
pinned, and the endpoint last used (the default of later runs)."""

from __future__ import annotations

import json

from desimirror.state.db import StateDb


class TargetPin(StateDb):
    """The ``target`` and ``endpoint_url`` values of ``meta``."""

    def pinned_target(self) -> dict | None:
        """``{"bucket", "prefix", "remap"}`` as pinned by the first upload, or None."""
        pinned = self.get_meta("target")
        return json.loads(pinned) if pinned else None

    def pin_target(self, target: dict) -> None:
        """Pin ``target`` unless one is pinned already (the caller has compared them)."""
        with self.atomic():
            if self.get_meta("target") is None:
                self._set_meta_raw("target", json.dumps(target, sort_keys=True))

    def last_endpoint(self) -> str | None:
        """The endpoint URL (without credentials) the last upload used, or None."""
        return self.get_meta("endpoint_url")

    def remember_endpoint(self, url: str) -> None:
        """Keep ``url`` (already stripped of credentials) as the default of later runs."""
        if self.last_endpoint() != url:
            self.set_meta("endpoint_url", url)
