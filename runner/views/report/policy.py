"""Where a report's samples may come from: the rule that keeps a lockfile's URLs from
making CI send requests anywhere.

A lockfile arrives in pull requests, so its sample URLs are untrusted: fetching what it says
would let anyone make CI send GETs to any port of the runner's machine or its network.
Where a sample may come from (``FetchPolicy``), for the API the manifest targets:

- the embedded sandbox (``api.endpoint: sandbox``): only its state folder beside the
  manifest (``.runner/sandbox``), for URLs of its file route
  (``http://127.0.0.1:PORT/_sandbox/files/<id>/<name>``, whose port died with the apply):
  the rendered file if it is there, else rendered in memory from its database. Never HTTP.
- a loopback endpoint (``runner sandbox serve``): HTTP to exactly that origin (scheme, host,
  port), and the state folder as above.
- an https endpoint: https only, to the API's own origin or a sibling host under its parent
  domain (``api.vimmerse.net`` -> ``dev-media.vimmerse.net``; default port, an IP address is
  never a sibling, and a parent that looks like a public suffix such as ``co.uk`` is not
  taken), plus the hosts of ``--allow-host``. Never loopback, never plain http.

Everything else is refused without a request (``FetchPolicy.http_refusal``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from runner.api.endpoint import SANDBOX, api_identity, is_loopback_identity

NOT_FROM_ORIGIN = "not from the API's origin"
SANDBOX_FILE = re.compile(
    r"^http://(?:127\.0\.0\.1|localhost|\[::1\]):\d+/_sandbox/files/([A-Za-z0-9]+)/([A-Za-z0-9_]+\.png)$"
)
# Two-label suffixes under which unrelated parties register names (co.uk, com.au, ...): a
# parent domain that looks like one is not a "site", so its hosts are not siblings. An
# approximation of the Public Suffix List that errs towards refusing; --allow-host widens.
_SHARED_SECOND_LEVEL = frozenset(
    ("ac", "co", "com", "edu", "gob", "gov", "gv", "go", "int", "ltd", "me", "mil", "ne", "net",
     "nic", "nom", "or", "org", "plc", "sch")
)



def normalize_allowed_host(value: str) -> str:
    """``--allow-host`` value -> ``host`` or ``*.domain`` (lower case); ValueError if it is
    not a bare host name."""
    text = value.strip().lower().rstrip(".")
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", name):
        raise ValueError(
            f"--allow-host takes a host name such as cdn.example.com or *.example.com, not {value!r}"
        )
    return ("*." if wildcard else "") + name


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def site_of(host: str) -> str | None:
    """The domain whose hosts count as siblings of the API's ``host``: its parent domain
    (``api.vimmerse.net`` -> ``vimmerse.net``), or the host itself when the parent would be
    a public suffix or a top-level domain; None for an IP address."""
    host = host.lower().rstrip(".")
    if not host or _is_ip(host):
        return None
    labels = host.split(".")
    if len(labels) < 2:
        return None
    parent = labels[1:]
    if len(parent) < 2:
        return host
    if len(parent) == 2 and len(parent[1]) == 2 and parent[0] in _SHARED_SECOND_LEVEL:
        return host
    return ".".join(parent)


@dataclass(frozen=True)
class FetchPolicy:
    """Where one manifest's samples may be read from (module docstring)."""

    api: str  # runner.api.endpoint.api_identity of the endpoint the manifest targets
    allow_hosts: tuple[str, ...] = ()  # normalize_allowed_host values

    @property
    def local(self) -> bool:
        """The sandbox, or a loopback endpoint: its state folder may be read."""
        return is_loopback_identity(self.api)

    def reads_state(self, url: str) -> bool:
        return self.local and SANDBOX_FILE.match(url) is not None

    def _allowed(self, host: str) -> bool:
        for allowed in self.allow_hosts:
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]):
                    return True
            elif host == allowed:
                return True
        return False

    def http_refusal(self, url: str) -> str | None:
        """None when ``url`` may be requested; else why not, without any request."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "not a valid URL"
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            return "not an http(s) URL"
        if "@" in parts.netloc:
            return NOT_FROM_ORIGIN + " (a URL with user info)"
        if self.api != SANDBOX and api_identity(url) == self.api:
            return None
        if parts.scheme != "https" or port not in (None, 443):
            return NOT_FROM_ORIGIN
        host = host.rstrip(".")
        if self._allowed(host):
            return None
        if self.local:
            return NOT_FROM_ORIGIN
        api_host = (urlsplit(self.api).hostname or "").lower()
        site = site_of(api_host)
        if site and not _is_ip(host) and (host == site or host.endswith("." + site)):
            return None
        return NOT_FROM_ORIGIN
