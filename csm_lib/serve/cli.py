"""``python -m csm_lib.serve`` (``make serve``): the command line, who may reach the server, and ``Server``,
the command in a subprocess (the tests, ``bench/serve.py`` and chapter 11 talk to it as any client would).

Safe by default: the server binds 127.0.0.1 and needs no key there. On any other address it refuses to
start without an API key (``CSM_API_KEY``, comma-separated for several clients, or ``--api-key``), and
a wildcard address (``0.0.0.0``) also needs the host names clients will call it by (``--allowed-hosts``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from csm_lib.generate import REFERENCE_CODEC, REFERENCE_MODEL
from csm_lib.outputs import REPO
from csm_lib.serve.guard import LOOPBACK_NAMES, Access
from csm_lib.serve.schema import Limits

KEY_ENV = "CSM_API_KEY"  # API keys, comma-separated (safer than --api-key: a command line is visible to `ps`)
MIN_KEY_CHARS = 16


def is_loopback(host: str) -> bool:
    """Is ``host`` an address only this machine can reach (127.0.0.0/8, ::1, localhost)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def access_for(host: str, keys: list[str], allowed_hosts: list[str] | None = None) -> Access:
    """Who may use a server bound to ``host``; a ValueError saying why it must not start that way."""
    if any(len(k) < MIN_KEY_CHARS for k in keys):
        raise ValueError(f"an API key needs at least {MIN_KEY_CHARS} characters (python -c 'import secrets; "
                         f"print(secrets.token_urlsafe(24))' makes one)")
    if not is_loopback(host) and not keys:
        raise ValueError(f"--host {host} can be reached from other machines, and no API key is set: set {KEY_ENV} "
                         f"(or --api-key), or serve on 127.0.0.1")
    if allowed_hosts is None:
        if is_wildcard(host):
            raise ValueError(f"--host {host!r} answers on every address: name the host names clients will use, "
                             f"--allowed-hosts=myserver.lan,192.168.1.20 ('*' accepts any)")
        allowed_hosts = list(LOOPBACK_NAMES) + ([] if is_loopback(host) else [host.lower()])
    return Access(keys, allowed_hosts)


def is_wildcard(host: str) -> bool:
    """Does binding ``host`` answer on every address of the machine (0.0.0.0, ::)?"""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def limits_table() -> list[dict]:
    """Every limit: its flag, default, what it bounds and the answer past it (the README and chapter 11)."""
    return [{"flag": f"--{f.name.replace('_', '-')}", "default": f.default, "bounds": f.metadata["bounds"],
             "answer": f.metadata["answer"]} for f in fields(Limits)]


def limits_markdown() -> str:
    """``limits_table`` as the README's Markdown table."""
    rows = [f"| `{r['flag']}` | {r['default']} | {r['bounds']} | {r['answer'] or '-'} |" for r in limits_table()]
    return "\n".join(["| flag | default | bounds | past it |", "|---|---|---|---|", *rows])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m csm_lib.serve",
                                description="Serve the CSM over HTTP (FastAPI + uvicorn). Each limit's help says "
                                            "what it bounds and the answer past it.")
    p.add_argument("--model", default=str(REFERENCE_MODEL))
    p.add_argument("--codec", default=str(REFERENCE_CODEC))
    p.add_argument("--host", default="127.0.0.1", help="the address to bind; any but loopback needs an API key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append", default=[],
                   help=f"a client's key (repeat for several); {KEY_ENV}=k1,k2 is safer (not shown by ps)")
    p.add_argument("--allowed-hosts", default=None,
                   help="host names clients may call the server by, comma-separated ('*': any); "
                        "default: localhost, 127.0.0.1, ::1 and --host")
    for row, f in zip(limits_table(), fields(Limits), strict=True):
        past = f"; past it: {row['answer']}" if row["answer"] else ""
        p.add_argument(row["flag"], type=type(f.default), default=f.default,
                       help=f"{row['bounds']}{past} (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from csm_lib.serve.app import create_app
    from csm_lib.serve.guard import http_protocol

    a = parse_args(argv)
    keys = a.api_key + [k.strip() for k in os.environ.get(KEY_ENV, "").split(",") if k.strip()]
    try:
        access = access_for(a.host, keys, a.allowed_hosts.split(",") if a.allowed_hosts else None)
    except ValueError as e:
        sys.exit(f"python -m csm_lib.serve: {e}")
    limits = Limits(**{f.name: getattr(a, f.name) for f in fields(Limits)})
    app = create_app(a.model, a.codec, limits, access)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=5,
                http=http_protocol(limits), timeout_keep_alive=limits.keep_alive_s,
                h11_max_incomplete_event_size=limits.max_header_bytes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m csm_lib.serve`` in a subprocess on a free port of 127.0.0.1 (tests, benchmarks, chapter 11).

    ``api_keys``: the server's keys (passed in ``CSM_API_KEY``); ``headers`` carry the first one.

    >>> with Server(workers=1, max_streams=2) as server:
    ...     httpx.post(server.url + "/generate", json={"text": "hello"})
    """

    def __init__(self, log: str | Path | None = None, api_keys: tuple[str, ...] = (), **limits):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"authorization": f"Bearer {api_keys[0]}"} if api_keys else {}
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in limits.items()]
        self.log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed in stop)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", KEY_ENV: ",".join(api_keys)}
        self.proc = subprocess.Popen([sys.executable, "-m", "csm_lib.serve", f"--port={self.port}", *flags],
                                     cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)  # no server left running when the notebook's kernel or the tests end

    def wait(self, timeout: float = 180) -> Server:
        """Wait for ``/health`` to answer 200 (the workers have loaded the model)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        raise TimeoutError(f"the server did not answer /health within {timeout} s")

    def health(self) -> dict:
        """``/health``: liveness, as anyone sees it."""
        import httpx

        return httpx.get(self.url + "/health", timeout=10).json()

    def status(self) -> dict:
        """``/status``: what the server runs and is doing (with the server's first key)."""
        import httpx

        return httpx.get(self.url + "/status", headers=self.headers, timeout=10).json()

    def wait_for(self, condition: Callable[[dict], bool], timeout: float = 10) -> dict:
        """Poll ``/status`` until ``condition(status)`` holds -> that status (TimeoutError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while not condition(status := self.status()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server's status did not come to the expected state in {timeout} s: {status}")
            time.sleep(0.1)
        return status

    def pids(self) -> list[int]:
        """The server's main process and its workers."""
        return [self.proc.pid, *(p for p in self.status()["pids"] if p)]

    def rss_mb(self) -> float:
        """Resident memory of the server and its workers together, MB (Linux /proc)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return total / 1024

    def cpu_seconds(self) -> dict:
        """CPU time (user + system, s) used so far by the server's main process and by its workers together."""
        tick = os.sysconf("SC_CLK_TCK")

        def cpu(pid: int) -> float:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

        main, *workers = self.pids()
        return {"main": cpu(main), "workers": sum(cpu(p) for p in workers)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def __enter__(self) -> Server:
        return self.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    main()
