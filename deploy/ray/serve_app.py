"""kvrun on Ray Serve: an OpenAI-compatible /v1/chat/completions and /v1/completions (streamed or
not) and /v1/models, each replica holding its own kvrun.Model (the Python package).

    KVRUN_MODEL=/models/pkg KVRUN_REPLICAS=2 serve run deploy.ray.serve_app:app
    python deploy/ray/serve_app.py --model pkg --replicas 2 --port 8000   # ray.init + serve.run, then waits

A replica answers one request at a time (kvrun.Model runs one generation at a time; Ray queues the
rest, max_ongoing_requests); scale with replicas (num_cpus each = its ONNX Runtime threads). For
continuous batching inside a replica, run `kvrun serve` containers instead (deploy/helm).
"""
import argparse
import json
import os
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

import kvrun

MODEL_PATH = os.environ.get("KVRUN_MODEL", "")
MODEL_NAME = os.environ.get("KVRUN_MODEL_NAME", "") or os.path.basename(os.path.normpath(MODEL_PATH or "model"))
THREADS = int(os.environ.get("KVRUN_THREADS", "1"))
REPLICAS = int(os.environ.get("KVRUN_REPLICAS", "2"))

api = FastAPI()


def _error(status, message, param=None, etype="invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": etype, "param": param, "code": status}},
                        status_code=status)


def _options(body):
    o = {"max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or 256,
         "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
         "top_k": body.get("top_k", 0), "min_p": body.get("min_p", 0.0),
         "presence_penalty": body.get("presence_penalty", 0.0),
         "frequency_penalty": body.get("frequency_penalty", 0.0), "seed": body.get("seed") or 0,
         "stop": body.get("stop"), "ignore_eos": body.get("ignore_eos", False)}
    return o


@serve.deployment(num_replicas=REPLICAS, ray_actor_options={"num_cpus": THREADS}, max_ongoing_requests=8)
@serve.ingress(api)
class KvrunDeployment:
    def __init__(self, model_path=MODEL_PATH, threads=THREADS):
        self.model = kvrun.Model.load(model_path, threads=threads)
        self.replica = uuid.uuid4().hex[:8]

    @api.get("/health")
    def health(self):
        return {"status": "ok", "replica": self.replica}

    @api.get("/v1/models")
    def models(self):
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "kvrun"}]}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return self._complete(await request.json(), chat=True)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return self._complete(await request.json(), chat=False)

    def _complete(self, body, chat):
        try:
            opts = _options(body)
            if chat:
                kw = {"messages": body["messages"]}
            else:
                kw = {"prompt": body["prompt"]}
        except (KeyError, TypeError) as e:
            return _error(400, f"missing or invalid field: {e}")
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        headers = {"x-kvrun-replica": self.replica}
        try:
            if not body.get("stream"):
                r = self.model.generate(**kw, **opts)
                n_prompt = r.stats.prompt_tokens + r.stats.reused_tokens
                choice = {"index": 0, "finish_reason": "length" if r.finish_reason == "length" else "stop",
                          "logprobs": None}
                if chat:
                    choice["message"] = {"role": "assistant", "content": r.text}
                else:
                    choice["text"] = r.text
                return JSONResponse({"id": cid, "object": "chat.completion" if chat else "text_completion",
                                     "created": created, "model": MODEL_NAME, "choices": [choice],
                                     "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(r.tokens),
                                               "total_tokens": n_prompt + len(r.tokens)}}, headers=headers)
            stream = self.model.stream(**kw, **opts)
        except kvrun.Error as e:
            return _error(400, str(e))
        obj = "chat.completion.chunk" if chat else "text_completion"

        def events():
            try:
                if chat:
                    yield "data: " + json.dumps({"id": cid, "object": obj, "created": created, "model": MODEL_NAME,
                                                 "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                                    "content": ""},
                                                              "finish_reason": None}]}) + "\n\n"
                for c in stream:
                    if not c.text:
                        continue
                    ch = {"index": 0, "finish_reason": None}
                    ch.update({"delta": {"content": c.text}} if chat else {"text": c.text})
                    yield "data: " + json.dumps({"id": cid, "object": obj, "created": created, "model": MODEL_NAME,
                                                 "choices": [ch]}) + "\n\n"
                r = stream.result
                last = {"index": 0, "finish_reason": "length" if r.finish_reason == "length" else "stop"}
                last.update({"delta": {}} if chat else {"text": ""})
                yield "data: " + json.dumps({"id": cid, "object": obj, "created": created, "model": MODEL_NAME,
                                             "choices": [last]}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:
                stream.close()  # the client went away (Serve cancels the generator): stop generating

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


app = KvrunDeployment.bind()


def main():
    p = argparse.ArgumentParser(description="kvrun on a local Ray instance")
    p.add_argument("--model", required=True)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--port", type=int, default=8000)
    a = p.parse_args()
    import ray
    ray.init(num_cpus=max(2, a.replicas * a.threads), include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    dep = KvrunDeployment.options(num_replicas=a.replicas, ray_actor_options={"num_cpus": a.threads})
    serve.run(dep.bind(a.model, a.threads), route_prefix="/")
    print(f"kvrun on Ray Serve: http://127.0.0.1:{a.port}/v1 ({a.replicas} replicas)", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
