"""Run the real ``tritonserver`` from the ``nvidia-pytriton`` wheel on a model repository.

For laptops, tests and the streaming demo (``imagescore serve-triton``): it serves
what ``imagescore export-triton --backend python`` wrote, on CPU. It launches the
binary the way PyTriton itself does: a private copy of ``backends/`` with the stub
for this interpreter's version, the wheel's bundled libraries on
``LD_LIBRARY_PATH`` after this interpreter's ``LIBDIR`` (the stub loads libpython
dynamically and must find this one), and the venv's ``bin`` first on ``PATH`` (the
embedded interpreter finds its prefix, and so the venv's site-packages with torch,
from there). The server runs in its own session, so stopping it stops its stubs.

    imagescore serve-triton --repository REPO [--grpc-port N] [--http-port N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Sequence

from cli_common import ArgumentParser, UsageError, job_main

START_TIMEOUT_S = 120.0


def distribution() -> tuple[str, str, str] | None:
    """``(tritonserver binary, bundled libs dir, python stub)`` from the installed wheel, or ``None``."""
    try:
        from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path
    except ImportError:
        return None
    root = get_root_module_path() / "tritonserver"
    binary = root / "bin" / "tritonserver"
    stub = get_stub_path(f"{sys.version_info.major}.{sys.version_info.minor}")
    if not (binary.is_file() and (root / "backends" / "python").is_dir() and stub.is_file()):
        return None
    return str(binary), str(get_libs_path()), str(stub)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def server_env(libs_path: str) -> dict[str, str]:
    """The environment tritonserver and its Python-backend stub need (see the module docstring)."""
    env = os.environ.copy()
    libdirs = [sysconfig.get_config_var("LIBDIR"), libs_path]
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
    env["PATH"] = os.pathsep.join([os.path.join(sys.exec_prefix, "bin"), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")  # the test machines are small and shared
    return env


def _log_tail(path: str, limit: int = 6000) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-limit:]
    except OSError:
        return "(no log)"


def start_triton(repository: str, workdir: str, model_names: Sequence[str] = ("image_score",),
                 timeout_s: float = START_TIMEOUT_S, grpc_port: int = 0, http_port: int = 0,
                 host: str = "127.0.0.1") -> tuple[subprocess.Popen, str, str, str]:
    """Start tritonserver (on free 127.0.0.1 ports unless given) and wait until every model in
    ``model_names`` is ready.

    Returns ``(process, grpc_url, http_url, log_path)``. On failure the server
    is stopped and the error carries its log.
    """
    from tritonclient.grpc import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    found = distribution()
    if found is None:
        raise FileNotFoundError("tritonserver is not installed: it ships in the nvidia-pytriton wheel (Linux x86-64); "
                                "install it with pip install 'imagescore[triton]' (in a checkout: "
                                ".venv/bin/pip install -e '.[triton]' -c constraints.txt)")
    binary, libs_path, stub = found
    backends = os.path.join(workdir, "backends")
    shutil.copytree(os.path.join(os.path.dirname(os.path.dirname(binary)), "backends"), backends, dirs_exist_ok=True)
    shutil.copy(stub, os.path.join(backends, "python", "triton_python_backend_stub"))
    free = iter(_free_ports(2))
    grpc_port, http_port = grpc_port or next(free), http_port or next(free)
    log_path = os.path.join(workdir, "tritonserver.log")
    command = [
        binary,
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        # A per-server shared-memory prefix, so servers started side by side never share regions.
        f"--backend-config=python,shm-region-prefix-name=imagescore-{os.getpid()}-{uuid.uuid4().hex[:8]}",
        f"--grpc-address={host}", f"--grpc-port={grpc_port}",
        f"--http-address={host}", f"--http-port={http_port}",
        "--allow-metrics=false",
        "--exit-on-error=true",
        "--exit-timeout-secs=5",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env(libs_path),
                                   cwd=workdir, start_new_session=True)
    grpc_url = f"{host}:{grpc_port}"
    client = InferenceServerClient(grpc_url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {process.returncode} before {model_names} were "
                                   f"ready; log:\n{_log_tail(log_path)}")
            try:
                if all(client.is_model_ready(name, client_timeout=2.0) for name in model_names):
                    break
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"tritonserver did not make {model_names} ready in {timeout_s:g}s; "
                                   f"log:\n{_log_tail(log_path)}")
            time.sleep(0.5)
    except BaseException:
        stop_triton(process)
        raise
    finally:
        client.close()
    return process, grpc_url, f"{host}:{http_port}", log_path


def stop_triton(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM (Triton unloads models and stops its stubs), then SIGKILL the process group if it hangs."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the server and its backend stubs only
        process.wait(10)


def _model_names(repository: str) -> list[str]:
    names = sorted(name for name in os.listdir(repository)
                   if os.path.isfile(os.path.join(repository, name, "config.pbtxt")))
    if not names:
        raise FileNotFoundError(f"{repository} holds no model (no NAME/config.pbtxt); write one with "
                                "`imagescore export-triton --backend python --repository DIR`")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="imagescore serve-triton", description=(
        "Serve an export-triton repository with the tritonserver of the nvidia-pytriton wheel (CPU), "
        "print the triton:// address, stop on Ctrl-C."))
    parser.add_argument("--repository", required=True, help="the directory export-triton wrote")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0: a free one)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (0: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait for the models")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    import tempfile

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    repository = os.path.abspath(args.repository)
    if not os.path.isdir(repository):
        raise UsageError(f"--repository {args.repository} is not a directory; write one with "
                         "`imagescore export-triton --backend python`")
    try:
        names = _model_names(repository)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    workdir = tempfile.mkdtemp(prefix="imagescore-triton-")
    try:
        process, grpc_url, http_url, log_path = start_triton(
            repository, workdir, names, timeout_s=args.timeout, grpc_port=args.grpc_port,
            http_port=args.http_port, host=args.host)
    except FileNotFoundError as error:
        shutil.rmtree(workdir, ignore_errors=True)
        raise UsageError(str(error)) from None
    except (RuntimeError, TimeoutError) as error:
        print(f"imagescore serve-triton: FAILED: {error}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 1
    for name in names:
        print(f"serving triton://{grpc_url}/{name}   (--model for imagescore backfill/stream)", flush=True)
    print(f"HTTP on {http_url}; log {log_path}; Ctrl-C stops the server", flush=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while process.poll() is None:
            time.sleep(0.5)
        print(f"serve-triton: tritonserver exited with {process.returncode}; log:\n{_log_tail(log_path)}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("serve-triton: stopping", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_triton(process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    job_main("python -m scoring.triton_server", run)
