"""The kvrun Python package on the committed fixtures: every function, its results equal to the CLI's,
streaming cancellation, exceptions, threads. Run: python -m pytest python/tests (after pip install .)."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import kvrun

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # pyfixtures
from pyfixtures import FIX, ROOT, funasr_checkpoint  # noqa: E402
KVRUN = os.environ.get("KVRUN", str(ROOT / "build" / "kvrun"))
HAVE_CLI = os.access(KVRUN, os.X_OK)


def load_embedding(path):
    """The single tensor of embedding.safetensors as float32 (safetensors: u64 header size, JSON, data)."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name, meta = next((k, v) for k, v in header.items() if k != "__metadata__")
    a, b = meta["data_offsets"]
    data = raw[8 + n + a:8 + n + b]
    if meta["dtype"] == "F32":
        t = np.frombuffer(data, np.float32)
    elif meta["dtype"] == "F16":
        t = np.frombuffer(data, np.float16).astype(np.float32)
    elif meta["dtype"] == "BF16":
        t = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        raise AssertionError(f"{name}: dtype {meta['dtype']}")
    return t.reshape(meta["shape"])


def cli(*args):
    r = subprocess.run([KVRUN, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="session")
def pkgs(tmp_path_factory):
    d = tmp_path_factory.mktemp("py")
    stages = []
    out = {"chat": d / "chat", "mt": d / "mt"}
    kvrun.build(FIX / "qwen3-trained", out["chat"], progress=lambda s, done, total: stages.append((s, done, total)))
    out["stages"] = stages
    kvrun.build(FIX / "marian-tiny", out["mt"])
    src = funasr_checkpoint(d / "asr-src")
    if src is not None:
        out["asr"] = d / "asr"
        kvrun.build(src, out["asr"])
    return out


@pytest.fixture(scope="session")
def model(pkgs):
    return kvrun.Model.load(pkgs["chat"], threads=1)


def test_build_reports_progress_and_files(pkgs):
    assert pkgs["stages"] and all(done <= total for _, done, total in pkgs["stages"])
    assert (pkgs["chat"] / "kvrun.json").exists()


def test_generate_equals_cli(model, pkgs):
    r = model.generate("The history of", max_tokens=12, temperature=0)
    assert r.finish_reason == "length" and len(r.tokens) == 12 and r.stats.generated_tokens == 12
    assert r.text == model.detokenize(r.tokens, skip_special_tokens=True)
    if HAVE_CLI:
        c = json.loads(cli("run", pkgs["chat"], "--prompt", "The history of", "--raw", "--max-new-tokens", 12,
                           "--json").splitlines()[0])
        assert r.tokens == c["tokens"] and r.text == c["text"]
    ids = model.tokenize("The history of")
    assert model.generate(ids, max_tokens=12).tokens == r.tokens
    assert model.prompt_ids("The history of") == ids


def test_gguf_file_and_third_party_layouts(tmp_path):
    # A GGUF file is built into the package cache on first use (progress reported), as `kvrun run` does.
    gguf = FIX / "gguf-models" / "qwen3-trained-q8_0.gguf"
    stages = []
    m = kvrun.Model.load(gguf, progress=lambda s, d, t: stages.append(s))
    r = m.generate("The history of", max_tokens=8)
    assert len(r.tokens) == 8
    if HAVE_CLI:
        c = json.loads(cli("run", gguf, "--prompt", "The history of", "--raw", "--max-new-tokens", 8,
                           "--json").splitlines()[0])
        assert r.tokens == c["tokens"]
    # third-party exports (tests/fixtures/layouts): the same greedy ids from each; a graph the
    # runtime cannot feed is refused with its signature
    got = {}
    for name in ("optimum-plain", "optimum-merged", "genai", "split"):
        got[name] = kvrun.Model.load(FIX / "layouts" / name).generate([5, 6, 7], max_tokens=4, ignore_eos=True).tokens
    assert len(set(map(tuple, got.values()))) == 1, got
    with pytest.raises(kvrun.Error):
        kvrun.Model.load(FIX / "layouts" / "broken-missing-present")


def test_messages_use_the_chat_template(model, pkgs):
    msgs = [{"role": "user", "content": "Tell me about the sea"}]
    prompt = model.chat_prompt(msgs)
    assert "Tell me about the sea" in prompt
    r = model.generate(messages=msgs, max_tokens=10)
    assert r.tokens == model.generate(prompt, add_special_tokens=False, max_tokens=10).tokens
    if HAVE_CLI:  # the CLI given the same token ids
        ids = ",".join(map(str, model.tokenize(prompt)))
        c = json.loads(cli("run", pkgs["chat"], "--prompt-ids", ids, "--max-new-tokens", 10, "--json").splitlines()[0])
        assert r.tokens == c["tokens"]


def test_sampling_options_and_stop(model):
    a = model.generate("Once upon a time", max_tokens=16, temperature=0.9, top_p=0.9, top_k=30, seed=5)
    b = model.generate("Once upon a time", max_tokens=16, temperature=0.9, top_p=0.9, top_k=30, seed=5)
    assert a.tokens == b.tokens
    full = model.generate("In the morning the", max_tokens=24).text
    stop = full[4:7]
    cut = model.generate("In the morning the", max_tokens=24, stop=stop)
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)]
    with pytest.raises(kvrun.Error, match="temperature"):
        model.generate("x", temperature=-1)


def test_stream_and_cancel(model):
    whole = model.generate("The king and the queen", max_tokens=20)
    s = model.stream("The king and the queen", max_tokens=20)
    text = "".join(c.text for c in s)
    assert text == whole.text and s.result.tokens == whole.tokens
    s = model.stream("The king and the queen", max_tokens=200, ignore_eos=True)
    got = [next(s) for _ in range(3)]
    s.close()  # stops the generation
    assert len(got) == 3 and s.result.finish_reason == "callback" and len(s.result.tokens) < 200
    with pytest.raises(StopIteration):
        next(s)


def test_sequence_keeps_the_cache(model):
    seq = model.sequence()
    msgs = [{"role": "user", "content": "Hello there"}]
    r1 = seq.generate(messages=msgs, max_tokens=6)
    assert seq.cached_tokens > 0
    msgs += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "And then?"}]
    r2 = seq.generate(messages=msgs, max_tokens=6)
    assert r2.stats.reused_tokens > 0
    seq.reset()
    assert seq.cached_tokens == 0


def test_embeddings_in_the_prompt(tmp_path_factory):
    # The fixture's graphs take inputs_embeds: its own embedding rows give the same tokens as the ids.
    pkg = tmp_path_factory.mktemp("emb") / "p"
    kvrun.build(FIX / "qwen3-tiny", pkg)
    m = kvrun.Model.load(pkg)
    assert m.info.takes_embeddings
    ids = [5, 17, 42, 7]
    table = load_embedding(pkg / "embedding.safetensors")
    rows = np.asarray(table[ids], dtype=np.float32)
    by_ids = m.generate(ids, max_tokens=6, ignore_eos=True)
    by_emb = m.generate([rows], max_tokens=6, ignore_eos=True)
    mixed = m.generate([ids[:2], rows[2:]], max_tokens=6, ignore_eos=True)
    assert by_emb.tokens == by_ids.tokens == mixed.tokens
    with pytest.raises(kvrun.Error, match="hidden size"):
        m.generate([np.zeros((2, 3), np.float32)], max_tokens=2)


def test_errors(model, tmp_path):
    with pytest.raises(kvrun.Error):
        kvrun.Model.load(tmp_path / "missing")
    with pytest.raises(kvrun.Error):
        kvrun.build(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(TypeError):
        model.generate(3.5)  # not a prompt
    with pytest.raises(kvrun.Error, match="vocabulary"):
        model.generate([10**7], max_tokens=2)
    assert issubclass(kvrun.Error, RuntimeError)


def test_verify_quantize_inspect(pkgs, tmp_path):
    v = kvrun.verify(pkgs["chat"])
    assert v["passed"] is True and v["checks"]
    q = kvrun.quantize(pkgs["chat"], tmp_path / "q8", mode="int8-dynamic")
    assert q["quantized_nodes"] > 0
    info = kvrun.inspect(pkgs["chat"])
    assert "decoder.onnx" in json.dumps(info)
    if HAVE_CLI:
        assert info == json.loads(cli("inspect", pkgs["chat"], "--json"))


def test_threads_use_several_models(pkgs):
    a = kvrun.Model.load(pkgs["chat"], threads=1)
    b = kvrun.Model.load(pkgs["chat"], threads=1)
    want = a.generate("Water is", max_tokens=16).tokens
    out = {}

    def run(name, m):
        out[name] = [m.generate("Water is", max_tokens=16).tokens for _ in range(3)]

    ts = [threading.Thread(target=run, args=(n, m)) for n, m in (("a", a), ("b", b), ("a2", a))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(v == [want] * 3 for v in out.values())


def test_translate_equals_hf(pkgs):
    golden = json.loads((FIX / "marian-tiny" / "golden.json").read_text())
    sentences = [s for s in golden["sentences"] if s["text"]][:4]
    t = kvrun.Translator.load(pkgs["mt"])
    out = t.translate([s["text"] for s in sentences], beams=4)
    assert [o["text"] for o in out] == [s["beam_text"] for s in sentences]
    assert t.translate(sentences[0]["text"], beams=4, n_best=2)["hypotheses"][1]["score"] <= \
        t.translate(sentences[0]["text"], beams=4, n_best=2)["hypotheses"][0]["score"]


def test_transcribe_equals_cli(pkgs):
    if "asr" not in pkgs:
        pytest.skip("no Qwen3 tokenizer in .deps/tokenizers (scripts/install-deps.sh fetches it)")
    wav = FIX / "funasr-nano-tiny" / "hello_16k.wav"
    s = kvrun.SpeechModel.load(pkgs["asr"])
    r = s.transcribe(wav)
    if HAVE_CLI:
        assert r["text"] == json.loads(cli("transcribe", pkgs["asr"], wav, "--json").splitlines()[-1])["text"]
    assert r["stats"]["audio_seconds"] > 2.5 and r["segments"]
    with pytest.raises(kvrun.Error):
        s.transcribe(FIX / "funasr-nano-tiny" / "config.yaml")
