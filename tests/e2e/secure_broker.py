"""A Mosquitto locked down like production, for the broker security tests (not a test module).

- a TLS listener on a free port of 127.0.0.1 where clients log in with a password, with a
  server certificate for ``127.0.0.1`` (subjectAltName ``IP:127.0.0.1``) signed by a
  throw-away test CA made with ``openssl``; a second, unrelated CA is made too, for clients
  that trust the wrong authority;
- a second TLS listener on its own free port, same server certificate, where clients log in
  with a client certificate instead: ``require_certificate true`` (no certificate signed by
  the test CA, no connection) and ``use_identity_as_username true`` (the certificate's CN is
  the user name the ACL sees; any user name or password the client sends is ignored there).
  Client certificates are made for ``CN=gw-a`` and ``CN=gw-b`` by the test CA, and one for
  ``CN=gw-a`` by the wrong CA;
- ``allow_anonymous false`` and a password file made with ``mosquitto_passwd -b`` for the
  logins ``gw-a``, ``gw-b`` and ``ingest``, each with a random password;
- the project's own ACL, ``deploy/mosquitto/acl``, copied next to the password file.

``per_listener_settings false``: ``allow_anonymous``, the password file and the ACL are global,
so they hold on both listeners (on the certificate listener the password file is not consulted:
the certificate is the login, see mosquitto.conf(5), ``use_identity_as_username``).

Everything lives in a folder from :func:`tempfile.mkdtemp` (not pytest's ``tmp_path``, which
is 0700 under root). Started as root, Mosquitto drops to the ``mosquitto`` account before it
reads the password file and the ACL, so, as ``deploy/mosquitto/entrypoint.sh`` does, the
folder and its files are handed to that account and kept private (0700 / 0600).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devstack import stop_child
from devstack.broker import find_mosquitto
from devstack.ports import free_port
from tests.conftest import REPO

HOST = "127.0.0.1"
USERS = ("gw-a", "gw-b", "ingest")
CERT_USERS = ("gw-a", "gw-b")  # client certificates from the test CA, CN = the gateway id
ACL_SOURCE = REPO / "deploy" / "mosquitto" / "acl"
_SBIN_DIRS = "/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin"
_PORT_ATTEMPTS = 3


class SecureBrokerError(RuntimeError):
    """The locked-down test broker could not be set up or started."""


@dataclass(frozen=True)
class ClientCert:
    """A client certificate (PEM) and its unencrypted private key (PEM, mode 0600)."""

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class SecureBroker:
    """Where the locked-down broker listens and what a client needs to reach it."""

    url: str  # mqtts://127.0.0.1:PORT, the password listener
    host: str
    port: int
    cert_url: str  # mqtts://127.0.0.1:CERT_PORT, the client-certificate listener
    cert_port: int
    ca_file: str  # the CA that signed the broker's certificate and the client certificates
    wrong_ca_file: str  # an unrelated CA: trusting only it must fail the handshake
    passwords: dict[str, str] = field(repr=False)  # login -> password
    client_certs: dict[str, ClientCert]  # gateway id (the CN) -> its certificate, by the CA
    wrong_ca_client_cert: ClientCert  # CN=gw-a, but signed by the wrong CA
    folder: Path
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _run(*args: str) -> None:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        # Never echo the arguments: mosquitto_passwd -b gets a password on its command line.
        raise SecureBrokerError(
            f"{Path(args[0]).name} {args[1] if len(args) > 1 else ''} failed with code "
            f"{result.returncode}: {result.stderr.strip()[-1000:]}"
        )


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _run(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-sha256",
        "-subj", f"/CN=CareWatch test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    return key, cert


def _make_server_cert(folder: Path, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.crt"
    ext = folder / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{HOST}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _run(
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={HOST}",
    )  # fmt: skip
    _run(
        "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", str(secrets.randbits(63)), "-days", "2", "-sha256",
        "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    return key, cert


def _make_client_cert(folder: Path, ca_key: Path, ca_cert: Path, cn: str, name: str) -> ClientCert:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _run(
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
    )  # fmt: skip
    _run(
        "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", str(secrets.randbits(63)), "-days", "2", "-sha256",
        "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    return ClientCert(cert_file=str(cert), key_file=str(key))


def _make_password_file(folder: Path, passwords: dict[str, str]) -> Path:
    tool = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path=_SBIN_DIRS)
    if tool is None:
        raise SecureBrokerError("mosquitto_passwd is not installed (apt install mosquitto)")
    passwd = folder / "passwd"
    passwd.touch(mode=0o600)
    for user, password in passwords.items():
        _run(tool, "-b", str(passwd), user, password)
    return passwd


def _broker_account() -> pwd.struct_passwd | None:
    """As root, the account Mosquitto drops to (it must own what it reads); else None."""
    if os.geteuid() != 0:
        return None
    for name in ("mosquitto", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _write_config(
    folder: Path, port: int, cert_port: int, account: pwd.struct_passwd | None
) -> Path:
    config = folder / "mosquitto.conf"
    tls = [
        f"cafile {folder / 'ca.crt'}",
        f"certfile {folder / 'server.crt'}",
        f"keyfile {folder / 'server.key'}",
    ]
    lines = [
        "# Generated by tests/e2e/secure_broker.py: the production rules over TLS.",
        "# Global (per_listener_settings false): no anonymous login, the ACL, on every listener.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {folder / 'passwd'}",
        f"acl_file {folder / 'acl'}",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        *([f"user {account.pw_name}"] if account is not None else []),
        "# Gateways and ingest with a password.",
        f"listener {port} {HOST}",
        "protocol mqtt",
        *tls,
        "require_certificate false",
        "# Gateways with a client certificate from the CA; its CN is the user name.",
        f"listener {cert_port} {HOST}",
        "protocol mqtt",
        *tls,
        "require_certificate true",
        "use_identity_as_username true",
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


def _tls_accepts(
    port: int, ca_file: Path, client: ClientCert | None = None, timeout: float = 1.0
) -> bool:
    """True once a TLS handshake with the broker succeeds (verifying its certificate)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    try:
        with (
            socket.create_connection((HOST, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=HOST),
        ):
            return True
    except OSError:  # ssl.SSLError is an OSError too
        return False


@contextmanager
def secure_broker(start_timeout: float = 15.0) -> Iterator[SecureBroker]:
    """Start the locked-down Mosquitto; stop it (SIGTERM, then SIGKILL) and delete its folder."""
    mosquitto = find_mosquitto()
    if mosquitto is None:
        raise SecureBrokerError("mosquitto is not installed (apt install mosquitto)")
    folder = Path(tempfile.mkdtemp(prefix="carewatch-secure-broker-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        ca_key, ca_cert = _make_ca(folder, "ca")
        _make_server_cert(folder, ca_key, ca_cert)
        wrong_ca_key, wrong_ca_cert = _make_ca(folder, "wrong-ca")
        client_certs = {
            cn: _make_client_cert(folder, ca_key, ca_cert, cn, f"client-{cn}") for cn in CERT_USERS
        }
        wrong_ca_client_cert = _make_client_cert(
            folder, wrong_ca_key, wrong_ca_cert, "gw-a", "client-gw-a-wrong-ca"
        )
        passwords = {user: secrets.token_urlsafe(18) for user in USERS}
        _make_password_file(folder, passwords)
        shutil.copyfile(ACL_SOURCE, folder / "acl")
        account = _broker_account()
        for path in folder.iterdir():
            path.chmod(0o644 if path.suffix == ".crt" else 0o600)
            if account is not None:
                os.chown(path, account.pw_uid, account.pw_gid)
        if account is not None:
            os.chown(folder, account.pw_uid, account.pw_gid)
        # The folder stays 0700; the CA certificates are read through it by root (the tests)
        # and by the broker's account (its owner). /tmp itself is world-searchable.
        log_file = folder / "mosquitto.log"
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port(HOST)
            cert_port = free_port(HOST)
            while cert_port == port:
                cert_port = free_port(HOST)
            config = _write_config(folder, port, cert_port, account)
            with log_file.open("ab") as log_fh:
                proc = subprocess.Popen(
                    [mosquitto, "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + start_timeout
            while proc.poll() is None and not (
                _tls_accepts(port, ca_cert)
                and _tls_accepts(cert_port, ca_cert, client_certs[CERT_USERS[0]])
            ):
                if time.monotonic() > deadline:
                    raise SecureBrokerError(
                        f"mosquitto did not accept TLS on {HOST}:{port} and {cert_port} within "
                        f"{start_timeout:.0f} s; log:\n{log_file.read_text(errors='replace')}"
                    )
                time.sleep(0.05)
            if proc.poll() is None:
                break
            output = log_file.read_text(errors="replace")
            proc = None
            if "address already in use" not in output.lower() or attempt == _PORT_ATTEMPTS:
                raise SecureBrokerError(f"mosquitto exited while starting; log:\n{output}")
        assert proc is not None
        yield SecureBroker(
            url=f"mqtts://{HOST}:{port}",
            host=HOST,
            port=port,
            cert_url=f"mqtts://{HOST}:{cert_port}",
            cert_port=cert_port,
            ca_file=str(ca_cert),
            wrong_ca_file=str(wrong_ca_cert),
            passwords=passwords,
            client_certs=client_certs,
            wrong_ca_client_cert=wrong_ca_client_cert,
            folder=folder,
            log_file=log_file,
        )
    finally:
        if proc is not None:
            stop_child(proc, [(signal.SIGTERM, 10.0)], "secure test mosquitto")
        shutil.rmtree(folder, ignore_errors=True)
