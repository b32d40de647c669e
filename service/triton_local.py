"""A REAL Triton Inference Server on a CPU-only machine, for tests and benchmarks (docs/triton.md).

    python -m service.triton_local setup            # .venv-triton: nvidia-pytriton's tritonserver
    python -m service.triton_local serve --repo model_repository --http-port 8000

The server is the `tritonserver` binary (Triton 2.51) that PyPI's nvidia-pytriton bundles, in its
own venv (numpy < 2, which its Python-backend stub needs). Triton's C++ onnxruntime backend is
not on any registry, so `deploy/triton/onnxruntime/model.py` stands in for it as a Python-based
backend of the same name: the repository's config.pbtxt files load unchanged. Numbers measured
this way are "Triton 2.51, Python backend, CPU".
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("PULSEFM_TRITON_VENV", ROOT / ".venv-triton"))
REQUIREMENTS = ["nvidia-pytriton==0.7.0", "onnxruntime", "numpy<2"]
SHIM = ROOT / "deploy" / "triton" / "onnxruntime" / "model.py"


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def site_packages(venv: Path = VENV) -> Path:
    out = subprocess.run(
        [str(venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


STUB_PYTHON = "3.11"  # nvidia-pytriton 0.7.0 ships its Python-backend stub for this version only


def stub_interpreter() -> str:
    """A Python of the stub's version for the server venv, whatever Python runs the gateway
    (PULSEFM_TRITON_PYTHON, else this interpreter if it is 3.11, else python3.11 on PATH)."""
    chosen = os.environ.get("PULSEFM_TRITON_PYTHON")
    if chosen:
        return chosen
    if f"{sys.version_info.major}.{sys.version_info.minor}" == STUB_PYTHON:
        return sys.executable
    found = shutil.which(f"python{STUB_PYTHON}")
    if found is None:
        raise FileNotFoundError(
            f"the Triton test server needs Python {STUB_PYTHON} (its backend stub); set PULSEFM_TRITON_PYTHON"
        )
    return found


def setup(venv: Path = VENV) -> Path:
    """Create the server venv once (pip install --no-deps, as in docs/triton.md). Returns tritonserver."""
    server = venv / ".installed"
    if not server.exists():
        subprocess.run([stub_interpreter(), "-m", "venv", str(venv)], check=True)
        pip = [str(venv_python(venv)), "-m", "pip", "install", "-q", "--no-deps", *REQUIREMENTS]
        subprocess.run(pip, check=True)
        server.touch()
    binary = site_packages(venv) / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise FileNotFoundError(f"{binary}: tritonserver missing; delete {venv} and rerun setup")
    return binary


def backends(dest: Path, venv: Path = VENV) -> Path:
    """A backend directory: Triton's Python backend (copied, not linked) + the onnxruntime shim."""
    triton = site_packages(venv) / "pytriton" / "tritonserver"
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for src in (
        triton / "backends" / "python" / "libtriton_python.so",
        triton / "backends" / "python" / "triton_python_backend_utils.py",
        triton / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub",
    ):
        shutil.copy2(src, py / src.name)
    ort_dir = dest / "onnxruntime"
    ort_dir.mkdir(exist_ok=True)
    shutil.copy2(SHIM, ort_dir / "model.py")
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonServer:
    """Start/stop a tritonserver on loopback; `with TritonServer(repo) as t: t.http_url`."""

    def __init__(
        self,
        repo: Path,
        workdir: Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        explicit: bool = False,
        load: Sequence[str] = (),
        venv: Path = VENV,
    ) -> None:
        self.repo, self.workdir, self.venv = Path(repo), Path(workdir), venv
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = free_port()
        self.explicit, self.load = explicit, list(load)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "tritonserver.log"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        binary = setup(self.venv)
        cmd = [
            str(binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends(self.workdir / 'backends', self.venv)}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--exit-timeout-secs=5",
        ]
        if self.explicit:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in self.load]
        return cmd

    def env(self) -> dict[str, str]:
        libdir = subprocess.run(
            [
                str(venv_python(self.venv)),
                "-c",
                "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        env = dict(os.environ)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = f"{libdir}:{site_packages(self.venv) / 'nvidia_pytriton.libs'}"
        env.setdefault("PULSEFM_TRITON_THREADS", "1")
        return env

    def start(self, timeout: float = 60.0) -> TritonServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd, env = self.command(), self.env()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.proc.returncode}); log: {self.log}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"tritonserver not ready in {timeout:.0f} s; log: {self.log}")

    def ready(self) -> bool:
        try:
            url = f"http://{self.http_url}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; a non-zero exit at shutdown is tolerated (docs/triton.md)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.triton_local", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="create the server venv")
    s = sub.add_parser("serve", help="run a server in the foreground until Ctrl-C")
    s.add_argument("--repo", default=str(ROOT / "model_repository"))
    s.add_argument("--workdir", default=str(ROOT / ".cache" / "triton"))
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--explicit", action="store_true", help="--model-control-mode=explicit")
    args = p.parse_args(argv)
    if args.cmd == "setup":
        print(setup())
        return 0
    server = TritonServer(Path(args.repo), Path(args.workdir), args.http_port, args.grpc_port, args.explicit)
    server.start()
    print(f"Triton ready: http {server.http_url}, grpc {server.grpc_url}; log {server.log}")
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
