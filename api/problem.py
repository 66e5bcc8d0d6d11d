"""``ApiError``: a refusal at the HTTP level, answered by ``api.errors``."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """A protocol-level refusal: bad content type, malformed JSON, bad query, draining."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field = status, code, detail, field
        self.headers = headers or {}
