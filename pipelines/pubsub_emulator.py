"""Google's Pub/Sub emulator on 127.0.0.1, for the streaming demo, tests, benchmarks and ``imagescore emulator``.

It runs ``gcloud beta emulators pubsub start --host-port=127.0.0.1:PORT``. The gcloud
wrapper starts a Java child and does not stop it when it is stopped itself, so the
emulator runs in its own process group and :meth:`PubSubEmulator.stop` ends the
whole group. Clients find it through ``PUBSUB_EMULATOR_HOST``, which
:meth:`PubSubEmulator.environ` sets (Beam's Pub/Sub I/O uses the same client library).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

PROJECT = "imagescore-local"
START_TIMEOUT_S = 60.0


TOPICS = {"item-updates": "item-updates", "dead-letters": "dead-letters"}  # topic -> its one subscription


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gcloud_path() -> str | None:
    return shutil.which("gcloud")


def subscriber_client():
    """A ``SubscriberClient`` that takes Pub/Sub's largest messages (10 MB) from the emulator too.

    For the emulator (``PUBSUB_EMULATOR_HOST``) the client library opens a plain gRPC
    channel with gRPC's default 4 MiB receive limit, so a pull that returns a bigger
    message fails with RESOURCE_EXHAUSTED; here the channel has no receive limit, as the
    library's channel to the real service has.
    """
    from google.cloud import pubsub_v1

    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        return pubsub_v1.SubscriberClient()
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(host, options=[("grpc.max_receive_message_length", -1),
                                                   ("grpc.max_send_message_length", -1)])
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def check_pubsub(resources: list[tuple[str, str, str]], timeout_s: float = 10.0) -> None:
    """Refuse, as one :class:`~cli_common.UsageError` naming the flag, a topic or subscription that does not
    exist and a Pub/Sub that does not answer: before a local job starts, whose reads would otherwise retry
    forever. ``resources`` are ``(flag, "topic" | "subscription", path)``."""
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    from cli_common import UsageError
    where = f"the emulator at {os.environ['PUBSUB_EMULATOR_HOST']}" if os.environ.get("PUBSUB_EMULATOR_HOST") \
        else "Google Cloud Pub/Sub"
    try:
        subscriber, publisher = subscriber_client(), pubsub_v1.PublisherClient()
    except Exception as exc:  # google.auth raises DefaultCredentialsError without credentials
        raise UsageError(f"cannot reach {where}: {str(exc).split(' To set up')[0]} Locally, start `imagescore "
                         "emulator` and export the PUBSUB_EMULATOR_HOST it prints; for Google Cloud, run "
                         "`gcloud auth application-default login`") from None
    try:
        for flag, kind, path in resources:
            try:
                if kind == "subscription":
                    subscriber.get_subscription(subscription=path, timeout=timeout_s)
                else:
                    publisher.get_topic(topic=path, timeout=timeout_s)
            except exceptions.NotFound:
                raise UsageError(f"{flag} {path!r} does not exist on {where}; create it first (`imagescore "
                                 "emulator` creates the local ones)") from None
            except exceptions.GoogleAPICallError as exc:
                raise UsageError(f"{flag} {path!r}: {where} refused or did not answer ({exc.message}); check "
                                 "PUBSUB_EMULATOR_HOST or your credentials") from None
    finally:
        subscriber.close()


@dataclasses.dataclass
class PubSubEmulator:
    """A running emulator: its ``host`` (``127.0.0.1:PORT``), project and process."""

    host: str
    project: str
    process: subprocess.Popen
    workdir: str

    @classmethod
    def start(cls, project: str = PROJECT, timeout_s: float = START_TIMEOUT_S,
              port: int | None = None) -> PubSubEmulator:
        """Start the emulator (on a free port unless ``port``) and wait until it answers; raises with its log
        otherwise."""
        gcloud = gcloud_path()
        if gcloud is None:
            raise FileNotFoundError("gcloud is not installed; the Pub/Sub emulator comes with the Google Cloud SDK "
                                    "(gcloud components install pubsub-emulator, and a Java runtime)")
        workdir = tempfile.mkdtemp(prefix="imagescore-pubsub-")
        port = port or _free_port()
        log = open(os.path.join(workdir, "emulator.log"), "wb")
        process = subprocess.Popen(
            [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
             f"--project={project}", f"--data-dir={workdir}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        emulator = cls(f"127.0.0.1:{port}", project, process, workdir)
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                tail = emulator.log_tail()
                emulator.stop()
                raise RuntimeError(f"the Pub/Sub emulator exited with {process.returncode}; log:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://{emulator.host}/", timeout=1) as response:
                    if response.read().strip() == b"Ok":
                        return emulator
            except OSError:
                pass
            if time.monotonic() > deadline:
                tail = emulator.log_tail()
                emulator.stop()
                raise TimeoutError(f"the Pub/Sub emulator did not answer within {timeout_s:g}s; log:\n{tail}")
            time.sleep(0.25)

    def log_tail(self, limit: int = 4000) -> str:
        try:
            with open(os.path.join(self.workdir, "emulator.log"), encoding="utf-8", errors="replace") as handle:
                return handle.read()[-limit:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the wrapper and its Java child: the whole process group."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                pass
        else:  # the wrapper exited; its Java child may still hold the group
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)

    def environ(self) -> None:
        """Point this process's Pub/Sub clients (and Beam's) at the emulator."""
        os.environ["PUBSUB_EMULATOR_HOST"] = self.host
        os.environ.setdefault("PUBSUB_PROJECT_ID", self.project)

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"

    def create(self, topic: str, *subscriptions: str) -> tuple[str, list[str]]:
        """Create a topic and subscriptions to it (subscriptions before any publish, or messages are lost)."""
        from google.cloud import pubsub_v1

        self.environ()
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        try:
            topic_path = self.topic(topic)
            publisher.create_topic(name=topic_path)
            paths = []
            for name in subscriptions:
                path = self.subscription(name)
                subscriber.create_subscription(name=path, topic=topic_path, ack_deadline_seconds=60)
                paths.append(path)
            return topic_path, paths
        finally:
            subscriber.close()
            publisher.transport.close() if hasattr(publisher, "transport") else None


def publish_lines(host: str, topic: str, path: str) -> int:
    """Publish every non-blank line of ``path`` as one message (its bytes as they are) to ``topic`` on the
    emulator at ``host``; returns the count. Waits for each publish, so a failure names its line."""
    from google.cloud import pubsub_v1

    os.environ["PUBSUB_EMULATOR_HOST"] = host
    publisher = pubsub_v1.PublisherClient()
    count = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            data = line.rstrip(b"\r\n")
            if data.strip():
                try:
                    publisher.publish(topic, data).result(timeout=30)
                except Exception as exc:  # the client raises NotFound, DeadlineExceeded, ...
                    raise RuntimeError(f"{path}:{number}: publishing to {topic} on {host} failed: {exc}") from None
                count += 1
    return count


def _parser():
    from cli_common import ArgumentParser

    parser = ArgumentParser(prog="imagescore emulator", description=(
        "Run the streaming job on your own messages: start Google's Pub/Sub emulator on 127.0.0.1 with the "
        "topics and subscriptions `imagescore stream` and `imagescore replay` use, print the commands, and "
        "stop on Ctrl-C. With --publish, send a JSONL file's lines (one message each) to an emulator that runs."))
    parser.add_argument("--port", type=int, default=8085, help="the emulator's port on 127.0.0.1")
    parser.add_argument("--publish", metavar="FILE",
                        help="publish each line of FILE to --topic on the running emulator at $PUBSUB_EMULATOR_HOST "
                             "(else 127.0.0.1:--port), then exit")
    parser.add_argument("--topic", default="item-updates", help="the topic --publish sends to")
    return parser


def run(argv: list[str] | None = None) -> int:
    from cli_common import UsageError

    args = _parser().parse_args(argv)
    if args.publish:
        if not os.path.isfile(args.publish):
            raise UsageError(f"--publish {args.publish!r} is not a file; give a JSONL file, one message per line")
        host = os.environ.get("PUBSUB_EMULATOR_HOST") or f"127.0.0.1:{args.port}"
        try:
            with urllib.request.urlopen(f"http://{host}/", timeout=2):
                pass
        except OSError:
            raise UsageError(f"no Pub/Sub emulator answers at {host}; start one with `imagescore emulator` in "
                             "another shell (and export the PUBSUB_EMULATOR_HOST it prints)") from None
        topic = f"projects/{os.environ.get('PUBSUB_PROJECT_ID') or PROJECT}/topics/{args.topic}"
        try:
            count = publish_lines(host, topic, args.publish)
        except RuntimeError as exc:
            raise UsageError(str(exc)) from None
        print(f"published {count} message(s) from {args.publish} to {topic}")
        return 0
    if gcloud_path() is None:
        raise UsageError("gcloud is not installed; the Pub/Sub emulator comes with the Google Cloud SDK "
                         "(gcloud components install pubsub-emulator, and a Java runtime)")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", args.port)) == 0:
            raise UsageError(f"port {args.port} on 127.0.0.1 is taken (an emulator already running?); "
                             "pass another --port")
    emulator = PubSubEmulator.start(port=args.port)
    try:
        for topic, subscription in TOPICS.items():
            emulator.create(topic, subscription)
        updates, dead = emulator.subscription("item-updates"), emulator.topic("dead-letters")
        print(f"""Pub/Sub emulator on {emulator.host} (project {emulator.project}); in another shell:

  export PUBSUB_EMULATOR_HOST={emulator.host} PUBSUB_PROJECT_ID={emulator.project}
  imagescore emulator --publish my-updates.jsonl          # one item update (JSON) per line
  imagescore stream --input-subscription {updates} \\
      --deadletter-topic {dead} --es-url http://localhost:9200 --es-index items
  imagescore replay --subscription {emulator.subscription("dead-letters")} --topic {emulator.topic("item-updates")}

Ctrl-C stops the emulator; its topics and messages go with it.""", flush=True)
        while emulator.process.poll() is None:
            time.sleep(0.5)
        print(f"imagescore emulator: the emulator exited with {emulator.process.returncode}; log:\n"
              f"{emulator.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imagescore emulator: stopped; its topics and messages are gone", flush=True)
        return 0
    finally:
        emulator.stop()


if __name__ == "__main__":
    from cli_common import job_main

    job_main("python -m pipelines.pubsub_emulator", run)
