"""Strict YAML loading: every error with file, line and key path, all at once.

YAML is composed to nodes (not constructed directly) so each value keeps its
line; values are then checked against :mod:`listgate.config.schema`.
"""
from __future__ import annotations

import ipaddress
import os
import re
import stat
import urllib.parse
from types import MappingProxyType
from typing import Any

import yaml

from ..addresses import ROLE_SUFFIXES
from .schema import Field, Section

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_RE = re.compile(r"^(\d+)\s*([kmg]?)i?b?$", re.I)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
# A list name becomes a local part and a file name: keep it to characters that
# are safe in both, and never let it look like one of our address suffixes.
LISTNAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_.-]{0,38}[a-z0-9])?$")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*$", re.I)
_ADDRESS_RE = re.compile(r"^[^@\s<>()\[\],;:\"\\]{1,64}@[^@\s<>()\[\],;:\"\\]{1,253}$")


class ConfigError(Exception):
    """Configuration problems; ``errors`` is a list of ``FILE:LINE: key.path: message``."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class Frozen:
    """Read-only view of a validated mapping (sections nest): ``conf.key`` or ``conf["key"]``.

    An unknown key raises AttributeError (KeyError for ``conf["key"]``);
    nothing can be set or deleted. Keys named like a method (``get``,
    ``as_dict``) are read as ``conf[key]``.
    """

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]):
        object.__setattr__(self, "_data", MappingProxyType(dict(data)))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("configuration is read-only")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("configuration is read-only")

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.as_dict() if isinstance(v, Frozen) else v) for k, v in self._data.items()}

    def __repr__(self) -> str:
        return f"Frozen({dict(self._data)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frozen) and dict(self._data) == dict(other._data)


def parse_duration(text: str) -> float:
    """``'7d'``, ``'12h'``, ``'30m'``, ``'45s'``, ``'2w'``, ``'1d12h'`` → seconds.

    Raises ValueError on anything else (a bare number is refused: the unit is
    what keeps ``7`` from meaning seven seconds to one admin and days to another).
    """
    text = text.strip().lower()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"bad duration {text!r} (write e.g. 7d, 12h, 30m, 45s)")
    return total


def format_duration(seconds: float) -> str:
    """Seconds → the shortest exact ``7d``/``12h``/``30m``/``45s`` form."""
    for unit in ("d", "h", "m"):
        n = _DURATION_UNITS[unit]
        if seconds and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{seconds:g}s"


def valid_address(text: str) -> bool:
    """A bare ``local@domain`` address (no display name, no route)."""
    return bool(_ADDRESS_RE.match(text)) and "." not in (text[0], text.split("@")[0][-1:])


def _tname(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing (null)"
    return type(value).__name__


class _Checker:
    def __init__(self, filename: str):
        self.filename = filename
        self.errors: list[str] = []
        self._constructor = yaml.SafeLoader("")

    def err(self, node: yaml.Node | None, path: str, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.errors.append(f"{self.filename}:{line}: {path or '(top)'}: {msg}")

    def scalar(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def section(self, node: yaml.Node | None, schema: Section, path: str) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
            pairs = []
        elif not isinstance(node, yaml.MappingNode):
            self.err(node, path, f"expected a mapping, got {_tname(self.scalar(node))}")
            return None
        else:
            pairs = node.value
        seen: dict[str, yaml.Node] = {}
        for knode, vnode in pairs:
            key = self.scalar(knode)
            kpath = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                self.err(knode, kpath, "keys must be strings")
                continue
            if key in seen:
                self.err(knode, kpath, f"duplicate key (first at line {seen[key].start_mark.line + 1})")
                continue
            seen[key] = knode
            spec = schema.fields.get(key)
            if spec is None:
                close = [k for k in schema.fields if k.replace("_", "") == key.replace("_", "").replace("-", "")]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.err(knode, kpath, f"unknown key{hint}")
                continue
            value = self.value(vnode, spec, kpath)
            if value is not _BAD:
                out[key] = value
        for key, spec in schema.fields.items():
            if key in out or key in seen:  # present but invalid: already reported
                continue
            if spec.required:
                self.err(node, f"{path}.{key}" if path else key, "required key is missing")
            elif spec.kind in ("section", "store"):
                out[key] = Frozen(self.section(None, spec.section, key) or {})
            else:
                out[key] = spec.default
        return out

    def value(self, node: yaml.Node, spec: Field, path: str) -> Any:
        if spec.kind == "store":
            return self.store(node, spec, path)
        if spec.kind == "section":
            sub = self.section(node, spec.section, path)
            return _BAD if sub is None else Frozen(sub)
        if spec.kind == "keys":
            if not isinstance(node, yaml.SequenceNode):
                self.err(node, path, "expected a list of keys ({id: ..., file: ...})")
                return _BAD
            keys = []
            for i, item in enumerate(node.value):
                sub = self.section(item, spec.section or _verp_key_schema(), f"{path}[{i}]")
                if sub is not None:
                    keys.append(Frozen(sub))
            # a VERP key is named by its id, a DKIM key by selector and domain
            ids = [k.id if "id" in k else (k.selector, k.domain) for k in keys]
            if len(set(ids)) != len(ids):
                self.err(node, path, "key ids must be unique")
            return tuple(keys)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and spec.kind not in ("addresses", "strings", "networks"):
            raw = self.scalar(node)
            self.err(node, path, f"expected {_expect(spec)}, got {_tname(raw)}"
                     + (" (quote the value: [..] is a YAML list)" if isinstance(raw, list) and spec.kind == "str" else ""))
            return _BAD
        raw = self.scalar(node)
        try:
            return _check(spec, raw)
        except ValueError as exc:
            self.err(node, path, str(exc))
            return _BAD


    def store(self, node: yaml.Node, spec: Field, path: str) -> Any:
        """``store: sqlite`` (the defaults) or a mapping whose ``url``, if any, is a PostgreSQL URL."""
        if isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:null":
            raw = self.scalar(node)
            if raw != "sqlite":
                self.err(node, path, f"expected sqlite or a mapping (url: postgresql://...), got {_tname(raw)}"
                         + (f" {raw!r}" if isinstance(raw, str) else ""))
                return _BAD
            node = None
        sub = self.section(node, spec.section, path)
        if sub is None:
            return _BAD
        problem = url_problem(sub["url"]) if sub.get("url") is not None else None
        if problem:
            self.err(node, f"{path}.url", problem)
            return _BAD
        pool = sub.get("pool")
        if isinstance(pool, Frozen) and "min" in pool and "max" in pool and pool.min > pool.max:
            self.err(node, f"{path}.pool", f"min ({pool.min}) is more than max ({pool.max})")
            return _BAD
        return Frozen(sub)


_BAD = object()


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (what logs and ``listgate check`` show)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a PostgreSQL URL we accept (None if it is); never quotes a password.

    Form (libpq "Connection URIs", https://www.postgresql.org/docs/current/libpq-connect.html
    section 34.1.1.2): ``postgresql://[USER[:PASSWORD]@][HOST][:PORT][/DB][?PARAM=VALUE...]``.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port                              # raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("postgresql", "postgres"):
        return f"{mask_url(url)!r}: only postgresql:// URLs are supported"
    if not parts.path.strip("/"):
        return f"{mask_url(url)!r}: name the database (postgresql://USER@HOST/DB)"
    if parts.fragment:
        return f"{mask_url(url)!r}: a URL with a #fragment"
    return None


def _verp_key_schema() -> Section:
    from .schema import VERP_KEY
    return VERP_KEY


def _expect(spec: Field) -> str:
    return {
        "str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
        "duration": "a duration like 7d, 12h, 30m", "size": "a size like 10MB or a byte count",
        "address": "an address local@domain", "addresses": "a list of addresses",
        "listname": "a list name", "domain": "a domain name", "enum": "one of " + ", ".join(spec.choices),
        "strings": "a list of strings", "networks": "a list of networks", "path": "a path",
        "socket": "a socket (unix:PATH or inet:PORT@HOST)", "hostport": "HOST:PORT", "timestamp": "a date (YYYY-MM-DD)",
    }.get(spec.kind, spec.kind)


def _check(spec: Field, raw: Any) -> Any:
    kind = spec.kind
    if raw is None:
        if spec.required or spec.default is not None and kind not in ("str", "path"):
            raise ValueError(f"expected {_expect(spec)}, got nothing (null)")
        return spec.default
    if kind in ("str", "path", "socket", "hostport", "domain", "listname", "address", "enum", "duration") and not isinstance(raw, str):
        if kind == "duration" and isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw == 0:
            return 0.0
        raise ValueError(f"expected {_expect(spec)}, got {_tname(raw)}")
    if kind in ("str", "path"):
        if "\x00" in raw:
            raise ValueError("NUL character in string")
        return raw
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"expected an integer, got {_tname(raw)}")
        _min(spec, raw)
        return raw
    if kind == "float":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"expected a number, got {_tname(raw)}")
        _min(spec, raw)
        return float(raw)
    if kind == "bool":
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {_tname(raw)}")
        return raw
    if kind == "duration":
        return parse_duration(raw)
    if kind == "size":
        if isinstance(raw, int) and not isinstance(raw, bool):
            if raw < 0:
                raise ValueError("size must not be negative")
            return raw
        m = _SIZE_RE.match(str(raw).strip()) if isinstance(raw, str) else None
        if not m:
            raise ValueError(f"expected {_expect(spec)}, got {raw!r}")
        return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if kind == "enum":
        if raw not in spec.choices:
            raise ValueError(f"{raw!r} is not one of: {', '.join(spec.choices)}")
        return raw
    if kind == "domain":
        if not _DOMAIN_RE.match(raw):
            raise ValueError(f"{raw!r} is not a valid domain name")
        return raw.lower()
    if kind == "listname":
        if not LISTNAME_RE.match(raw) or ".." in raw:
            raise ValueError(f"{raw!r} is not a safe list name (lower-case letters, digits, '.', '_', '-'; "
                             "no '/', no '..', 2-40 characters, starting and ending with a letter or digit)")
        for suffix in ROLE_SUFFIXES.values():
            if raw.endswith(suffix):
                raise ValueError(f"{raw!r} ends with {suffix!r}, which listgate uses for the list's own addresses")
        return raw
    if kind == "address":
        if not valid_address(raw):
            raise ValueError(f"{raw!r} is not a valid address (local@domain)")
        return raw
    if kind in ("addresses", "strings", "networks"):
        if not isinstance(raw, list):
            raise ValueError(f"expected {_expect(spec)}, got {_tname(raw)}")
        out = []
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                raise ValueError(f"item {i}: expected a string, got {_tname(item)}")
            if kind == "addresses" and not valid_address(item):
                raise ValueError(f"item {i}: {item!r} is not a valid address (local@domain)")
            if kind == "networks":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"item {i}: {item!r} is not a network (e.g. 127.0.0.0/8)") from None
            out.append(item)
        return tuple(out)
    if kind == "socket":
        parse_socket(raw)
        return raw
    if kind == "hostport":              # HOST:PORT, [IPV6]:PORT (the metrics endpoint)
        parse_socket("inet:" + raw)
        return raw
    if kind == "timestamp":
        return _timestamp(raw)
    raise ValueError(f"internal: unknown kind {kind}")


def _timestamp(raw: Any) -> float:
    """A YAML date / date-time (or an ISO 8601 string) → POSIX seconds; naive means UTC."""
    import datetime as _dt
    if isinstance(raw, str):
        try:
            raw = _dt.datetime.fromisoformat(raw.strip())
        except ValueError:
            raise ValueError(f"{raw!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)") from None
    if isinstance(raw, _dt.datetime):
        return (raw if raw.tzinfo else raw.replace(tzinfo=_dt.timezone.utc)).timestamp()
    if isinstance(raw, _dt.date):
        return _dt.datetime(raw.year, raw.month, raw.day, tzinfo=_dt.timezone.utc).timestamp()
    raise ValueError(f"expected a date (YYYY-MM-DD), got {_tname(raw)}")


def _min(spec: Field, value: float) -> None:
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"must be at least {spec.minimum:g}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"must be at most {spec.maximum:g}, got {value!r}")


def parse_socket(text: str) -> tuple[str, Any]:
    """``unix:PATH`` → ``("unix", PATH)``; ``inet:PORT@HOST`` or ``inet:HOST:PORT`` → ``("inet", (HOST, PORT))``.

    The ``inet:PORT@HOST`` form is libmilter's (smfi_setconn); ``inet:HOST:PORT`` is
    Postfix's. Raises ValueError otherwise.
    """
    if text.startswith("unix:") and len(text) > 5:
        return "unix", text[5:]
    if text.startswith(("inet:", "inet6:")):
        rest = text.split(":", 1)[1]
        if "@" in rest:
            port, host = rest.split("@", 1)
        elif rest.startswith("["):
            host, _, port = rest[1:].partition("]:")
        else:
            host, _, port = rest.rpartition(":")
        if port.isdigit() and 0 < int(port) < 65536 and host:
            return "inet", (host.strip("[]"), int(port))
    raise ValueError(f"{text!r} is not a socket (unix:PATH, inet:PORT@HOST or inet:HOST:PORT)")


# A configuration file is small; anything larger is a mistake (or /dev/zero).
MAX_FILE_BYTES = 1024 * 1024


def valid_domain(text: str) -> bool:
    """A domain name as list files accept it (LDH labels, at most 253 characters)."""
    return bool(_DOMAIN_RE.match(text))


def read_small_file(path: str) -> bytes:
    """The bytes of regular file ``path`` of at most :data:`MAX_FILE_BYTES`.

    Raises :class:`ConfigError` (``FILE:1: (file): ...``) otherwise: a FIFO or a
    device would hang or never end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError([f"{path}:1: (file): cannot read: {exc.strerror}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError([f"{path}:1: (file): not a regular file"])
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError([f"{path}:1: (file): too large ({st.st_size} bytes; at most {MAX_FILE_BYTES})"])
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}:1: (file): cannot read: {exc.strerror}"]) from None
    finally:
        os.close(fd)
    return data


def load_yaml_file(path: str, schema: Section) -> dict[str, Any]:
    """Read and validate one YAML file; raises :class:`ConfigError` with every problem.

    Only regular files of at most :data:`MAX_FILE_BYTES` are read
    (:func:`read_small_file`); only the YAML core schema is accepted
    (no ``!!python`` tags, no ``<<`` merge keys: each is reported with its line).
    """
    data = read_small_file(path)
    checker = _Checker(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}:1: (file): not UTF-8: {exc}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        result = checker.section(node, schema, "")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}:{line}: (syntax): {problem}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}:1: (syntax): nested too deeply"]) from None
    if checker.errors:
        raise ConfigError(checker.errors)
    return result or {}
