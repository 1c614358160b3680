"""kvrun for Python: load and run kvrun packages, GGUF files and the exports the C++ runtime reads;
build, verify, quantize and inspect models; transcribe speech and translate text.

    import kvrun
    model = kvrun.Model.load("pkg", threads=2)
    print(model.generate("The capital of France is", max_tokens=8, temperature=0).text)
    for chunk in model.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=64):
        print(chunk.text, end="", flush=True)

docs/python.md has the whole API. Errors raise kvrun.Error with the C++ library's message.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import json
import os

__all__ = ["Error", "Model", "Sequence", "Stream", "Result", "SpeechModel", "Translator", "build", "verify",
           "quantize", "inspect", "__version__"]


def _load_onnxruntime() -> str:
    """Loads libonnxruntime.so.1 before the extension, which needs it: KVRUN_ORT_LIBRARY, the ONNX
    Runtime the module was built against, the onnxruntime wheel's library, or the system loader."""
    tried = []
    candidates = []
    env = os.environ.get("KVRUN_ORT_LIBRARY")
    if env:
        candidates.append(("KVRUN_ORT_LIBRARY", env))
    try:
        from . import _build_info
        candidates.append(("the build's ONNX Runtime", _build_info.ORT_LIBRARY))
    except ImportError:
        pass
    spec = importlib.util.find_spec("onnxruntime")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            for lib in sorted(glob.glob(os.path.join(loc, "capi", "libonnxruntime.so*"))):
                candidates.append(("the onnxruntime wheel", lib))
    candidates.append(("the system loader", "libonnxruntime.so.1"))
    for what, path in candidates:
        if os.sep in path and not os.path.exists(path):
            tried.append(f"{what}: {path} (absent)")
            continue
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return path
        except OSError as e:
            tried.append(f"{what}: {path} ({e})")
    raise ImportError("kvrun needs the ONNX Runtime library (libonnxruntime.so.1) and found none. Tried:\n  " +
                      "\n  ".join(tried) + "\nSet KVRUN_ORT_LIBRARY to the library's path, run "
                      "scripts/install-deps.sh in the kvrun checkout, or pip install onnxruntime.")


ORT_LIBRARY = _load_onnxruntime()

from . import _kvrun  # noqa: E402  (after ONNX Runtime is loaded)

Error = _kvrun.Error
Result = _kvrun.GenerationResult
Stream = _kvrun.Stream
try:
    from ._build_info import VERSION as __version__
except ImportError:  # pragma: no cover
    __version__ = "0.1.0"


def _options(max_tokens=256, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
             presence_penalty=0.0, frequency_penalty=0.0, seed=0, stop=None, stop_ids=None, ignore_eos=False,
             prefill_chunk=0, max_length=0):
    o = _kvrun.GenerationOptions()
    o.max_new_tokens = int(max_tokens)
    s = o.sampling
    s.temperature, s.top_k, s.top_p, s.min_p = float(temperature), int(top_k), float(top_p), float(min_p)
    s.repetition_penalty, s.presence_penalty = float(repetition_penalty), float(presence_penalty)
    s.frequency_penalty, s.seed = float(frequency_penalty), int(seed)
    o.sampling = s
    o.stop_strings = [stop] if isinstance(stop, str) else list(stop or [])
    o.stop_ids = list(stop_ids or [])
    o.stop_at_eos = not ignore_eos
    o.prefill_chunk, o.max_length = int(prefill_chunk), int(max_length)
    o.validate()
    return o


def _segment(part, add_special_tokens):
    if isinstance(part, str):
        return ("text", part, add_special_tokens)
    if hasattr(part, "__array__") and getattr(part, "ndim", 1) == 2:
        import numpy as np
        return ("emb", np.ascontiguousarray(part, dtype=np.float32))
    if isinstance(part, (list, tuple)) and all(isinstance(x, int) for x in part):
        return ("ids", [int(x) for x in part])
    raise TypeError("a prompt part must be a str, a list of token ids, or a float32 array [rows, hidden]; "
                    f"found {type(part).__name__}")


class Model:
    """A decoder model: a kvrun package, a GGUF file (built into the package cache on first use), or a
    folder the C++ runtime reads (optimum, ONNX Runtime GenAI, split exports)."""

    def __init__(self, impl):
        self._m = impl

    @staticmethod
    def load(path, threads: int = 0, progress=None) -> "Model":
        """threads: ONNX Runtime intra-op threads (0: one per core). progress(stage, done, total):
        a GGUF file's first-use build."""
        return Model(_kvrun.Model.load(os.fspath(path), threads, progress))

    @property
    def info(self):
        return self._m.info

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._m.encode(text, add_special_tokens)

    def detokenize(self, ids, skip_special_tokens: bool = False) -> str:
        return self._m.decode(list(ids), skip_special_tokens)

    def chat_prompt(self, messages, add_generation_prompt=True, enable_thinking=None, tools=None) -> str:
        """The model's chat template rendered over `messages` (a list of {"role", "content"})."""
        return self._m.render_chat(json.dumps(messages), add_generation_prompt, enable_thinking,
                                   json.dumps(tools) if tools is not None else "")

    def _segments(self, prompt, messages, add_special_tokens, enable_thinking=None, tools=None):
        if (prompt is None) == (messages is None):
            raise TypeError("give either a prompt or messages")
        if messages is not None:
            return [("text", self.chat_prompt(messages, True, enable_thinking, tools), False)]
        if isinstance(prompt, (str, tuple)) or hasattr(prompt, "__array__") or (
                isinstance(prompt, list) and all(isinstance(x, int) for x in prompt)):
            parts = [prompt] if not isinstance(prompt, tuple) else list(prompt)
        else:
            parts = list(prompt)
        if add_special_tokens is None:  # raw text to a base model: the tokenizer's BOS, as tokenizer(text)
            add_special_tokens = True
        return [_segment(p, add_special_tokens and i == 0) for i, p in enumerate(parts)]

    def prompt_ids(self, prompt=None, *, messages=None, add_special_tokens=None) -> list[int]:
        return self._m.prompt_ids(self._segments(prompt, messages, add_special_tokens))

    def generate(self, prompt=None, *, messages=None, add_special_tokens=None, enable_thinking=None, tools=None,
                 **options) -> Result:
        """prompt: text, token ids, a float32 array [rows, hidden] (embeddings), or a list mixing them;
        or messages for the chat template. options: max_tokens, temperature (0: greedy), top_k, top_p,
        min_p, repetition_penalty, presence_penalty, frequency_penalty, seed, stop (str or list),
        stop_ids, ignore_eos, prefill_chunk, max_length. Returns .text, .tokens, .finish_reason, .stats."""
        return self._m.generate(self._segments(prompt, messages, add_special_tokens, enable_thinking, tools),
                                _options(**options))

    def generate_batch(self, prompts, *, add_special_tokens=None, **options) -> list:
        """Several prompts generated as one batch (when the graphs allow it)."""
        return self._m.generate_batch([self._segments(p, None, add_special_tokens) for p in prompts],
                                      _options(**options))

    def stream(self, prompt=None, *, messages=None, add_special_tokens=None, enable_thinking=None, tools=None,
               **options) -> Stream:
        """Like generate, as an iterator of chunks (.token, .text); close() stops the generation;
        .result is the whole result once the iterator is exhausted."""
        return self._m.stream(self._segments(prompt, messages, add_special_tokens, enable_thinking, tools),
                              _options(**options))

    def sequence(self) -> "Sequence":
        """A conversation whose KV cache is kept between calls."""
        return Sequence(self, self._m.new_sequence())


class Sequence:
    """A kept KV cache: each call gives the whole context so far; the cached prefix is reused."""

    def __init__(self, model: Model, impl):
        self._model, self._s = model, impl

    def generate(self, prompt=None, *, messages=None, add_special_tokens=None, enable_thinking=None, **options):
        return self._s.generate(self._model._segments(prompt, messages, add_special_tokens, enable_thinking),
                                _options(**options))

    def stream(self, prompt=None, *, messages=None, add_special_tokens=None, enable_thinking=None, **options):
        return self._s.stream(self._model._segments(prompt, messages, add_special_tokens, enable_thinking),
                              _options(**options))

    @property
    def cached_tokens(self) -> int:
        return self._s.cached_tokens

    def reset(self):
        self._s.reset()


class SpeechModel:
    """A speech package (FunASR-nano) or a sherpa-onnx / split export."""

    def __init__(self, impl):
        self._m = impl

    @staticmethod
    def load(path, threads: int = 0) -> "SpeechModel":
        return SpeechModel(_kvrun.SpeechModel.load(os.fspath(path), threads))

    def transcribe(self, audio, language: str = "", hotwords=(), itn: bool = True, max_new_tokens: int = 512):
        """audio: a file path (WAV/FLAC/OGG/MP3), a list of paths, or float32 16 kHz mono samples.
        Returns {"text", "segments": [{"start", "end", "text", "tokens"}], "stats"} (a list for a list)."""
        if hasattr(audio, "__array__"):
            import numpy as np
            return self._m.transcribe_samples(np.ascontiguousarray(audio, dtype=np.float32), language)
        files = [os.fspath(a) for a in audio] if isinstance(audio, (list, tuple)) else [os.fspath(audio)]
        out = self._m.transcribe_files(files, language, list(hotwords), itn, max_new_tokens)
        return out if isinstance(audio, (list, tuple)) else out[0]


class Translator:
    """A translation package (Marian / OPUS-MT) or optimum's encoder-decoder export."""

    def __init__(self, impl):
        self._t = impl

    @staticmethod
    def load(path, threads: int = 0) -> "Translator":
        return Translator(_kvrun.Translator.load(os.fspath(path), threads))

    def translate(self, text, beams: int = 0, n_best: int = 1, max_length: int = 0, batch_size: int = 16,
                  temperature: float = 0.0, seed: int = 0):
        """text: a string or a list. Returns {"text", "hypotheses": [{"text", "tokens", "score"}],
        "source_tokens"} (a list for a list). beams / max_length 0: the package's generation_config."""
        many = not isinstance(text, str)
        out = self._t.translate(list(text) if many else [text], beams, n_best, max_length, batch_size, temperature,
                                seed)
        return out if many else out[0]


def build(checkpoint, out, *, target="ort", precision="auto", kv_dtype="auto", max_length=0, overwrite=False,
          block_size=32, symmetric=True, accuracy_level=4, exclude="", progress=None) -> dict:
    """Builds a package as `kvrun build` does; progress(stage, done, total)."""
    path, files = _kvrun.build(os.fspath(checkpoint), os.fspath(out), target, precision, kv_dtype, max_length,
                               overwrite, block_size, symmetric, accuracy_level, exclude, progress)
    return {"out": path, "files": files}


def verify(package, checkpoint="", greedy_tokens=16, threads=0, progress=None) -> dict:
    """`kvrun verify --json` as a dict (its "passed" says whether every check passed)."""
    return json.loads(_kvrun.verify(os.fspath(package), os.fspath(checkpoint), greedy_tokens, threads, progress))


def quantize(input, out, *, mode="int4", block_size=32, symmetric=True, accuracy_level=4, exclude="",
             overwrite=False, progress=None) -> dict:
    """`kvrun quantize --json` as a dict."""
    return json.loads(_kvrun.quantize(os.fspath(input), os.fspath(out), mode, block_size, symmetric, accuracy_level,
                                      exclude, overwrite, progress))


def inspect(path, decoder=True) -> dict:
    """`kvrun inspect --json` as a dict: I/O, KV layout, opsets, ops, parameters."""
    return json.loads(_kvrun.inspect(os.fspath(path), decoder))
