"""deploy/ray/check.sh's client: the openai SDK against the Ray Serve app (two replicas)."""
import concurrent.futures as cf
import sys

import openai

import kvrun

url, pkg = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
msgs = [{"role": "user", "content": "Tell me about the sea"}]
want = kvrun.Model.load(pkg, threads=1).generate(messages=msgs, max_tokens=16, temperature=0).text

r = client.chat.completions.with_raw_response.create(model="chat", messages=msgs, max_tokens=16, temperature=0)
whole = r.parse()
assert whole.choices[0].message.content == want, (whole.choices[0].message.content, want)
streamed = "".join(ev.choices[0].delta.content or "" for ev in client.chat.completions.create(
    model="chat", messages=msgs, max_tokens=16, temperature=0, stream=True) if ev.choices)
assert streamed == want, (streamed, want)
assert client.models.list().data[0].object == "model"


def one(i):
    raw = client.completions.with_raw_response.create(model="chat", prompt=f"Water is {i}", max_tokens=24,
                                                      temperature=0)
    return raw.headers.get("x-kvrun-replica")


with cf.ThreadPoolExecutor(8) as ex:
    replicas = set(ex.map(one, range(16)))
assert len(replicas) == 2, replicas
print(f"ray serve: 2 replicas {sorted(replicas)} answered 16 concurrent completions; chat streamed and whole "
      f"equal kvrun's greedy output ({len(want)} chars)")
