"""What the gateway presents to a backend in place of the client's token (contract 14): a static
secret, or a token it fetches from an OAuth 2.0 token endpoint for the target (client credentials)
or for the caller (RFC 8693 token exchange, the caller's verified token as the subject token).

Fetched tokens are cached in this process only: a token is a bearer credential, and putting it in
the shared store would hand it to anyone who can read the store. A worker or replica fetches its own
once per token lifetime, which a token endpoint takes in its stride.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from agentgw.auth.principal import Principal
from agentgw.config import UpstreamAuthConfig
from agentgw.errors import UpstreamAuthFailed
from agentgw.upstream.faults import TOKEN_ENDPOINT
from agentgw.upstream.http import ConnectionPool, UpstreamResponse

log = logging.getLogger("agentgw.upstream.credentials")

# A `*File` secret is looked at again this often: Kubernetes swaps a mounted secret in place, and the
# contract gives the gateway 10 s to notice.
FILE_CHECK_INTERVAL = 2.0
# A fetched token is used until this long before it expires (or half its lifetime, if that is shorter).
REFRESH_BEFORE = 30.0
# A token answer that says nothing of its lifetime.
DEFAULT_LIFETIME = 300.0
MAX_LIFETIME = 86_400.0
TOKEN_ENDPOINT_TIMEOUT = 10.0
MAX_TOKEN_ANSWER_BYTES = 64 * 1024
# Exchanged tokens kept per target: one per caller token, the least recently used dropped beyond it.
MAX_EXCHANGED_TOKENS = 10_000

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# RFC 6750's b64token: what may follow "Bearer " in a header, so a token endpoint cannot smuggle a
# header line or a second credential into the backend request.
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
_HEADER_VALUE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")
_OAUTH_ERROR = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$")


class Secret:
    """A secret named by an environment variable (read once) or a file (read again when it changes)."""

    def __init__(self, variable: str | None, file: str | None, env: Mapping[str, str]) -> None:
        self._file = Path(file) if file is not None else None
        self._value = env.get(variable, "").strip() if variable is not None else ""
        self._seen: tuple[int, int, int] | None = None
        self._next_check = 0.0
        if self._file is not None:
            self._reread()

    def value(self) -> str:
        if self._file is not None and time.monotonic() >= self._next_check:
            self._reread()
        return self._value

    def _reread(self) -> None:
        assert self._file is not None
        self._next_check = time.monotonic() + FILE_CHECK_INTERVAL
        try:
            stat = self._file.stat()
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if seen != self._seen:
                value = self._file.read_text(encoding="utf-8").strip()
                if value:
                    self._value, self._seen = value, seen
        except (OSError, UnicodeDecodeError) as exc:
            # Mid-swap, or gone: the last value serves until the file is back.
            log.warning("secret file %s unreadable (%s); keeping the last value", self._file, exc.__class__.__name__)


class Credentials(Protocol):
    """What one target or agent presents; `caller` is the request's verified caller, if any."""

    # Whether what is presented depends on the caller: then nothing is presented where there is none.
    for_each_caller: bool

    async def headers(self, caller: Principal | None) -> dict[str, str]: ...

    def refused(self, caller: Principal | None, presented: dict[str, str]) -> bool:
        """The backend answered 401 to `presented`: forget it; True when a fresh one is worth a retry."""
        ...


@dataclass(frozen=True, slots=True)
class Presenting:
    """A target's credentials for one request, on behalf of its caller."""

    credentials: Credentials
    caller: Principal | None

    async def headers(self) -> dict[str, str]:
        return await self.credentials.headers(self.caller)

    def refused(self, presented: dict[str, str]) -> bool:
        return self.credentials.refused(self.caller, presented)


async def sent_with(
    presenting: Presenting | None,
    headers: dict[str, str],
    send: Callable[[dict[str, str]], Awaitable[UpstreamResponse]],
) -> UpstreamResponse:
    """`send` with the credentials added to `headers`; a 401 to a fetched token has it dropped and the
    request sent once more with a fresh one (contract 14). A second 401 is the caller's to refuse."""
    if presenting is None:
        return await send(headers)
    presented = await presenting.headers()
    response = await send({**headers, **presented})
    if response.status == 401 and presenting.refused(presented):
        response.release()
        log.warning("an upstream refused the gateway's token; retrying once with a fresh one")
        presented = await presenting.headers()
        response = await send({**headers, **presented})
    return response


class StaticSecret:
    """`bearer` and `header`: the secret itself, in the header it belongs in."""

    for_each_caller = False

    def __init__(self, header: str, secret: Secret, prefix: str) -> None:
        self._header = header.lower()
        self._secret = secret
        self._prefix = prefix

    async def headers(self, caller: Principal | None) -> dict[str, str]:
        value = self._secret.value()
        if not _HEADER_VALUE.match(value):
            raise UpstreamAuthFailed("The configured upstream secret cannot be sent in a header")
        return {self._header: self._prefix + value}

    def refused(self, caller: Principal | None, presented: dict[str, str]) -> bool:
        return False  # nothing fresher to present


@dataclass(slots=True)
class _Cached:
    token: str
    refresh_at: float  # time.monotonic()


class TokenCache:
    """Fetched tokens by key, each fetched by one request however many wait for it."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[Any, _Cached] = OrderedDict()
        self._fetching: dict[Any, asyncio.Task[tuple[str, float]]] = {}
        self._max_entries = max_entries

    async def token(self, key: Any, fetch: Callable[[], Awaitable[tuple[str, float]]], valid_for: float) -> str:
        """The cached token for `key`, or one fetched now; `valid_for` caps how long it is kept."""
        cached = self._entries.get(key)
        if cached is not None and time.monotonic() < cached.refresh_at:
            self._entries.move_to_end(key)
            return cached.token
        task = self._fetching.get(key)
        if task is None:
            # A task of its own, so a caller that goes away does not take the others' fetch with it.
            task = self._fetching[key] = asyncio.ensure_future(fetch())
            task.add_done_callback(lambda done: self._fetched(key, done, valid_for))
        token, _ = await asyncio.shield(task)
        return token

    def _fetched(self, key: Any, task: asyncio.Task[tuple[str, float]], valid_for: float) -> None:
        self._fetching.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return
        token, lifetime = task.result()
        lifetime = min(lifetime, valid_for)
        self._entries[key] = _Cached(token, time.monotonic() + max(lifetime - REFRESH_BEFORE, lifetime / 2))
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def drop(self, key: Any, token: str) -> None:
        """Forget `token` if it is still the one cached (a concurrent request may have replaced it)."""
        cached = self._entries.get(key)
        if cached is not None and cached.token == token:
            del self._entries[key]


class TokenEndpoint:
    """One OAuth 2.0 token endpoint, the gateway authenticated to it with `client_secret_basic`."""

    def __init__(self, config: UpstreamAuthConfig, secret: Secret, http: ConnectionPool, upstream: str) -> None:
        assert config.token_url is not None and config.client_id is not None
        self._url = config.token_url
        self._client_id = config.client_id
        self._secret = secret
        self._http = http
        self.upstream = upstream

    async def fetch(self, form: dict[str, str]) -> tuple[str, float]:
        """A token and its lifetime in seconds; any failure of the endpoint is UpstreamAuthFailed."""
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "accept": "application/json",
            "authorization": "Basic " + self._basic(),
        }
        try:
            with TOKEN_ENDPOINT.mapped("the token endpoint"):
                response = await self._http.request(
                    "POST", self._url, headers, urlencode(form).encode(), TOKEN_ENDPOINT_TIMEOUT
                )
                try:
                    body = await response.read(TOKEN_ENDPOINT_TIMEOUT, limit=MAX_TOKEN_ANSWER_BYTES)
                finally:
                    response.release()
        except UpstreamAuthFailed as exc:
            raise self._failed(exc.message) from None
        if response.status != 200:
            raise self._failed(f"the token endpoint answered HTTP {response.status}{_oauth_error(body)}")
        return self._token_of(body)

    def _basic(self) -> str:
        # RFC 6749 2.3.1: each part form-urlencoded before the two are joined.
        pair = f"{quote(self._client_id, safe='')}:{quote(self._secret.value(), safe='')}"
        return base64.b64encode(pair.encode()).decode("ascii")

    def _token_of(self, body: bytes) -> tuple[str, float]:
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            raise self._failed("the token endpoint answered with a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise self._failed("the token endpoint answered with JSON that is not an object")
        token = answer.get("access_token")
        if not isinstance(token, str) or len(token) > 16_384 or not _B64TOKEN.match(token):
            raise self._failed("the token endpoint answered without a usable access_token")
        token_type = answer.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise self._failed("the token endpoint answered a token_type other than Bearer")
        expires_in = answer.get("expires_in", DEFAULT_LIFETIME)
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or not 0 < expires_in:
            raise self._failed("the token endpoint answered an expires_in that is not a positive number")
        return token, min(float(expires_in), MAX_LIFETIME)

    def _failed(self, what: str) -> UpstreamAuthFailed:
        log.error("upstream credentials of %s: %s", self.upstream, what)
        return UpstreamAuthFailed(f"The token endpoint of {self.upstream!r} failed")


def _oauth_error(body: bytes) -> str:
    """The OAuth `error` code of a refusal, for the log, when it is a short plain code."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, RecursionError, AttributeError):
        return ""
    return f" ({error})" if isinstance(error, str) and _OAUTH_ERROR.match(error) else ""


class ClientCredentials:
    """`oauth2_client_credentials`: one token for the target, whoever the caller."""

    for_each_caller = False

    def __init__(self, config: UpstreamAuthConfig, endpoint: TokenEndpoint) -> None:
        self._endpoint = endpoint
        self._form = {"grant_type": "client_credentials"}
        if config.scopes:
            self._form["scope"] = " ".join(config.scopes)
        if config.resource is not None:
            self._form["resource"] = config.resource
        self._cache = TokenCache(1)

    async def headers(self, caller: Principal | None) -> dict[str, str]:
        token = await self._cache.token(None, lambda: self._endpoint.fetch(self._form), MAX_LIFETIME)
        return {"authorization": f"Bearer {token}"}

    def refused(self, caller: Principal | None, presented: dict[str, str]) -> bool:
        self._cache.drop(None, _bearer_of(presented))
        return True


class TokenExchange:
    """`token_exchange` (RFC 8693): a token for each caller token, on the caller's behalf; one
    caller's token is never presented for another."""

    for_each_caller = True

    def __init__(self, config: UpstreamAuthConfig, endpoint: TokenEndpoint) -> None:
        self._endpoint = endpoint
        self._form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        for key, value in (("resource", config.resource), ("audience", config.audience)):
            if value is not None:
                self._form[key] = value
        if config.scopes:
            self._form["scope"] = " ".join(config.scopes)
        self._cache = TokenCache(MAX_EXCHANGED_TOKENS)

    async def headers(self, caller: Principal | None) -> dict[str, str]:
        if caller is None or not caller.token:
            log.error(
                "token exchange for %s needs a verified caller token; the request had none", self._endpoint.upstream
            )
            raise UpstreamAuthFailed(f"{self._endpoint.upstream!r} acts on behalf of a verified caller only")
        form = {**self._form, "subject_token": caller.token}
        valid_for = caller.expires_at - time.time()
        token = await self._cache.token(_key(caller), lambda: self._endpoint.fetch(form), valid_for)
        return {"authorization": f"Bearer {token}"}

    def refused(self, caller: Principal | None, presented: dict[str, str]) -> bool:
        if caller is None:
            return False
        self._cache.drop(_key(caller), _bearer_of(presented))
        return True


def _key(caller: Principal) -> bytes:
    # The caller's token itself is not kept as a key: a digest identifies it as well.
    return hashlib.sha256(caller.token.encode()).digest()


def _bearer_of(presented: dict[str, str]) -> str:
    return presented.get("authorization", "").removeprefix("Bearer ")


def credentials_for(
    config: UpstreamAuthConfig | None, http: ConnectionPool, upstream: str, env: Mapping[str, str]
) -> Credentials | None:
    """The credentials an `auth` block configures (None: present nothing)."""
    if config is None:
        return None
    ((variable, file),) = config.secret_sources().values()
    secret = Secret(variable, file, env)
    if config.type == "bearer":
        return StaticSecret("authorization", secret, "Bearer ")
    if config.type == "header":
        assert config.name is not None
        return StaticSecret(config.name, secret, "")
    endpoint = TokenEndpoint(config, secret, http, upstream)
    if config.type == "oauth2_client_credentials":
        return ClientCredentials(config, endpoint)
    return TokenExchange(config, endpoint)
