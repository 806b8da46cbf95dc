"""What node types may use while they are checked, priced and run."""

from __future__ import annotations

from dataclasses import dataclass, field

from pixelmill.config import Settings
from pixelmill.files.provenance import Provenance
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.registry import ModelRegistry
from pixelmill.moderation import Moderator
from pixelmill.net.safe_http import SafeHttpClient, UrlPolicy


@dataclass(frozen=True)
class NodeServices:
    """Built once per process (see :class:`pixelmill.runtime.Runtime`) and shared by every node run."""

    catalog: ModelCatalog
    models: ModelRegistry
    settings: Settings
    http: SafeHttpClient
    """The guarded client for untrusted URLs (image inputs); the same one delivers webhooks."""
    moderator: Moderator | None = field(default=None)
    """Prompt policy and output classifier (built from the settings when not given)."""
    provenance: Provenance | None = field(default=None)
    """C2PA signing and watermarking of stored outputs (built from the settings when not given)."""

    def __post_init__(self) -> None:
        if self.moderator is None:
            object.__setattr__(self, "moderator", Moderator.from_settings(self.settings))
        if self.provenance is None:
            object.__setattr__(self, "provenance", Provenance.from_settings(self.settings))

    @classmethod
    def build(
        cls, settings: Settings, catalog: ModelCatalog, models: ModelRegistry | None = None, http: SafeHttpClient | None = None
    ) -> "NodeServices":
        return cls(
            catalog=catalog,
            models=models or ModelRegistry(catalog),
            settings=settings,
            http=http or SafeHttpClient(UrlPolicy(allow_networks=list(settings.url_allow_networks))),
        )
