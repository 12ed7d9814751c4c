"""The application's one error base: a stable `code`, an HTTP status and a message for people."""

from __future__ import annotations


class AppError(Exception):
    code = "internal_error"
    status_code = 500

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s  # sent as `Retry-After` when set


class InvalidImageError(AppError):
    code, status_code = "invalid_image", 400


class UnsupportedMediaTypeError(AppError):
    code, status_code = "unsupported_media_type", 415


class BadDimensionsError(AppError):
    code, status_code = "bad_dimensions", 400


class TooLargeError(AppError):
    code, status_code = "too_large", 413


class PreprocessingFailedError(AppError):
    code, status_code = "preprocessing_failed", 400


class InvalidRequestError(AppError):
    code, status_code = "invalid_request", 400


class MalformedFormError(AppError):
    code, status_code = "malformed_form", 422


class UnauthorizedError(AppError):
    code, status_code = "unauthorized", 401


class NotFoundError(AppError):
    code, status_code = "not_found", 404


class PredictTimeoutError(AppError):
    code, status_code = "timeout", 504


class OverloadedError(AppError):
    """A read that could not start in time: refused at once, with `Retry-After`."""

    code, status_code = "overloaded", 503


class NotReadyError(AppError):
    code, status_code = "not_ready", 503


class ForbiddenError(AppError):
    code, status_code = "forbidden", 403


class InvalidArtifactError(AppError):
    """An uploaded model artifact that must not be stored; `code` says which check failed."""

    status_code = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ConflictError(AppError):
    code, status_code = "conflict", 409


class QueueUnavailableError(AppError):
    code, status_code = "queue_unavailable", 503


class QueueFullError(AppError):
    """`digits:train` holds `STREAMS__JOBS_MAXLEN` entries: refused, never trimmed to make room."""

    code, status_code = "queue_full", 503


class RateLimitedError(AppError):
    """Too many requests of one kind from one client in a window; sent with `Retry-After`."""

    code, status_code = "rate_limited", 429
