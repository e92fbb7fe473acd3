"""Which failures are the environment's and which are a SKU's (poison), and which store errors are worth a retry.

A batch that fails because of its content (a poison SKU) is bisected by the executors until the SKU is alone. A
failure of the environment (the output is full, read-only, failing I/O, refusing permission; the object store gone
or refusing the credentials) would fail every SKU the same way: bisecting it burns the night's GPU time and blames
innocent SKUs. `environment_fault` tells the two apart, looking through Ray's wrapping and exception chains.
"""

from __future__ import annotations

import errno
import os

from factory.errors import EnvironmentFault

# errno -> what it means for the night (the first words of the one-sentence error)
ENV_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "the output is full",
    errno.EDQUOT: "the output's disk quota is used up",
    errno.EROFS: "the output file system is read-only",
    errno.EIO: "the output's storage reports an I/O error",
    errno.EACCES: "permission denied on the output",
    errno.EPERM: "permission denied on the output",
    errno.ESTALE: "the output's network file system went away",
    errno.ENOTCONN: "the output's network file system went away",
}
STOPPED = "; the night stopped without blaming any SKU: fix it and rerun (finished images are kept)"
# Substrings of the AWS SDK's (pyarrow's) and botocore's error text.
TRANSIENT = (
    "NETWORK_CONNECTION",
    "curlCode",
    "SERVICE_UNAVAILABLE",
    "SLOW_DOWN",
    "SlowDown",
    "THROTTLING",
    "INTERNAL_FAILURE",
    "InternalError",
    "REQUEST_TIMEOUT",
    "RequestTimeout",
    "Connection refused",
    "Could not connect",
    "timed out",
)  # no bare status codes: the error text also holds the object key, which may contain any digits
CREDENTIALS = (
    "EXPIRED_TOKEN",
    "ExpiredToken",
    "RequestExpired",
    "TokenRefreshRequired",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "ACCESS_DENIED",
    "AccessDenied",
    "InvalidToken",
)


def is_transient(text: str) -> bool:
    """An object-store error a retry may cure (network, throttling, a 5xx)."""
    return any(s in text for s in TRANSIENT)


def is_credentials(text: str) -> bool:
    return any(s in text for s in CREDENTIALS)


def local_fault(op: str, where: str, exc: OSError) -> EnvironmentFault | None:
    """The fault a local OSError means, naming the output path it concerns; None for errors a SKU can cause
    (a name too long, a path refused)."""
    cause = ENV_ERRNOS.get(exc.errno or 0)
    if cause is None:
        return None
    reason = exc.strerror or os.strerror(exc.errno or 0)
    return EnvironmentFault(f"{cause}: cannot {op} {where} ({reason}){STOPPED}")


def environment_fault(exc: BaseException) -> EnvironmentFault | None:
    """The EnvironmentFault behind `exc` (a Ray task error's cause, a `raise ... from`), or one made from an
    OSError whose errno is the environment's; None when the failure may be the SKU's (poison)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # a Ray task error: its class also claims the cause's, its text is Ray's
        if isinstance(cause, BaseException) and cause is not e:
            todo.append(cause)
            continue
        if isinstance(e, EnvironmentFault):
            return EnvironmentFault(str(e))
        if isinstance(e, OSError) and e.errno in ENV_ERRNOS:
            return local_fault("write", e.filename or "the output", e)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None
