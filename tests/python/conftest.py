"""Fixtures of the Python client's tests: a private busd per test (its own runtime directory
and socket in a temporary directory), the bus CLI and the C++ test programs, every process
stopped however the test ends.

ctest sets the programs' paths (tests/CMakeLists.txt): BUSD, BUS_CLI, CLI_TEST_PUBLISHER,
PYTHON_FD_PEER, BUS_PYTHON_TEST_PROTO (tests/python/proto), PROTOC.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest


def need(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set (ctest sets it; see tests/CMakeLists.txt)")
    return value


def wait_for(what, predicate, timeout=10.0):
    """Polls ``predicate`` until it is true; fails the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Processes:
    """Every process a test started, killed at its end."""

    def __init__(self):
        self.all = []

    def start(self, argv, **kwargs):
        p = subprocess.Popen(argv, **kwargs)
        self.all.append(p)
        return p

    def stop_all(self):
        for p in self.all:
            if p.poll() is None:
                p.kill()
            p.wait()
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()


class Busd:
    def __init__(self, processes, tmp_path):
        self.processes = processes
        self.dir = tmp_path / "run"
        self.dir.mkdir(mode=0o700)
        self.socket = str(self.dir / "busd.sock")
        self.endpoint = "unix://" + self.socket
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "BUS_ENDPOINT": self.endpoint,
                    "NO_COLOR": "1"}
        self.process = None
        self.start()

    def start(self):
        self.process = self.processes.start([need("BUSD"), "-e", self.endpoint], env=self.env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def accepts():
            assert self.process.poll() is None, "busd exited: " + self.process.stderr.read().decode()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.socket)
                    return True
                except OSError:
                    return False

        wait_for("busd to accept on " + self.socket, accepts)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        try:
            os.unlink(self.socket)  # a busd killed leaves its socket file behind
        except FileNotFoundError:
            pass

    def cli(self, *args, timeout=10, check=True):
        """`bus ARGS...` against this busd: its stdout."""
        r = subprocess.run([need("BUS_CLI"), *args], env=self.env, capture_output=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            pytest.fail(f"bus {' '.join(args)}: exit {r.returncode}: {r.stderr.decode()}")
        return r

    def cli_background(self, *args):
        return self.processes.start([need("BUS_CLI"), *args], env=self.env, bufsize=0,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)

    def program(self, name, *args):
        """A C++ test program (its path in env var ``name``), stdout piped."""
        return self.processes.start([need(name), *args], env=self.env, bufsize=0,
                                    stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


@pytest.fixture
def processes():
    p = Processes()
    yield p
    p.stop_all()


@pytest.fixture
def busd(processes, tmp_path, monkeypatch):
    b = Busd(processes, tmp_path)
    # The default endpoint, as the library finds it: BUS_ENDPOINT.
    monkeypatch.setenv("BUS_ENDPOINT", b.endpoint)
    return b


def run(coro, timeout=30):
    """Runs a test's coroutine with a bound: nothing a test does may hang."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def read_line(process, timeout=30.0):
    """The next line of a child's stdout, bounded in time."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(process.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            pytest.fail(f"no line from {process.args[0]} within {timeout} s")
        return process.stdout.readline().decode()
    finally:
        sel.close()


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def until(what, predicate, timeout=10.0):
    """Awaits ``predicate()`` (a coroutine function) until it is true, bounded in time."""
    end = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def subscribed(client, pattern):
    """True once some client's subscription to ``pattern`` is in busd's table."""
    return any(s.pattern == pattern for s in (await client.sys("subscriptions")).subscriptions)


async def served(client, service):
    return any(s.name == service and s.instances for s in (await client.sys("services")).services)
