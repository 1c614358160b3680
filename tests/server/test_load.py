"""Load on loopback, bounded in count and time: 64 concurrent streaming clients with random
disconnects, oversized and invalid requests; then 1,000 requests with the server's memory watched.
CTest runs this file against the Release and the ASan + UBSan builds."""
import concurrent.futures as cf
import json
import random
import time

import requests

from conftest import SANITIZED, Server, metric

PROMPTS = ["The history of the city", "Once upon a time", "In the morning the", "She said", "Water is",
           "The king and the queen", "A long time ago", "Scientists have found that"]
MAX_TOKENS = 16


def body(prompt, stream=True, max_tokens=MAX_TOKENS):
    return {"model": "chat", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}


def expected_texts(url):
    return {p: requests.post(url + "/v1/chat/completions", json=body(p, False), timeout=60).json()
            ["choices"][0]["message"]["content"] for p in PROMPTS}


def stream_whole(url, prompt, disconnect_after=None):
    """Streams one completion; returns ('whole', text) after checking its shape, ('gone', None)
    when this client hung up on purpose, ('429', None) when the queue was full."""
    with requests.post(url + "/v1/chat/completions", json=body(prompt), stream=True, timeout=120) as r:
        if r.status_code == 429:
            assert r.headers.get("Retry-After")
            return "429", None
        assert r.status_code == 200, r.text
        text, finishes, done, events = [], [], False, 0
        for line in r.iter_lines():
            if not line or line.startswith(b":"):
                continue
            assert line.startswith(b"data: "), line
            data = line[6:]
            if data == b"[DONE]":
                done = True
                continue
            assert not done, "data after [DONE]"
            ev = json.loads(data)
            assert "error" not in ev, ev
            events += 1
            c = ev["choices"][0]
            text.append(c["delta"].get("content") or "")
            if c["finish_reason"]:
                finishes.append(c["finish_reason"])
            if disconnect_after is not None and events >= disconnect_after:
                return "gone", None
        assert done and finishes in (["length"], ["stop"]), (done, finishes)
        return "whole", "".join(text)


def test_64_concurrent_streams_with_disconnects_and_bad_requests(packages):
    s = Server({"chat": packages["chat"]}, "--parallel", 8, "--max-queue", 40, "--ctx", 128, "--threads", 1,
               "--max-body-mb", 0.05, "--prefill-chunk", 16)
    try:
        want = expected_texts(s.url)
        rng = random.Random(7)
        plan = []
        for i in range(192):
            kind = rng.choices(["stream", "disconnect", "oversized", "invalid", "plain"], [60, 20, 7, 7, 6])[0]
            plan.append((kind, PROMPTS[rng.randrange(len(PROMPTS))], rng.randrange(1, 6)))

        def one(item):
            kind, prompt, k = item
            if kind == "stream":
                status, text = stream_whole(s.url, prompt)
                if status == "whole":
                    assert text == want[prompt], (prompt, text, want[prompt])
                return status
            if kind == "disconnect":
                return stream_whole(s.url, prompt, disconnect_after=k)[0]
            if kind == "oversized":
                r = requests.post(s.url + "/v1/chat/completions", data=b"{" + b" " * 100_000, timeout=60)
                assert r.status_code == 413, r.status_code
                return "413"
            if kind == "invalid":
                r = requests.post(s.url + "/v1/chat/completions", json={"model": "chat", "messages": "hi"}, timeout=60)
                assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
                return "400"
            r = requests.post(s.url + "/v1/chat/completions", json=body(prompt, False), timeout=120)
            if r.status_code == 429:
                return "429"
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == want[prompt]
            return "whole"

        t0 = time.time()
        with cf.ThreadPoolExecutor(64) as ex:
            outcomes = list(ex.map(one, plan))
        assert time.time() - t0 < 600
        assert outcomes.count("whole") >= 50, outcomes
        assert s.alive()
        assert requests.get(s.url + "/health", timeout=10).status_code == 200
        deadline = time.time() + 30
        while time.time() < deadline:
            m = s.metrics()
            if metric(m, "kvrun_num_requests_running", model_name="chat") == 0 and \
                    metric(m, "kvrun_num_requests_waiting", model_name="chat") == 0:
                break
            time.sleep(0.1)
        m = s.metrics()
        assert metric(m, "kvrun_num_requests_running", model_name="chat") == 0
        assert metric(m, "kvrun_num_requests_waiting", model_name="chat") == 0
        # the server still answers exactly after the storm
        status, text = stream_whole(s.url, PROMPTS[0])
        assert status == "whole" and text == want[PROMPTS[0]]
    finally:
        assert s.stop() == 0, "".join(s.log[-20:])


def test_memory_stays_bounded_over_1000_requests(packages):
    s = Server({"chat": packages["chat"]}, "--parallel", 4, "--max-queue", 64, "--ctx", 128, "--threads", 1)
    try:
        sess = requests.Session()

        def one(i):
            r = sess.post(s.url + "/v1/chat/completions", timeout=120,
                          json=body(PROMPTS[i % len(PROMPTS)] + f" number {i}", stream=i % 2 == 0, max_tokens=4))
            assert r.status_code == 200, r.text
            return len(r.content)

        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(one, range(200)))
            after_200 = s.rss_kib()
            list(ex.map(one, range(200, 1000)))
        after_1000 = s.rss_kib()
        growth_mib = (after_1000 - after_200) / 1024
        print(f"server RSS after 200 requests {after_200 / 1024:.1f} MiB, after 1000 {after_1000 / 1024:.1f} MiB")
        if not SANITIZED:  # ASan's quarantine holds freed memory by design
            assert growth_mib < 16, f"RSS grew {growth_mib:.1f} MiB between request 200 and 1000"
        m = s.metrics()
        assert metric(m, "kvrun_request_success_total", model_name="chat", finished_reason="length") == 1000
    finally:
        assert s.stop() == 0
