"""Every endpoint of kvrun serve through the openai SDK (and plain HTTP where the SDK has no call)."""
import concurrent.futures as cf
import json
import time

import openai
import pytest
import requests

from conftest import API_KEY, FIX, Server, gemma_gguf, metric, run

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPTS = ["The history of the city", "Once upon a time there was a small dog who", "In the morning the",
           "Scientists have found that the weather in the north of the country is", "She said",
           "The king and the queen", "Water is", "A long time ago"]


def chat(client, text, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 24)
    return client.chat.completions.create(model="chat", messages=[{"role": "user", "content": text}], **kw)


def test_models(client, packages):
    ids = {m.id for m in client.models.list().data}
    assert {"chat", "mt"} <= ids
    if "asr" in packages:
        assert "asr" in ids
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_non_stream(client):
    r = chat(client, "Tell me about the city")
    assert r.object == "chat.completion" and r.model == "chat"
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content
    assert c.finish_reason == "length"
    assert r.usage.completion_tokens == 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + 24
    # max_completion_tokens (newer clients) wins like max_tokens
    r2 = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Tell me about the city"}],
                                        temperature=0, max_completion_tokens=5)
    assert r2.usage.completion_tokens == 5
    assert c.message.content.startswith(r2.choices[0].message.content)


def test_chat_stream_equals_non_stream(client):
    whole = chat(client, PROMPTS[1]).choices[0].message.content
    stream = chat(client, PROMPTS[1], stream=True, stream_options={"include_usage": True})
    parts, finish, usage, ids, roles = [], None, None, set(), []
    for ev in stream:
        ids.add(ev.id)
        if ev.usage:
            usage = ev.usage
            assert ev.choices == []
            continue
        d = ev.choices[0].delta
        if d.role:
            roles.append(d.role)
        if d.content:
            parts.append(d.content)
        if ev.choices[0].finish_reason:
            finish = ev.choices[0].finish_reason
    assert "".join(parts) == whole
    assert finish == "length" and roles == ["assistant"] and len(ids) == 1
    assert usage.completion_tokens == 24


def test_concurrent_requests_match_sequential(client):
    alone = [chat(client, p, max_tokens=16 + i).choices[0].message.content for i, p in enumerate(PROMPTS)]
    with cf.ThreadPoolExecutor(len(PROMPTS)) as ex:
        together = list(ex.map(lambda ip: chat(client, ip[1], max_tokens=16 + ip[0]).choices[0].message.content,
                               enumerate(PROMPTS)))
    assert together == alone


def test_prefix_cache_reused(client):
    msgs = [{"role": "user", "content": "Tell me a story about the sea and the ships of the north"}]
    a = client.chat.completions.create(model="chat", messages=msgs, temperature=0, max_tokens=8)
    b = client.chat.completions.create(model="chat", messages=msgs, temperature=0, max_tokens=8)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert b.usage.prompt_tokens_details.cached_tokens > 0


def test_sampling_seed_n_and_stop(client):
    kw = dict(temperature=0.9, top_p=0.95, max_tokens=20, seed=42, n=3)
    a = chat(client, PROMPTS[0], **kw)
    b = chat(client, PROMPTS[0], **kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    extra = chat(client, PROMPTS[0], temperature=0.8, max_tokens=10, seed=1,
                 extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    assert extra.usage.completion_tokens == 10
    full = chat(client, PROMPTS[2]).choices[0].message.content
    assert len(full) > 6
    stop = full[3:6]
    cut = chat(client, PROMPTS[2], stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]
    pen = chat(client, PROMPTS[2], presence_penalty=1.5, frequency_penalty=1.0)
    assert pen.choices[0].message.content != full and 0 < pen.usage.completion_tokens <= 24


def test_chat_logprobs(client):
    r = chat(client, PROMPTS[3], logprobs=True, top_logprobs=3, max_tokens=6)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-5  # greedy: the chosen token is the top one
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token or e.bytes
    assert "".join(e.token for e in content) == r.choices[0].message.content


def test_completions(client):
    r = client.completions.create(model="chat", prompt="The history of", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens == 12
    s = "".join(ev.choices[0].text for ev in client.completions.create(
        model="chat", prompt="The history of", max_tokens=12, temperature=0, stream=True) if ev.choices)
    assert s == r.choices[0].text
    e = client.completions.create(model="chat", prompt="The history of", max_tokens=12, temperature=0, echo=True)
    assert e.choices[0].text == "The history of" + r.choices[0].text
    lp = client.completions.create(model="chat", prompt="The history of", max_tokens=4, temperature=0, logprobs=2)
    assert len(lp.choices[0].logprobs.tokens) == 4
    assert all(len(t) == 2 for t in lp.choices[0].logprobs.top_logprobs)
    many = client.completions.create(model="chat", prompt=["Water is", "The king"], max_tokens=5, temperature=0)
    assert len(many.choices) == 2 and many.usage.completion_tokens == 10
    ids = requests.post(client.base_url.__str__().replace("/v1/", "") + "/tokenize", headers=AUTH,
                        json={"content": "The history of"}).json()["tokens"]
    by_ids = client.completions.create(model="chat", prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == r.choices[0].text


def test_tokenize_detokenize(server):
    t = requests.post(server.url + "/tokenize", headers=AUTH, json={"content": "Hello world", "with_pieces": True})
    assert t.status_code == 200
    toks = t.json()["tokens"]
    assert "".join(p["piece"] for p in toks) == "Hello world"
    d = requests.post(server.url + "/detokenize", headers=AUTH, json={"tokens": [p["id"] for p in toks]})
    assert d.json()["content"] == "Hello world"
    bad = requests.post(server.url + "/detokenize", headers=AUTH, json={"tokens": [-1]})
    assert bad.status_code == 400 and "tokens" in bad.json()["error"]["message"]


def test_errors(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "chat" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:  # longer than the context: both numbers
        client.completions.create(model="chat", prompt=[5] * 300, max_tokens=4)
    assert "300 tokens" in str(e.value) and "256 positions" in str(e.value)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):  # a translation model on the chat route
        client.chat.completions.create(model="mt", messages=[{"role": "user", "content": "x"}])
    bad_key = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    r = requests.post(server.url + "/v1/chat/completions", headers={**AUTH, "Content-Type": "application/json"},
                      data="{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    big = requests.post(server.url + "/v1/chat/completions", headers=AUTH, data=b"x" * (2 << 20))
    assert big.status_code == 413 and "limit" in big.json()["error"]["message"]
    assert requests.get(server.url + "/nowhere", headers=AUTH).status_code == 404
    assert requests.get(server.url + "/health").status_code == 200  # no key needed
    assert requests.get(server.url + "/metrics").status_code == 401


def test_metrics(server, client):
    chat(client, PROMPTS[6], max_tokens=3)
    m = server.metrics()
    for name in ("kvrun_num_requests_running", "kvrun_num_requests_waiting", "kvrun_kv_cache_usage_ratio",
                 "kvrun_prompt_tokens_total", "kvrun_generation_tokens_total",
                 "kvrun_time_to_first_token_seconds_count", "kvrun_inter_token_latency_seconds_bucket",
                 "kvrun_e2e_request_latency_seconds_sum", "kvrun_request_queue_time_seconds_count"):
        assert name in m, name
    assert metric(m, "kvrun_generation_tokens_total", model_name="chat") >= 3
    assert metric(m, "kvrun_request_success_total", model_name="chat", finished_reason="length") >= 1
    assert metric(m, "kvrun_num_requests_running", model_name="chat") == 0


def test_disconnect_stops_generation():
    # A model slow enough that 400 tokens take seconds (the test fixtures generate thousands of
    # tokens a second): the real Gemma 3 270M.
    gguf = gemma_gguf()
    if not gguf.exists():
        pytest.skip(f"{gguf} not fetched (scripts/fetch-gemma3.sh)")
    s = Server({"g": gguf}, "--parallel", 2, "--ctx", 512, "--threads", 1)
    try:
        with requests.post(s.url + "/v1/completions", stream=True, timeout=120,
                           json={"model": "g", "prompt": "The", "max_tokens": 400, "ignore_eos": True,
                                 "stream": True}) as r:
            got = 0
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    got += 1
                if got >= 4:
                    break
        deadline = time.time() + 30
        while time.time() < deadline:
            if metric(s.metrics(), "kvrun_request_success_total", model_name="g", finished_reason="cancelled"):
                break
            time.sleep(0.05)
        m = s.metrics()
        assert metric(m, "kvrun_request_success_total", model_name="g", finished_reason="cancelled") == 1
        assert metric(m, "kvrun_num_requests_running", model_name="g") == 0
        assert metric(m, "kvrun_generation_tokens_total", model_name="g") < 400  # stopped early
    finally:
        assert s.stop() == 0


def test_queue_full_is_429(packages):
    s = Server({"chat": packages["chat"]}, "--parallel", 1, "--max-queue", 1, "--ctx", 128, "--threads", 1)
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="any", max_retries=0, timeout=120)
        # One slot and one queue place: a request for 3 choices cannot all be taken (deterministic).
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=64, n=3)
        assert e.value.response.headers.get("Retry-After") == "1" and e.value.body["code"] == "queue_full"

        def long_one(_):
            try:
                c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=96,
                                          temperature=0, extra_body={"ignore_eos": True})
                return "ok"
            except openai.RateLimitError as e:
                assert e.response.headers.get("Retry-After") == "1"
                return "429"

        # Four at once: those beyond the slot and the queue place are refused (how many depends on
        # timing); the others complete.
        with cf.ThreadPoolExecutor(4) as ex:
            outcomes = list(ex.map(long_one, range(4)))
        assert set(outcomes) <= {"ok", "429"} and "ok" in outcomes, outcomes
        assert metric(s.metrics(), "kvrun_request_rejected_total", model_name="chat", reason="queue_full") >= 1
        assert c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                         max_tokens=2).usage.completion_tokens == 2
    finally:
        assert s.stop() == 0


def test_translations(server):
    golden = json.loads((FIX / "marian-tiny" / "golden.json").read_text())
    sentences = [s for s in golden["sentences"] if s.get("beam_text") and s["text"]][:4]
    assert sentences
    r = requests.post(server.url + "/v1/translations", headers=AUTH,
                      json={"model": "mt", "input": [s["text"] for s in sentences], "beams": 4})
    assert r.status_code == 200, r.text
    got = [d["translation"] for d in r.json()["data"]]
    assert got == [s["beam_text"] for s in sentences]  # Hugging Face generate(num_beams=4)'s text
    nb = requests.post(server.url + "/v1/translations", headers=AUTH,
                       json={"model": "mt", "input": sentences[0]["text"], "beams": 4, "n_best": 2}).json()
    assert len(nb["data"][0]["hypotheses"]) == 2
    bad = requests.post(server.url + "/v1/translations", headers=AUTH, json={"model": "mt", "input": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_transcriptions(server, client, packages):
    if "asr" not in packages:
        pytest.skip("no Qwen3 tokenizer in .deps/tokenizers (scripts/install-deps.sh fetches it)")
    wav = FIX / "funasr-nano-tiny" / "hello_16k.wav"
    cli = json.loads(run("transcribe", packages["asr"], wav, "--json").strip().splitlines()[-1])
    with open(wav, "rb") as f:
        r = client.audio.transcriptions.create(model="asr", file=f)
    assert r.text == cli["text"]
    with open(wav, "rb") as f:
        text = client.audio.transcriptions.create(model="asr", file=f, response_format="text")
    assert text.strip() == cli["text"]
    for fmt, head in (("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT\n\n00:00:00.000 --> ")):
        with open(wav, "rb") as f:
            sub = client.audio.transcriptions.create(model="asr", file=f, response_format=fmt)
        assert sub.startswith(head), sub
    with open(wav, "rb") as f:
        v = client.audio.transcriptions.create(model="asr", file=f, response_format="verbose_json")
    assert v.text == cli["text"] and v.duration > 2.5 and len(v.segments) >= 1
    zh = json.loads(run("transcribe", packages["asr"], wav, "--json", "--language", "zh").strip().splitlines()[-1])
    with open(wav, "rb") as f:
        assert client.audio.transcriptions.create(model="asr", file=f, language="zh").text == zh["text"]
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="asr", file=("x.wav", b"not audio at all"))
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="asr", file=("x.wav", b"RIFF"), response_format="docx")
    m = server.metrics()
    assert metric(m, "kvrun_audio_seconds_total", model_name="asr") > 2.5
    assert metric(m, "kvrun_audio_real_time_factor_count", model_name="asr") >= 1


def test_gguf_files_served_under_their_names(packages):
    # A GGUF file is built into the package cache on first use; unnamed it is served under its stem.
    gguf = FIX / "gguf-models" / "qwen3-trained-q8_0.gguf"
    s = Server({}, gguf, f"named={gguf}", "--parallel", 2, "--ctx", 64, "--threads", 1)
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="any", max_retries=0, timeout=120)
        assert {m.id for m in c.models.list().data} == {"qwen3-trained-q8_0", "named"}
        a = c.completions.create(model="named", prompt="The history of", max_tokens=6, temperature=0)
        b = c.completions.create(model="qwen3-trained-q8_0", prompt="The history of", max_tokens=6, temperature=0)
        assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens == 6
    finally:
        assert s.stop() == 0
