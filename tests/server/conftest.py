"""kvrun serve under the real openai SDK: fixtures that build small packages from the committed
test fixtures and start servers on free loopback ports (tests/server/README.md)."""
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: pyfixtures
from pyfixtures import FIX, ROOT, funasr_checkpoint, gemma_gguf  # noqa: E402,F401
KVRUN = os.environ.get("KVRUN", str(ROOT / "build" / "kvrun"))
API_KEY = "test-key-123"
SANITIZED = os.environ.get("KVRUN_SANITIZE", "0") == "1"


def run(*args, **kw):
    r = subprocess.run([KVRUN, *map(str, args)], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"kvrun {' '.join(map(str, args))} failed ({r.returncode}): {r.stdout}\n{r.stderr}")
    return r.stdout


@pytest.fixture(scope="session")
def packages(tmp_path_factory):
    """chat (the trained Qwen3 fixture), speech (FunASR-nano tiny + the real Qwen3 tokenizer),
    translation (Marian tiny), each built by `kvrun build`."""
    d = tmp_path_factory.mktemp("pkgs")
    out = {"chat": d / "chat", "mt": d / "mt"}
    run("build", FIX / "qwen3-trained", "-o", out["chat"])
    run("build", FIX / "marian-tiny", "-o", out["mt"])
    src = funasr_checkpoint(d / "asr-src")
    if src is not None:
        out["asr"] = d / "asr"
        run("build", src, "-o", out["asr"])
    return out


class Server:
    def __init__(self, models, *args):
        self.log = []
        cmd = [KVRUN, "serve", *[f"{k}={v}" for k, v in models.items()], "--port", "0", *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = None
        deadline = time.time() + 120
        for line in self.proc.stdout:
            self.log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise RuntimeError("kvrun serve did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("kvrun serve exited:\n" + "".join(self.log))
            time.sleep(0.05)
        raise RuntimeError("kvrun serve not ready in time:\n" + "".join(self.log))

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def alive(self):
        return self.proc.poll() is None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def metrics(self, headers=None):
        return requests.get(self.url + "/metrics", headers=headers or {"Authorization": f"Bearer {API_KEY}"}).text

    def stop(self):
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return code


@pytest.fixture(scope="session")
def server(packages):
    models = {"chat": packages["chat"], "mt": packages["mt"]}
    if "asr" in packages:
        models["asr"] = packages["asr"]
    s = Server(models, "--parallel", 4, "--ctx", 256, "--max-queue", 64, "--api-key", API_KEY, "--threads", 1,
               "--max-body-mb", 1, "--max-upload-mb", 2, "--prefill-chunk", 16)
    yield s
    assert s.alive(), "the server died:\n" + "".join(s.log[-30:])
    assert s.stop() == 0, "".join(s.log[-30:])


@pytest.fixture
def client(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def metric(text, name, **labels):
    """The value of one sample of the Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
