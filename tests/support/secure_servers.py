"""Redis servers that are locked down the way a careful operator runs them.

- ACL users: the ``default`` user is disabled (a client that does not log in
  can run nothing, not even PING), an ``admin`` user with every right serves
  the tests' own checks, and each :class:`User` gets exactly the rules the
  test gives it.  The users live in an ACL file in the server's private
  directory, so ``ACL LOG`` and ``ACL SETUSER`` work as in production.
- TLS: :func:`make_certificates` builds a throw-away CA, a server certificate
  for ``localhost`` and a client certificate with the ``openssl`` command
  line; the server then listens on a TLS port only (``--port 0``), and its
  readiness is checked over TLS with the CA, not with a plain PING.

Both are :class:`servers.RedisServer` otherwise: a free loopback port kept
across restarts, killed by pid, its directory removed at :meth:`close`.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import redis

from support.servers import LOOPBACK, RedisServer, RedisServerError, no_retry

__all__ = [
    "ADMIN",
    "TLS_HOST",
    "Certificates",
    "SecureRedisServer",
    "User",
    "make_certificates",
]

#: The user the tests' own clients log in as (every right).
ADMIN = "admin"
#: The name the server certificate is made for; TLS URLs use it as the host.
TLS_HOST = "localhost"


def _password() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class User:
    """One ACL user: ``rules`` is the part of an ACL line after the password,
    e.g. ``"resetchannels %R~stream:logs:* +xrange"``."""

    name: str
    rules: str
    password: str = field(default_factory=_password)

    def acl_line(self) -> str:
        return f"user {self.name} on >{self.password} {self.rules}"


@dataclass(frozen=True)
class Certificates:
    """Files of a test CA and of the certificates it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


# What strict X.509 checking (Python 3.13's default, OpenSSL's -x509_strict)
# asks of each certificate; docs/security.md lists the same for operators.
# The CA's own extensions are given here rather than taken from the system's
# openssl.cnf, whose defaults lack keyUsage (strict checking then refuses
# every certificate the CA signed: "CA cert does not include key usage").
_CA_CONFIG = (
    "[req]\n"
    "distinguished_name = subject\n"
    "x509_extensions = ca\n"
    "[subject]\n"
    "[ca]\n"
    "basicConstraints=critical,CA:TRUE\n"
    "keyUsage=critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid:always\n"
)
_LEAF = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid:always\n"
)


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=30
    )
    if done.returncode != 0:
        raise RedisServerError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _leaf(directory: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    """A P-256 key and a certificate for it, signed by the CA in ``directory``."""
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(_LEAF + extensions)
    _openssl(
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        key.name,
        "-out",
        csr.name,
        "-subj",
        subject,
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr.name,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        cert.name,
        "-extfile",
        ext_file.name,
        cwd=directory,
    )
    return cert, key


def make_certificates(directory: Path, host: str = TLS_HOST) -> Certificates:
    """A CA made for this test run, a server certificate for ``host`` (its
    only subject name: a client that checks host names refuses any other)
    and a client certificate, all under ``directory``.  EC keys: quick to make.
    Each carries what strict X.509 checking requires (see ``_CA_CONFIG``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.cnf").write_text(_CA_CONFIG)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=redis-logstream test CA",
        "-config",
        "ca.cnf",
        cwd=directory,
    )
    server_cert, server_key = _leaf(
        directory,
        "server",
        f"/CN={host}",
        f"subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n",
    )
    client_cert, client_key = _leaf(
        directory, "client", "/CN=redis-logstream test client", "extendedKeyUsage=clientAuth\n"
    )
    return Certificates(directory / "ca.crt", server_cert, server_key, client_cert, client_key)


class SecureRedisServer(RedisServer):
    """A redis-server with ACL users, optionally TLS-only.

    ``users`` get the ACL lines of :meth:`User.acl_line`; ``default`` is
    off.  With ``certificates`` the server listens with TLS only, on
    :attr:`port`; ``client_certificates`` makes it demand a client
    certificate signed by the CA (``tls-auth-clients yes``).
    """

    def __init__(
        self,
        users: Sequence[User] = (),
        *,
        certificates: Certificates | None = None,
        client_certificates: bool = False,
        args: Sequence[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(args, start_timeout=start_timeout)
        self.users: dict[str, User] = {user.name: user for user in users}
        self.admin = User(ADMIN, "~* &* +@all")
        self.certificates = certificates
        self.client_certificates = client_certificates
        self.acl_path = self.dir / "users.acl"
        self._admin_client: redis.Redis | None = None
        lines = ["user default off resetchannels -@all", self.admin.acl_line()]
        lines += [user.acl_line() for user in self.users.values()]
        self.acl_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--aclfile",
            str(self.acl_path),
        ]
        certs = self.certificates
        if certs is None:
            return [*cmd, "--port", str(self.port), *self.args]
        auth_clients = "yes" if self.client_certificates else "no"
        return [
            *cmd,
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(certs.server_cert),
            "--tls-key-file",
            str(certs.server_key),
            "--tls-ca-cert-file",
            str(certs.ca),
            "--tls-auth-clients",
            auth_clients,
            *self.args,
        ]

    def _probe(self) -> redis.Redis:
        """The admin user's client (over TLS, with the CA, when the server
        speaks only TLS): the default user is off."""
        return redis.Redis.from_url(
            self.url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=no_retry()
        )

    # -- URLs ----------------------------------------------------------------

    def url_for(
        self,
        user: str | None,
        *,
        host: str | None = None,
        ca: bool = True,
        client_cert: bool | None = None,
        **query: Any,
    ) -> str:
        """A URL logging in as ``user`` (None: nobody).

        With TLS: ``rediss://localhost:PORT/0``, with ``ssl_ca_certs`` unless
        ``ca`` is False and the client certificate when the server demands
        one (or ``client_cert`` says so); ``query`` adds URL options.
        """
        if self.port is None:
            raise RedisServerError("the server has no port before its first start()")
        login = ""
        if user is not None:
            password = self.admin.password if user == ADMIN else self.users[user].password
            login = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        options: dict[str, Any] = {}
        certs = self.certificates
        if certs is not None:
            if ca:
                options["ssl_ca_certs"] = str(certs.ca)
            if self.client_certificates if client_cert is None else client_cert:
                options["ssl_certfile"] = str(certs.client_cert)
                options["ssl_keyfile"] = str(certs.client_key)
        options.update(query)
        scheme = "rediss" if certs is not None else "redis"
        host = host or (TLS_HOST if certs is not None else LOOPBACK)
        tail = f"?{urlencode(options)}" if options else ""
        return f"{scheme}://{login}{host}:{self.port}/0{tail}"

    @property
    def url(self) -> str:
        """The admin's URL (the tests' own checks and :meth:`client`)."""
        return self.url_for(ADMIN)

    # -- ACL -----------------------------------------------------------------

    def admin_client(self) -> redis.Redis:
        """One client as the admin user, for checks (closed by :meth:`close`)."""
        if self._admin_client is None:
            self._admin_client = self.client(socket_timeout=5)
        return self._admin_client

    def reset(self) -> SecureRedisServer:
        """Empty the server, its script cache and its ACL LOG (between tests)."""
        admin = self.admin_client()
        admin.flushall()
        admin.script_flush()
        admin.acl_log_reset()
        return self

    def denials(self) -> list[tuple[str, str, str]]:
        """``ACL LOG`` as ``(username, reason, object)``, oldest first: what
        the server refused, e.g. ``("logreader", "command", "xadd")``."""
        rows: list[Mapping[str, Any]] = self.admin_client().acl_log()
        return [
            (_text(row["username"]), _text(row["reason"]), _text(row["object"]))
            for row in reversed(rows)
        ]

    def set_user(self, name: str, rules: str, password: str) -> None:
        """Create or replace user ``name`` now (``ACL SETUSER name reset ...``)."""
        self.admin_client().execute_command(
            "ACL", "SETUSER", name, "reset", "on", f">{password}", *rules.split()
        )
        self.users[name] = User(name, rules, password)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
