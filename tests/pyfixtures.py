"""Fixture set-up shared by the Python test suites (tests/server with the openai SDK, and the
Python package's python/tests): where the committed fixtures and fetched models are."""
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"


def funasr_checkpoint(dst: Path):
    """tests/fixtures/funasr-nano-tiny copied to `dst` with the real Qwen3 tokenizer put into its
    Qwen3-0.6B/ (not committed: scripts/install-deps.sh fetches it into .deps/tokenizers), as
    tests/funasr_nano_test.cpp does; None when the tokenizer is not there."""
    tok = ROOT / ".deps" / "tokenizers" / "qwen3"
    if not (tok / "tokenizer.json").exists():
        return None
    shutil.copytree(FIX / "funasr-nano-tiny", dst)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok / f, dst / "Qwen3-0.6B" / f)
    return dst


def gemma_gguf() -> Path:
    """The real Gemma 3 270M GGUF (scripts/fetch-gemma3.sh), as tests/test_util.cpp finds it."""
    if os.environ.get("KVRUN_GEMMA3_GGUF"):
        return Path(os.environ["KVRUN_GEMMA3_GGUF"])
    models = os.environ.get("KVRUN_MODELS_DIR") or os.path.join(os.environ.get("HOME", ""), ".cache", "kvrun", "models")
    return Path(models) / "gemma-3-270m-q4_k_m.gguf"
