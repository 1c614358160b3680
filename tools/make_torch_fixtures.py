#!/usr/bin/env python3
"""Writes the torch.save fixtures of tests/torch_io_test.cpp with real torch.

    /root/.cache/kvrun/venv-tools/bin/python tools/make_torch_fixtures.py            # writes tests/fixtures/torch/
    /root/.cache/kvrun/venv-tools/bin/python tools/make_torch_fixtures.py --verify F.pt EXPECTED.json
        # loads a checkpoint written by kvrun (io::write_torch_checkpoint) with torch.load
        # (weights_only=True, and mmap=True) and compares it with the values in EXPECTED.json

Not run by CI (CI has no torch); its outputs are committed. expected.json records, for
every fixture, the tensors torch.load returns (dtype, shape, values in row-major order).
"""
import argparse
import collections
import json
import os
import pathlib
import sys

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torch"
MARKER = "/tmp/kvrun-torch-fixture-pwned"  # the malicious pickle would create this

DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def describe(sd):
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        vals = v.detach().contiguous().reshape(-1)
        if v.dtype.is_floating_point:
            vals = [float(x) for x in vals.to(torch.float64)]
        else:
            vals = [int(x) for x in vals.to(torch.int64)]
        out[k] = {"dtype": DTYPES[v.dtype], "shape": list(v.shape), "values": vals}
    return out


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + MARKER,))


def make():
    OUT.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    expected = {}

    base = torch.randn(2, 3, generator=g)
    dtypes = collections.OrderedDict()
    dtypes["f32"] = base.clone()
    dtypes["f16"] = base.to(torch.float16)
    dtypes["bf16"] = base.to(torch.bfloat16)
    dtypes["f64"] = base.to(torch.float64)
    dtypes["i64"] = torch.tensor([[-(2**40), -1, 0], [1, 7, 2**40]], dtype=torch.int64)
    dtypes["i32"] = torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int32)
    dtypes["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    dtypes["i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    dtypes["u8"] = torch.tensor([0, 255, 7], dtype=torch.uint8)
    dtypes["bool"] = torch.tensor([True, False, True])
    dtypes["scalar"] = torch.tensor(2.5)
    dtypes["empty"] = torch.zeros(0, 4)
    torch.save(dtypes, OUT / "dtypes.pt")
    expected["dtypes.pt"] = describe(dtypes)

    # Views: a transpose (non-contiguous), a slice at a storage offset, two tensors over one
    # storage, a strided column, a Parameter (_rebuild_parameter), and a non-tensor entry.
    m = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    layouts = {
        "matrix": m,
        "transposed": m.t(),
        "row_slice": m[1:],
        "column": m[:, 2],
        "every_other": m[:, ::2],
        "param": torch.nn.Parameter(torch.tensor([1.0, -2.0])),
        "epoch": 3,
        "name": "layouts",
    }
    torch.save(layouts, OUT / "layouts.pt")
    expected["layouts.pt"] = describe(layouts)

    # A module's state_dict (OrderedDict with _metadata: BUILD) under "state_dict".
    lin = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    with torch.no_grad():
        for p in lin.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    nested = {"state_dict": lin.state_dict(), "epoch": 7, "config": {"lr": 1e-3, "layers": [1, 2]}}
    torch.save(nested, OUT / "nested.pt")
    expected["nested.pt"] = describe(lin.state_dict())

    # DataParallel names under "model", saved with pickle protocol 4 (FRAME, MEMOIZE,
    # SHORT_BINUNICODE, STACK_GLOBAL).
    dp = collections.OrderedDict([("module.w", torch.ones(2, 2, dtype=torch.float16)),
                                  ("module.b", torch.tensor([3], dtype=torch.int64))])
    torch.save({"model": dp}, OUT / "protocol4.pt", pickle_protocol=4)
    expected["protocol4.pt"] = describe(collections.OrderedDict((k[len("module."):], v) for k, v in dp.items()))

    # A pickle that calls os.system when unpickled by pickle.load: must be refused by name.
    torch.save({"w": torch.zeros(1), "payload": Evil()}, OUT / "evil.pt")
    # The legacy (non-zip) format: refused with a clear message.
    torch.save({"w": torch.zeros(1)}, OUT / "legacy.pt", _use_new_zipfile_serialization=False)

    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)")


def verify(path, expected_path):
    want = json.loads(pathlib.Path(expected_path).read_text())
    for mmap in (False, True):
        sd = torch.load(path, weights_only=True, mmap=mmap)
        if "state_dict" in sd:
            sd = sd["state_dict"]
        got = describe(sd)
        if got != want:
            for k in sorted(set(got) | set(want)):
                if got.get(k) != want.get(k):
                    print(f"{path}: tensor {k}: torch.load gives {got.get(k)}, expected {want.get(k)}")
            sys.exit(1)
    print(f"{path}: torch.load (weights_only, mmap and not) reads {len(want)} tensors as expected")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--verify", nargs=2, metavar=("CHECKPOINT", "EXPECTED_JSON"))
    a = ap.parse_args()
    if a.verify:
        verify(*a.verify)
    else:
        make()
