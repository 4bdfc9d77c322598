"""Servers of a fault test's own, to restart without disturbing the machine's.

:class:`PrivateRedis` keeps nothing on disk, like the machine's Redis, so its restart
loses every queued message. :class:`PrivateRabbitMQ` is a RabbitMQ node of its own
(own node name, ports and data directory); its restart keeps durable queues and
persistent messages, as a production RabbitMQ restart does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from tests.support.waiting import wait_until

#: Where Debian's package keeps the node script (/usr/sbin/rabbitmq-server wraps it to
#: run as the rabbitmq user, who cannot write the test's directory).
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateRedis:
    """A redis-server of this test's own, to restart without disturbing anyone else.

    Like the machine's Redis it keeps nothing on disk, so a restart loses every message
    queued in it: what celery-defer must survive is the harshest broker restart.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            wait_until(lambda: _pings(client), 10, f"redis-server on port {self.port}")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, down_for: float = 2.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class PrivateRabbitMQ:
    """A RabbitMQ node of this test's own, started with Debian's node script.

    ``available()`` tells whether this machine can run one (the script is where
    Debian puts it); otherwise the test skips.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.node = f"cdfault{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            # Its own cookie (in HOME), config, data and logs: nothing of the machine's node.
            "HOME": str(directory),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @staticmethod
    def available() -> bool:
        return (RABBITMQ_BIN / "rabbitmq-server").exists() and shutil.which("erl") is not None

    def start(self) -> None:
        subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"],
            env=self.env,
            check=True,
            timeout=60,
            capture_output=True,
        )
        try:
            wait_until(lambda: port_open(self.port), 60, f"RabbitMQ node {self.node}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def stop(self) -> None:
        if port_open(self.port):
            subprocess.run(
                [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, "stop"],
                env=self.env,
                timeout=60,
                capture_output=True,
            )
        wait_until(lambda: not port_open(self.port), 30, f"RabbitMQ node {self.node} to stop")

    def restart(self, down_for: float = 2.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        logs = sorted((self.directory / "log").glob("*.log"))
        if not logs:
            return "(no RabbitMQ log)"
        return "\n".join(logs[0].read_text(errors="replace").splitlines()[-lines:])
