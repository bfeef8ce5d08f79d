"""Settings read from the environment, in one place.

Our own settings carry the `LLM_ROLLOUT_` prefix; the standard variables other tools share
(`KUBECONFIG`, `MODELSCOPE_ENDPOINT`, `XDG_CACHE_HOME`) keep their standard names. An empty
variable counts as unset. `settings()` reads the environment at each call, never at import, so a
variable set after start-up (a test, a worker's job environment) is seen by the next client made.

Not here, on purpose: credentials, which specs name by variable (`llm_rollout.credentials`
resolves those references), and Prefect's own settings (`PREFECT_*`, read by Prefect).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LLM_ROLLOUT_"


class Settings(BaseSettings):
    """Everything llm-rollout reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore"
    )

    crd_dir: Path | None = Field(
        default=None,
        description=(
            "Directory of CustomResourceDefinition YAML files that offline validation "
            "(`llm-rollout plan`) checks custom resources against when no cluster is reachable; "
            "`plan --crd-dir` overrides it. Unset: custom kinds are reported as not checked."
        ),
    )
    kubeconfig: str | None = Field(
        default=None,
        validation_alias="KUBECONFIG",
        description=(
            "The kubeconfig file (`KUBECONFIG`); unset: ~/.kube/config when it exists, "
            "else the in-cluster service account."
        ),
    )
    modelscope_endpoint: str | None = Field(
        default=None,
        validation_alias="MODELSCOPE_ENDPOINT",
        description="Base URL of the ModelScope hub (`MODELSCOPE_ENDPOINT`); unset: the library's.",
    )
    xdg_cache_home: Path | None = Field(
        default=None,
        validation_alias="XDG_CACHE_HOME",
        description=(
            "Base of the per-user cache (`XDG_CACHE_HOME`; unset: ~/.cache); the mirror's "
            "resume checkpoints live in its llm-rollout/mirror folder."
        ),
    )

    @property
    def cache_dir(self) -> Path:
        """The per-user cache of llm-rollout."""
        return (self.xdg_cache_home or Path.home() / ".cache") / "llm-rollout"


def settings() -> Settings:
    """The settings as the environment holds them now."""
    return Settings()
