"""A private Postfix on loopback for tests and benches.

``PostfixInstance`` builds a complete Postfix configuration in a directory of
its own (``config_directory``, ``queue_directory``, ``data_directory`` and the
mail log all live under ``workdir``), starts it as root with
``postfix -c DIR start``, and stops it (and kills anything left) on exit.
Nothing touches the system Postfix or ``/etc/postfix/main.cf``: as root,
``postfix -c`` and ``postqueue -c`` accept any directory; the
``alternate_config_directories`` check in the default main.cf applies only to
unprivileged users (postconf(5)).

The listgate-specific lines come from ``conf/postfix/main.cf.listgate`` and
``conf/postfix/master.cf.listgate`` -- the snippets INSTALL tells admins to
add -- with their ``@...@`` placeholders substituted; everything else here is
test plumbing (ports, directories, short retry delays, no DNS).

Layout::

    workdir/etc/main.cf, master.cf     config_directory
    workdir/spool/                     queue_directory
    workdir/data/                      data_directory (owned by postfix)
    workdir/maillog                    maillog_file (postlogd, Postfix 3.4+)

Mail to any address outside the list domain goes to the SMTP sink through
``relayhost = [127.0.0.1]:SINK_PORT``; with ``smtp_dns_support_level =
disabled`` and ``smtp_host_lookup = native`` nothing asks DNS.

``workdir`` must be reachable by the ``postfix`` user (the daemons chdir into
the queue directory and connect to unix sockets), which pytest's ``tmp_path``
is not (``/tmp/pytest-of-root`` is mode 0700). By default the instance makes
its own directory under ``/tmp`` (mode 0755) and removes it on exit; put a
listgate instance whose unix milter socket Postfix must reach under
``pf.workdir`` too (``PostfixInstance`` creates ``workdir`` in ``__init__``,
before ``start``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from listgate.config import parse_socket

CONF = Path(__file__).resolve().parents[2] / "conf" / "postfix"
MAIN_SNIPPET = CONF / "main.cf.listgate"
MASTER_SNIPPET = CONF / "master.cf.listgate"
LMTP_SNIPPET = CONF / "main.cf.listgate-lmtp"

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
POSTSUPER = shutil.which("postsuper") or "/usr/sbin/postsuper"
SENDMAIL = "/usr/sbin/sendmail"


class PostfixError(RuntimeError):
    """Postfix could not be configured, checked, started or queried."""


def available() -> bool:
    """True when a Postfix we can run as root is installed (tests skip otherwise)."""
    return os.geteuid() == 0 and os.path.exists(POSTFIX) and os.path.exists(POSTCONF)


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (the kernel's choice; callers retry if it is taken by then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def postfix_socket(listgate_socket: str, site=None) -> str:
    """Translate a listgate socket spec (``listgate.config.parse_socket``) to Postfix syntax.

    ``inet:PORT@HOST`` / ``inet:HOST:PORT`` -> ``inet:HOST:PORT``;
    ``unix:PATH`` stays, a relative PATH made absolute against ``site``'s
    state_dir when a :class:`listgate.config.Site` is given (as listgate does).
    Raises ValueError for anything else.
    """
    kind, where = parse_socket(listgate_socket)
    if kind == "unix":
        return f"unix:{site.resolve(where) if site is not None else where}"
    host, port = where
    return f"inet:[{host}]:{port}" if ":" in host else f"inet:{host}:{port}"


def render_snippet(path: Path, values: dict[str, str]) -> str:
    """``path``'s text with every ``@NAME@`` replaced from ``values``.

    Raises PostfixError if a placeholder is left without a value.
    """
    text = path.read_text(encoding="utf-8")
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    # placeholders are documented in comments; only uncommented lines must be complete
    live = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    left = re.findall(r"@[A-Z_]+@", live)
    if left:
        raise PostfixError(f"{path.name}: no value for {sorted(set(left))}")
    return text


def _check_searchable(path: Path) -> None:
    """Postfix daemons run as ``postfix`` and chdir into the queue directory:
    every directory above it must be searchable by others. Fail early and
    clearly instead of a master that dies with "Permission denied"."""
    for parent in [path, *path.parents]:
        if not os.stat(parent).st_mode & 0o001:
            raise PostfixError(f"{parent} is not searchable by the postfix user (mode "
                               f"{os.stat(parent).st_mode & 0o777:04o}); pytest's tmp_path is like that: "
                               "use the default workdir (under /tmp) or chmod o+x")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


class PostfixInstance:
    """A private Postfix (context manager). See the module docstring.

    Parameters (ports default to free loopback ports):

    - ``list_domain``: the domain routed as INSTALL says (relay_domains +
      the ``discard:`` transport for anything the milter leaves); default
      ``lists.example.org``.
    - ``sink_port``: where all other mail goes (``relayhost``).
    - ``milter``: listgate milter socket (listgate or Postfix syntax), or
      None for no milter (``smtpd_milters``/``non_smtpd_milters`` emptied).
    - ``policy``: listgate policy socket, or None for no policy check.
    - ``lmtp``: listgate LMTP socket: the list domain goes to it
      (``main.cf.listgate-lmtp`` instead of ``main.cf.listgate``; no milter).
    - ``smtpd_port``: the public smtpd (with milter and policy);
      ``reinject_port``: the re-injection smtpd from ``master.cf.listgate``.
    - ``bounce_queue_lifetime`` / ``maximal_queue_lifetime``: Postfix time
      values (``"0"`` bounces soft failures at the first attempt).
    - ``site``: a loaded :class:`listgate.config.Site`; supplies ``milter``,
      ``policy``, ``reinject_port`` and (if the site has one list domain)
      ``list_domain`` unless those are given explicitly.
    - ``extra``: more main.cf parameters (name -> value), applied last.
    - ``workdir``: where to build it (must be traversable by ``postfix``);
      default a fresh ``/tmp/listgate-postfix-*`` removed on exit unless
      ``keep=True``.

    Attributes after ``start()``: ``smtpd_port``, ``reinject_port``,
    ``config_dir``, ``queue_dir``, ``maillog``.
    """

    def __init__(self, *, list_domain: str | None = None, sink_port: int | None = None,
                 milter: str | None = None, policy: str | None = None, lmtp: str | None = None,
                 smtpd_port: int | None = None, reinject_port: int | None = None,
                 bounce_queue_lifetime: str = "1h", maximal_queue_lifetime: str = "1h",
                 myhostname: str = "mx.listgate.test", extra: dict[str, str] | None = None,
                 workdir: str | os.PathLike | None = None, keep: bool = False,
                 start_timeout: float = 30.0, site=None):
        if site is not None:
            milter = milter or postfix_socket(site.conf.milter.socket, site)
            policy = policy or postfix_socket(site.conf.policy.socket, site)
            reinject_port = reinject_port or site.conf.reinject.port
            if list_domain is None and len(site.domains) == 1:
                list_domain = next(iter(site.domains))
        self.list_domain = list_domain or "lists.example.org"
        self.sink_port = sink_port if sink_port is not None else free_port()
        self.milter = postfix_socket(milter) if milter else None
        self.policy = postfix_socket(policy) if policy else None
        self.lmtp = postfix_socket(lmtp) if lmtp else None
        self._fixed_ports = smtpd_port is not None or reinject_port is not None
        self.smtpd_port = smtpd_port or free_port()
        self.reinject_port = reinject_port or free_port()
        self.bounce_queue_lifetime = bounce_queue_lifetime
        self.maximal_queue_lifetime = maximal_queue_lifetime
        self.myhostname = myhostname
        self.extra = dict(extra or {})
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.keep = keep
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="listgate-postfix-")
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        _check_searchable(self.workdir)
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "spool"
        self.data_dir = self.workdir / "data"
        self.maillog = self.workdir / "maillog"
        self.running = False

    # -- configuration -------------------------------------------------------

    def main_cf(self) -> str:
        """The complete main.cf text: test plumbing, then the INSTALL snippet."""
        w = self.workdir
        base = f"""\
# test plumbing (tests/harness/postfix.py); listgate's lines follow
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
myhostname = {self.myhostname}
mydomain = listgate.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{self.sink_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_error_sleep_time = 0s
in_flow_delay = 0s
biff = no
maillog_file = {self.maillog}
maillog_file_prefixes = {w}
syslog_name = postfix-{w.name}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_connect_timeout = 5s
bounce_queue_lifetime = {self.bounce_queue_lifetime}
maximal_queue_lifetime = {self.maximal_queue_lifetime}
"""
        if self.lmtp:
            return base + "\n" + render_snippet(LMTP_SNIPPET, {
                "LIST_DOMAIN": self.list_domain, "LMTP_SERVICE": self.lmtp,
                "POLICY_SERVICE": self.policy or "inet:127.0.0.1:9"})
        snippet = render_snippet(MAIN_SNIPPET, {
            "LIST_DOMAIN": self.list_domain,
            # a placeholder service keeps the snippet intact; emptied below when unused
            "MILTER_SOCKET": self.milter or "inet:127.0.0.1:9",
            "POLICY_SERVICE": self.policy or "inet:127.0.0.1:9",
        })
        return base + "\n" + snippet

    def overrides(self) -> dict[str, str]:
        """Parameters changed after the snippet is written (``postconf -e``,
        in place): the unused milter/policy lines, then ``extra``."""
        out = {}
        if self.milter is None and not self.lmtp:
            out.update(smtpd_milters="", non_smtpd_milters="")
        if self.policy is None:
            out.update(smtpd_recipient_restrictions="")
        out.update(self.extra)
        return out

    def master_cf(self) -> str:
        """The complete master.cf: Postfix's services unchrooted, the public
        smtpd on ``smtpd_port``, then the INSTALL re-injection snippet."""
        services = [
            f"127.0.0.1:{self.smtpd_port} inet n - n - - smtpd",
            "pickup    unix  n - n 60 1 pickup",
            "cleanup   unix  n - n -  0 cleanup",
            "qmgr      unix  n - n 300 1 qmgr",
            "rewrite   unix  - - n -  - trivial-rewrite",
            "bounce    unix  - - n -  0 bounce",
            "defer     unix  - - n -  0 bounce",
            "trace     unix  - - n -  0 bounce",
            "verify    unix  - - n -  1 verify",
            "flush     unix  n - n 1000? 0 flush",
            "proxymap  unix  - - n -  - proxymap",
            "proxywrite unix - - n -  1 proxymap",
            "showq     unix  n - n -  - showq",
            "smtp      unix  - - n -  - smtp",
            "relay     unix  - - n -  - smtp",
            "lmtp      unix  - - n -  - lmtp",
            "error     unix  - - n -  - error",
            "retry     unix  - - n -  - error",
            "discard   unix  - - n -  - discard",
            "anvil     unix  - - n -  1 anvil",
            "scache    unix  - - n -  1 scache",
            "postlog   unix-dgram n - n - 1 postlogd",
        ]
        snippet = render_snippet(MASTER_SNIPPET, {"REINJECT_PORT": self.reinject_port})
        return "\n".join(services) + "\n\n" + snippet

    def write_config(self) -> None:
        """Write main.cf/master.cf and prepare the directories (idempotent)."""
        self.config_dir.mkdir(exist_ok=True)
        self.queue_dir.mkdir(exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        # master and the daemons run as mail_owner and need data_directory
        shutil.chown(self.data_dir, user="postfix")
        (self.config_dir / "main.cf").write_text(self.main_cf(), encoding="utf-8")
        (self.config_dir / "master.cf").write_text(self.master_cf(), encoding="utf-8")
        params = self.overrides()
        if params:
            self.postconf("-e", *(f"{k}={v}" for k, v in params.items()))

    def check(self) -> str:
        """Write the configuration and run ``postfix -c DIR check``; returns its output.

        Raises PostfixError when it fails or warns: ``postfix check`` exits 0
        on warnings such as "unused parameter" (a typo), which INSTALL's
        snippets must never produce.
        """
        self.write_config()
        out = self._run([POSTFIX, "-c", str(self.config_dir), "check"])
        if re.search(r"\b(warning|fatal|error):", out):
            raise PostfixError(f"postfix check is not clean:\n{out}")
        return out

    # -- life cycle ----------------------------------------------------------

    def start(self) -> "PostfixInstance":
        """Configure, ``postfix check``, start; returns when both smtpds greet with 220.

        Auto-chosen ports that turn out to be taken are replaced and the
        start retried (twice). Raises PostfixError with the log tail otherwise.
        """
        for attempt in range(3):
            self.check()
            # postfix start would repeat the whole check; the queue directory's
            # quick-start file (postfix-script) skips it once, as we just ran it
            (self.queue_dir / "quick-start").touch()
            try:
                self._run([POSTFIX, "-c", str(self.config_dir), "start"])
                self.running = True
                self._wait_banner(self.smtpd_port)
                self._wait_banner(self.reinject_port)
                return self
            except PostfixError:
                self.stop()
                if self._fixed_ports or attempt == 2 or "in use" not in self.log_text():
                    raise PostfixError("postfix did not start:\n" + self.log_tail()) from None
                self.smtpd_port, self.reinject_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _wait_banner(self, port: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.settimeout(5)
                    banner = s.recv(512)
                    if banner.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
                    last = PostfixError(f"port {port} greeted with {banner!r}")
            except OSError as exc:
                last = exc
            if self.master_pid() is None and self.running:
                break  # master died: no point waiting
            time.sleep(0.05)
        raise PostfixError(f"no 220 banner on 127.0.0.1:{port}: {last}")

    def master_pid(self) -> int | None:
        """PID of this instance's master process, or None when it is not running."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop(self, timeout: float = 15.0) -> None:
        """Stop this instance: ``postfix abort`` (SIGTERM to master, as ``postfix
        stop`` does, without its one-second polling), wait for master to exit,
        then SIGTERM/SIGKILL any process still running this configuration."""
        if self.master_pid() is not None:
            subprocess.run([POSTFIX, "-c", str(self.config_dir), "abort"],
                           capture_output=True, timeout=timeout, check=False)
        deadline = time.monotonic() + timeout
        while self.master_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            pids = self._instance_pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + wait
            while pids and time.monotonic() < end:
                pids = [p for p in pids if os.path.exists(f"/proc/{p}") and not _zombie(p)]
                time.sleep(0.02)
        self.running = False

    def _instance_pids(self) -> list[int]:
        """Processes of this instance: master exports MAIL_CONFIG=config_dir to its children."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    env = fh.read().split(b"\0")
            except OSError:
                continue
            if marker in env:
                pids.append(int(entry))
        return pids

    def close(self) -> None:
        """Stop and, if the instance made its own workdir, remove it."""
        try:
            self.stop()
        finally:
            if self._own_workdir and not self.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "PostfixInstance":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------

    def _run(self, argv: list[str], timeout: float = 60.0) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise PostfixError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc.stdout + proc.stderr

    def postconf(self, *args: str) -> str:
        """``postconf -c DIR ARGS...``: e.g. ``postconf("-h", "relayhost")``."""
        return self._run([POSTCONF, "-c", str(self.config_dir), *args]).strip()

    def set(self, **params: str) -> None:
        """Change main.cf parameters (``postconf -e``) and ``postfix reload``."""
        self.extra.update(params)
        self.postconf("-e", *(f"{k}={v}" for k, v in params.items()))
        if self.running:
            self._run([POSTFIX, "-c", str(self.config_dir), "reload"])

    def flush(self) -> None:
        """``postqueue -f``: retry every deferred message now."""
        self._run([POSTQUEUE, "-c", str(self.config_dir), "-f"])

    def queue(self) -> list[dict]:
        """The queue as ``postqueue -j`` records (Postfix 3.1+): dicts with
        ``queue_id``, ``queue_name``, ``sender``, ``recipients`` ([{address, delay_reason}])."""
        out = self._run([POSTQUEUE, "-c", str(self.config_dir), "-j"])
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def queue_ids(self) -> list[str]:
        return [rec["queue_id"] for rec in self.queue()]

    def wait_queue_empty(self, timeout: float = 30.0, flush: bool = True) -> None:
        """Wait until no message is queued (flushing deferred mail each second).

        Raises TimeoutError with the queue listing when it does not empty.
        """
        deadline = time.monotonic() + timeout
        next_flush = 0.0
        while True:
            q = self.queue()
            if not q:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Postfix queue not empty after {timeout}s: {q}")
            if flush and time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + 1.0
            time.sleep(0.1)

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_offset(self) -> int:
        """Current size of the mail log: pass as ``since`` to see only later lines."""
        try:
            return self.maillog.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_log(self, regex: str, timeout: float = 30.0, since: int = 0) -> re.Match:
        """Wait for a mail log line (after byte offset ``since``) matching ``regex``.

        Returns the match (``re.MULTILINE``); raises TimeoutError with the log tail.
        """
        pattern = re.compile(regex, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(self.maillog, "rb") as fh:
                    fh.seek(since)
                    text = fh.read().decode("utf-8", "replace")
            except FileNotFoundError:
                text = ""
            m = pattern.search(text)
            if m:
                return m
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no log line matching {regex!r} in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def smtp(self, port: int | None = None, timeout: float = 30.0) -> smtplib.SMTP:
        """An ``smtplib.SMTP`` connected to the public smtpd (or ``port``), after EHLO."""
        client = smtplib.SMTP("127.0.0.1", port or self.smtpd_port, local_hostname="client.listgate.test",
                              timeout=timeout)
        client.ehlo()
        return client

    def submit(self, mail_from: str, rcpts: str | list[str], msg: bytes | str) -> None:
        """Submit locally with Postfix's ``sendmail -C DIR -i -f`` (postdrop,
        pickup, cleanup): the non-SMTP path, which ``non_smtpd_milters`` covers.

        Raises PostfixError when sendmail refuses (e.g. a non-SMTP milter reject).
        """
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        if isinstance(msg, str):
            msg = msg.encode("utf-8")
        proc = subprocess.run([SENDMAIL, "-C", str(self.config_dir), "-i", "-f", mail_from, "--", *rcpts],
                              input=msg, capture_output=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise PostfixError(f"sendmail exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")

    def send(self, mail_from: str, rcpts: str | list[str], msg: bytes | str, *,
             port: int | None = None, timeout: float = 30.0):
        """Send one message through the public smtpd (or ``port``).

        Returns ``smtplib.SMTP.sendmail``'s dict of refused recipients ({} when
        all were accepted) or the ``smtplib.SMTPException``/``OSError`` raised
        (e.g. ``SMTPRecipientsRefused`` carrying each code and text).
        """
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        if isinstance(msg, str):
            msg = msg.encode("utf-8")
        try:
            with self.smtp(port, timeout) as client:
                return client.sendmail(mail_from, rcpts, msg)
        except (smtplib.SMTPException, OSError) as exc:
            return exc
