"""The canonical JSON form of a typed config: what a run's key (or a probe spec's hash) is computed
from and what a manifest keeps.

One implementation for the stage packages' configs (a probe spec) and the run store's (each stage
run's typed config), so that both forget a later-added field at its default the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Canonical(BaseModel):
    """A frozen config whose canonical JSON leaves out the `OMIT_AT_DEFAULT` fields while they hold
    their default: fields added after keys or hashes existed, so that whatever does not use them
    keeps the key or hash it had before them. Nested `Canonical` values give their own form."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    OMIT_AT_DEFAULT: ClassVar[frozenset[str]] = frozenset()

    def canonical(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        out = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if name in self.OMIT_AT_DEFAULT and value == field.default:
                continue
            out[name] = value.canonical() if isinstance(value, Canonical) else data[name]
        return out
