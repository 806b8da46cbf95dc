"""Outbound networking: the guarded HTTP client every fetched or called URL goes through."""

from pixelmill.net.safe_http import (
    BadImage,
    BlockedUrl,
    FetchFailed,
    ResolvedUrl,
    SafeHttpClient,
    SafeHttpError,
    SafeResponse,
    UrlPolicy,
    decode_image,
    is_blocked_address,
    system_resolver,
)

__all__ = [
    "BadImage",
    "BlockedUrl",
    "FetchFailed",
    "ResolvedUrl",
    "SafeHttpClient",
    "SafeHttpError",
    "SafeResponse",
    "UrlPolicy",
    "decode_image",
    "is_blocked_address",
    "system_resolver",
]
