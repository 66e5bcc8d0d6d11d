"""Service settings: defaults, ``REGISTRY_*`` environment variables, validation.

The command line (``api.cli``) passes only the flags a user gave; everything
else comes from the environment or the defaults below. Defaults suit an LLM
fleet whose workers beat every ~10 s.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage import open_storage

from .service import check_timing

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for every interface)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one)")
    storage: str = Field(
        "sqlite+aiosqlite:///registry.db",
        description="storage URL: sqlite+aiosqlite:///PATH or memory:// (lost on exit)",
    )
    heartbeat_interval: float = Field(
        10.0, gt=0, description="seconds between the checker's sweeps; workers should beat this often"
    )
    heartbeat_timeout: float = Field(
        30.0, gt=0, description="seconds without a heartbeat before an instance is unhealthy"
    )
    evict_after: float = Field(
        600.0, ge=0, description="seconds an instance stays unhealthy before it is deleted (0: never)"
    )
    shutdown_timeout: float = Field(
        15.0, gt=0, le=300, description="seconds to let requests in flight finish on SIGTERM/SIGINT"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug also logs every request"
    )
    log_format: Literal["text", "json"] = Field("text", description="text (key=value) or json lines")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        open_storage(value)  # raises InvalidStorageURL (a ValueError) naming the valid schemes
        return value

    @model_validator(mode="after")
    def _timing(self) -> Settings:
        check_timing(self.heartbeat_interval, self.heartbeat_timeout, self.evict_after)
        return self
