# Type stubs for the extension module (the kvrun package wraps it: see kvrun/__init__.py).
from typing import Callable, Iterator, Optional, Sequence as Seq

import numpy as np

ProgressFn = Optional[Callable[[str, int, int], None]]
Segment = tuple  # ("text", str, bool) | ("ids", list[int]) | ("emb", np.ndarray)

class Error(RuntimeError): ...

class SamplingOptions:
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int
    def __init__(self) -> None: ...

class GenerationOptions:
    max_new_tokens: int
    sampling: SamplingOptions
    stop_at_eos: bool
    stop_ids: list[int]
    stop_strings: list[str]
    prefill_chunk: int
    max_length: int
    def __init__(self) -> None: ...
    def validate(self) -> None: ...

class GenerationStats:
    prompt_tokens: int
    reused_tokens: int
    generated_tokens: int
    prefill_seconds: float
    decode_seconds: float
    time_to_first_token: float
    prefill_tokens_per_second: float
    decode_tokens_per_second: float

class GenerationResult:
    tokens: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "callback" (a closed stream)
    stats: GenerationStats

class Chunk:
    token: int  # -1: the final piece of text
    text: str

class Stream(Iterator[Chunk]):
    def __iter__(self) -> "Stream": ...
    def __next__(self) -> Chunk: ...
    def close(self) -> None: ...
    @property
    def result(self) -> GenerationResult: ...

class ModelInfo:
    layout: str
    dir: str
    graphs: list[str]
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_length: int
    eos_ids: list[int]
    takes_embeddings: bool
    shared_kv_buffer: bool
    kv_dtype: str

class Model:
    @staticmethod
    def load(path: str, threads: int = 0, progress: ProgressFn = None) -> "Model": ...
    @property
    def info(self) -> ModelInfo: ...
    @property
    def has_tokenizer(self) -> bool: ...
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...
    def decode(self, ids: Seq[int], skip_special_tokens: bool = False) -> str: ...
    def render_chat(self, messages_json: str, add_generation_prompt: bool = True,
                    enable_thinking: Optional[bool] = None, tools_json: str = "") -> str: ...
    def prompt_ids(self, segments: list[Segment]) -> list[int]: ...
    def generate(self, segments: list[Segment], options: GenerationOptions) -> GenerationResult: ...
    def generate_batch(self, prompts: list[list[Segment]], options: GenerationOptions) -> list[GenerationResult]: ...
    def stream(self, segments: list[Segment], options: GenerationOptions) -> Stream: ...
    def new_sequence(self) -> "Sequence": ...

class Sequence:
    def generate(self, segments: list[Segment], options: GenerationOptions) -> GenerationResult: ...
    def stream(self, segments: list[Segment], options: GenerationOptions) -> Stream: ...
    @property
    def cached_tokens(self) -> int: ...
    def reset(self) -> None: ...

class SpeechModel:
    @staticmethod
    def load(path: str, threads: int = 0) -> "SpeechModel": ...
    def transcribe_files(self, files: list[str], language: str = "", hotwords: list[str] = ..., itn: bool = True,
                         max_new_tokens: int = 512) -> list[dict]: ...
    def transcribe_samples(self, samples_16k: np.ndarray, language: str = "") -> dict: ...

class Translator:
    @staticmethod
    def load(path: str, threads: int = 0) -> "Translator": ...
    def translate(self, sources: list[str], beams: int = 0, n_best: int = 1, max_length: int = 0,
                  batch_size: int = 16, temperature: float = 0.0, seed: int = 0) -> list[dict]: ...

def build(checkpoint: str, out: str, target: str = "ort", precision: str = "auto", kv_dtype: str = "auto",
          max_length: int = 0, overwrite: bool = False, block_size: int = 32, symmetric: bool = True,
          accuracy_level: int = 4, exclude: str = "", progress: ProgressFn = None) -> tuple[str, list[str]]: ...
def verify(package: str, checkpoint: str = "", greedy_tokens: int = 16, threads: int = 0,
           progress: ProgressFn = None) -> str: ...
def quantize(input: str, out: str, mode: str = "int4", block_size: int = 32, symmetric: bool = True,
             accuracy_level: int = 4, exclude: str = "", overwrite: bool = False, progress: ProgressFn = None) -> str: ...
def inspect(path: str, decoder: bool = True) -> str: ...
