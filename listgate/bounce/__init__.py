"""Bounces: classification (``classify``) and the life cycle (``engine``).

CONTRACT for classification (``listgate.bounce.classify``)::

    CLASSES = ("hard", "soft", "delayed", "delivered", "relayed", "expanded",
               "autoreply", "complaint", "policy", "unknown",
               "site",      # our MTA could not get the TLS/MTA-STS/DANE it requires: weight 0
               "report")    # for the postmaster: non-complaint ARF, TLS/DMARC reports
    FAILURE_CLASSES = ("hard", "soft", "policy")       # scored (policy with weight 0 by default)

    @dataclass(frozen=True)
    class Failure:
        address: str | None         # failing address as reported (None: could not attribute)
        bounce_class: str           # one of CLASSES
        status: str | None          # enhanced status code '5.1.1' (RFC 3463) if known
        diagnostic: str             # Diagnostic-Code / SMTP text, trimmed
        attribution: str            # 'verp', 'probe', 'dsn', 'detector:<name>', 'heuristic', 'none'
        reason: str                 # human explanation of why this class ("5.7.1 + 'spam' in text")

    @dataclass(frozen=True)
    class Classification:
        is_bounce: bool             # False for human replies, auto-replies, ...
        kind: str                   # 'dsn', 'arf', 'autoreply', 'non-standard', 'not-a-bounce', 'report'
        failures: tuple[Failure, ...]
        message_id: str | None      # of the bounce itself
        original_message_id: str | None
        notes: tuple[str, ...]      # why, for `listgate classify`

    def classify(msg: bytes, *, envelope_recipient: str | None = None,
                 verp_address: str | None = None) -> Classification
        # never raises on bad input; verp_address, when the recipient decoded to a
        # member or probe, attributes an otherwise address-less failure to it.
"""
