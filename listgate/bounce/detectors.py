"""flufl.bounce's detectors for non-standard bounce formats, run safely.

``flufl.bounce.all_failures`` stops at the first detector that finds
something but re-raises any detector's exception, and does not say which
detector answered. We run the same detectors in the same order (its
``_scan._DETECTORS`` list, most specific first) one at a time, so a detector
that crashes on a malformed message is skipped instead of losing the
classification, and the answer is attributed as ``detector:<name>``. If a
future flufl.bounce drops that list we fall back to ``all_failures`` as a
whole (attribution ``detector:flufl``).

Formats flufl.bounce has no detector for are read by ours, in
:mod:`.formats` (run after these, same result type).

flufl.bounce's "temporary" set comes from delay warnings (DSN
``Action: delayed``, its SimpleWarning patterns); its "permanent" set from
everything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

import flufl.bounce

from ..addresses import bare
from ..log import events

log = events("listgate.bounce")

try:  # private in flufl.bounce 6; see the module docstring
    from flufl.bounce._scan import _DETECTORS as _FLUFL_DETECTORS
except ImportError:  # pragma: no cover - depends on the installed flufl.bounce
    _FLUFL_DETECTORS = None


@dataclass(frozen=True)
class DetectorResult:
    name: str                     # 'postfix', 'qmail', ... or 'flufl'
    temporary: tuple[str, ...]    # addresses flufl.bounce reports as temporary (warnings)
    permanent: tuple[str, ...]    # addresses it reports as permanently failing
    # Our own detectors (:mod:`.formats`): (class, reason) from the format's
    # wording, used when the text next to the address has no code or known words.
    verdict: tuple[str, str] | None = None


def _decode(addresses) -> tuple[str, ...]:
    out = []
    for addr in addresses or ():
        if isinstance(addr, bytes):
            addr = addr.decode("utf-8", "replace")
        addr = bare(str(addr))
        if addr and addr not in out:
            out.append(addr)
    return tuple(sorted(out))


def run_detectors(msg: Message, *, skip: tuple[str, ...] = ()) -> DetectorResult | None:
    """The first flufl.bounce detector that finds failures in ``msg``, or None.

    ``skip``: detector names not to run (e.g. ``('dsn',)`` when the caller
    parsed the DSN itself). Never raises.
    """
    if _FLUFL_DETECTORS is None:
        try:
            temporary, permanent = flufl.bounce.all_failures(msg)
        except Exception as exc:
            log.debug("flufl_bounce_failed", error=exc)
            return None
        if temporary or permanent:
            return DetectorResult("flufl", _decode(temporary), _decode(permanent))
        return None
    for detector_class in _FLUFL_DETECTORS:
        name = detector_class.__name__.lower()
        if name in skip:
            continue
        try:
            temporary, permanent = detector_class().process(msg)
        except Exception as exc:  # a detector tripping over a malformed message
            log.debug("flufl_bounce_failed", detector=name, error=exc)
            continue
        if temporary or permanent:
            return DetectorResult(name, _decode(temporary), _decode(permanent))
    return None
